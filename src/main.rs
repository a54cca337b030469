//! The `palette-gateway` binary: parse the command line, hand over to the library.

fn main() -> std::process::ExitCode {
    palette_gateway::cli::main()
}
