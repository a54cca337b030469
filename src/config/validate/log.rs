//! `[log]`: format and level.

use crate::config::file::RawConfig;
use crate::config::problems::Problems;
use crate::config::LogConfig;

pub(super) fn log_config(raw: &RawConfig, p: &mut Problems) -> LogConfig {
    let json = match raw.log.format.as_deref() {
        None | Some("json") => true,
        Some("text") => false,
        Some(other) => {
            p.add("log.format", format!("{other:?} is not a log format: use \"json\" or \"text\""));
            true
        }
    };
    let level = raw.log.level.clone().unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        p.add("log.level", format!("{level:?} is not a log level or filter: {e}"));
    }
    LogConfig { json, level }
}
