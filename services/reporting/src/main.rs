fn main() -> std::process::ExitCode {
    platform::main_with(
        &reporting_service::SERVICE,
        reporting_service::startup::build,
        reporting_service::rebuild::command,
    )
}
