//! The `palette-gateway` binary: parse the command line, hand over to the library.

/// mimalloc: the request path makes many small, short-lived allocations (headers, bodies, log
/// records); glibc's malloc spent a fifth of the gateway's instructions on them.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    palette_gateway::cli::main()
}
