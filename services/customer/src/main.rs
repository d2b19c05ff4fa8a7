fn main() -> std::process::ExitCode {
    platform::main(&customer_service::SERVICE, customer_service::startup::build)
}
