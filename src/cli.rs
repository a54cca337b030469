//! The command line: run the gateway, `check` a config, make and hash local keys, `--demo`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use crate::app::Stopped;
use crate::config::{self, Environment, LogConfig, ProcessEnv};

/// Authenticating, credential-swapping reverse proxy for the Spectro Cloud Palette API.
///
/// Without a subcommand it runs the gateway. Its options apply only to running; each
/// subcommand lists its own (`palette-gateway help explain`).
#[derive(Debug, Parser)]
#[command(name = "palette-gateway", version = crate::build::LONG_VERSION, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Also read by `check` and `explain` when given before them, as the
    /// container image's entrypoint does.
    #[arg(long, env = "PALETTE_GATEWAY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Run fully offline: a fake Palette on loopback plus the demo config (ignores --config).
    #[arg(long)]
    pub demo: bool,
    /// Worker threads for request handling (default: one per CPU).
    #[arg(long, env = "PALETTE_GATEWAY_WORKER_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    /// What to do; none runs the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--config` of a subcommand that reads the config. No `env` here: the top-level `--config`
/// reads `PALETTE_GATEWAY_CONFIG`, so an explicit `--config` (before or after the subcommand)
/// wins over the environment.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file (TOML) [default: $PALETTE_GATEWAY_CONFIG].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// `explain`'s arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Act as this configured client (as if authenticated; covers certificate clients).
    #[arg(long, value_name = "NAME", conflicts_with = "key")]
    client: Option<String>,
    /// Authenticate with this local key, as `ApiKey: KEY` would; `-` reads it from stdin
    /// (keeps it out of the shell history and `ps`). Never printed.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// A request header, `Name: value` (repeatable): `ProjectUid`, `ApiKey`, ...
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request method (`GET`, `POST`, ...).
    method: String,
    /// The request path, with its query if any (`/v1/spectroclusters?limit=5`).
    path: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the config; print every problem by field and exit non-zero if any.
    /// Warnings (rules that can never match) are printed too, and do not fail the check.
    Check(ConfigArg),
    /// Show what the gateway would do with one request, step by step, without sending it:
    /// exit 0 when it would be forwarded, 1 when refused, 2 on a bad config or arguments.
    Explain(ExplainArgs),
    /// Print a fresh random local key and the `sha256:` hash to put in the config.
    NewKey,
    /// Read a local key on stdin and print its `sha256:` hash.
    HashKey,
    /// Print a shell completion script (`source <(palette-gateway completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// Shells `completions` writes for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::NewKey) => {
            let key = new_key();
            println!("key: {key}");
            println!("hash: {}", crate::auth::key_hash_string(&key));
            ExitCode::SUCCESS
        }
        Some(Command::HashKey) => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("error: cannot read the key from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let key = input.trim();
            if key.is_empty() {
                eprintln!("error: no key on stdin (try: palette-gateway new-key)");
                return ExitCode::FAILURE;
            }
            println!("{}", crate::auth::key_hash_string(key));
            ExitCode::SUCCESS
        }
        Some(Command::Check(arg)) => {
            let Some(path) = arg.config.or(cli.config) else {
                eprintln!("error: check needs --config PATH (or PALETTE_GATEWAY_CONFIG)");
                return ExitCode::from(2);
            };
            match config::load(&path, &ProcessEnv) {
                Ok(cfg) => {
                    for w in cfg.warnings() {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: ok", path.display());
                    if let Some(note) = crate::projects::check_note(&cfg) {
                        println!("{note}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for p in e.problems() {
                        eprintln!("{p}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Explain(args)) => explain(args, cli.config),
        Some(Command::Completions { shell }) => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "palette-gateway", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        None => run(cli),
    }
}

fn run(cli: Cli) -> ExitCode {
    // One worker: a current-thread runtime, which skips the work-stealing machinery (and its
    // atomics and wake-ups) that only pays off with several workers.
    let mut builder = match cli.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The log writer's guard lives here, outside the runtime: it is dropped (flushing every
    // queued line) only after the runtime has stopped, and before any final error is printed,
    // so the log and that error come out in order.
    let mut log_guard: Option<tracing_appender::non_blocking::WorkerGuard> = None;
    let guard_slot = &mut log_guard;
    let result: anyhow::Result<Stopped> = runtime.block_on(async move {
        if cli.demo {
            *guard_slot = init_tracing(&LogConfig { json: false, level: "info".into() });
            crate::demo::run().await?;
            return Ok(Stopped::Signal);
        }
        let Some(path) = cli.config else {
            anyhow::bail!("no config: pass --config PATH (or set PALETTE_GATEWAY_CONFIG), or try --demo");
        };
        let env: Arc<dyn Environment> = Arc::new(ProcessEnv);
        // Reading files (and building TLS configs) blocks: not on a runtime thread.
        let (p, e) = (path.clone(), env.clone());
        let config = tokio::task::spawn_blocking(move || config::load(&p, &*e))
            .await?
            .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))?;
        *guard_slot = init_tracing(&config.log);
        Ok(crate::app::run(path, config, env).await?)
    });
    // Stop the runtime first (no task can log after this), then flush the log.
    let background = matches!(result, Ok(Stopped::SecondSignal | Stopped::Fatal(_)));
    if background {
        // Exit now: neither a drain nor a blocking read (a reload) still running may hold
        // the process.
        runtime.shutdown_background();
    } else {
        drop(runtime);
    }
    drop(log_guard);
    match result {
        Ok(Stopped::Signal) => ExitCode::SUCCESS,
        Ok(Stopped::SecondSignal) => ExitCode::FAILURE,
        Ok(Stopped::Fatal(reason)) => {
            eprintln!("error: {reason}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a message that already includes its cause's text
/// (thiserror's `{source}` in the message, as in "cannot listen on ...: Address already in use")
/// does not get it repeated, as `{:#}` would.
fn render_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `explain`: exit 0 forwarded, 1 refused, 2 a bad config or bad arguments (said on stderr).
fn explain(args: ExplainArgs, run_config: Option<PathBuf>) -> ExitCode {
    let Some(path) = args.config.config.or(run_config) else {
        eprintln!("error: explain needs --config PATH (or PALETTE_GATEWAY_CONFIG)");
        return ExitCode::from(2);
    };
    let key = match args.key.as_deref() {
        Some("-") => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("error: cannot read the key from stdin: {e}");
                return ExitCode::from(2);
            }
            Some(input.trim().to_string())
        }
        other => other.map(str::to_string),
    };
    let cfg = match config::load(&path, &ProcessEnv) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: the config {} does not load (bad config, exit 2):", path.display());
            for p in e.problems() {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    let request = crate::explain::Request {
        client: args.client,
        key,
        headers: args.headers,
        method: args.method,
        target: args.path,
    };
    match crate::explain::explain(&cfg, &request) {
        Ok((report, outcome)) => {
            print!("{report}");
            match outcome {
                crate::explain::Outcome::Forwarded => ExitCode::SUCCESS,
                crate::explain::Outcome::Refused => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("error: {e} (bad arguments, exit 2)");
            ExitCode::from(2)
        }
    }
}

/// A fresh local key: 32 random bytes, URL-safe base64, with a `pgw_` prefix so secret
/// scanners and people can tell what it is.
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("pgw_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Lines the log queue holds before a logging thread waits for the writer. The queue's slots
/// are allocated (and touched) up front, so it is kept small: a burst beyond it costs a wait,
/// never a line.
const LOG_QUEUE_LINES: usize = 4096;

/// Bytes the log writer gathers before a write(2), when lines come faster than one at a time.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Logs to stderr as JSON lines or text; `RUST_LOG` overrides the configured level.
///
/// The serving threads do not write: each line goes into a bounded queue that one thread
/// (`tracing-appender`'s worker) drains into a buffer around stderr. `lossy(false)`: when the
/// queue is full the logging thread waits, so no access or audit line is ever dropped. The
/// worker flushes the buffer each time the queue is empty, so a line reaches stderr as soon as
/// the worker has run, idle gateway or not; under load, many lines share one write(2). The
/// returned guard flushes what is left when dropped (`None`: a subscriber was already set).
fn init_tracing(log: &LogConfig) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let filter = quiet_watcher(filter);
    // Colour codes only for a person at a terminal: a file, a pipe or a log collector gets
    // plain text (the log goes to stderr, so that is the stream asked).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let set = if log.json {
        builder.json().event_format(crate::json_log::JsonLines::default()).try_init()
    } else {
        builder.try_init()
    };
    set.is_ok().then_some(guard)
}

/// The file watcher (`notify`) logs every file-system event in the watched directories at
/// trace level. When the log itself is written in one of them (stderr redirected next to the
/// config), each line is an event, whose trace line is another event: an idle gateway would
/// write its log as fast as the disk allows. Those lines are capped at debug, whatever the
/// filter says (replacing, not adding to, a `notify=...` directive the operator gave).
fn quiet_watcher(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    ["notify=debug", "notify::inotify=debug", "notify::kqueue=debug", "notify::fsevent=debug"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, |f, d| f.add_directive(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_long_random_and_url_safe() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        assert!(a.len() >= 4 + 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn an_error_cause_is_said_once() {
        let bind = crate::app::StartError::Bind {
            addr: ([127, 0, 0, 1], 8080).into(),
            what: "server.listen",
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let text = render_error(&anyhow::Error::from(bind));
        assert_eq!(text.matches("in use").count(), 1, "{text}");
        let chained = anyhow::Error::from(std::io::Error::other("disk on fire")).context("cannot read");
        assert_eq!(render_error(&chained), "cannot read: disk on fire");
    }

    #[test]
    fn cli_parses_contract_verbs() {
        assert!(matches!(
            Cli::try_parse_from(["pg", "check", "--config", "x.toml"]).unwrap().command,
            Some(Command::Check(_))
        ));
        assert!(Cli::try_parse_from(["pg", "--demo"]).unwrap().demo);
        assert!(matches!(Cli::try_parse_from(["pg", "new-key"]).unwrap().command, Some(Command::NewKey)));
        assert!(matches!(Cli::try_parse_from(["pg", "hash-key"]).unwrap().command, Some(Command::HashKey)));
    }
}
