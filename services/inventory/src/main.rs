fn main() -> std::process::ExitCode {
    platform::main(
        &inventory_service::SERVICE,
        inventory_service::startup::build,
    )
}
