//! What the binary was built from: the version and the git commit (set by `build.rs`).

/// The short git commit the binary was built from, or `unknown` (no git checkout, no git).
pub const COMMIT: &str = env!("PALETTE_GATEWAY_COMMIT");

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `--version`'s text: `0.1.0 (commit abc1234)`.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PALETTE_GATEWAY_COMMIT"), ")");
