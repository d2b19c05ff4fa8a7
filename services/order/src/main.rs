fn main() -> std::process::ExitCode {
    platform::main(&order_service::SERVICE, order_service::startup::build)
}
