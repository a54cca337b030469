//! The binary's verbs: `check`, `new-key`, `hash-key`.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_palette-gateway");

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `check` exits 0 on a valid config and names every problem by field otherwise.
#[test]
fn check_names_every_problem() {
    let good = write(
        "good.toml",
        "[upstream]\nurl = \"https://api.spectrocloud.com\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n",
    );
    let out = Command::new(BIN).args(["check", "--config"]).arg(&good).env("PGW_TEST_KEY", "k").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = write(
        "bad.toml",
        "[upstream]\nurl = \"https://api.spectrocloud.com\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n\
         [[clients]]\nname = \"a\"\n[[clients]]\nname = \"b\"\n[[clients]]\nname = \"c\"\ncredential = \"opz\"\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"nope\"\n",
    );
    let out = Command::new(BIN).args(["check", "--config"]).arg(&bad).env_remove("PGW_TEST_KEY").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clients[2].credential: no credential named \"opz\""), "{err}");
    assert!(err.contains("routes[0].path_prefix:"), "{err}");
    assert!(err.contains("credentials.default.api_key_env: environment variable PGW_TEST_KEY is not set"), "{err}");
}

/// The config path can come from PALETTE_GATEWAY_CONFIG.
#[test]
fn check_reads_config_from_env() {
    let good = write(
        "env.toml",
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n",
    );
    let out =
        Command::new(BIN).arg("check").env("PALETTE_GATEWAY_CONFIG", &good).env("PGW_TEST_KEY", "k").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `new-key` prints a key and its hash; `hash-key` on that key prints the same hash.
#[test]
fn new_key_and_hash_key_agree() {
    let out = Command::new(BIN).arg("new-key").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("key: ")).unwrap().to_string();
    let hash = text.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap().to_string();
    assert!(key.len() >= 43 && hash.starts_with("sha256:") && hash.len() == 7 + 64);
    let mut child = Command::new(BIN).arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{key}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hash);
}

/// Running without a config explains what to do.
#[test]
fn run_without_config_fails_clearly() {
    let out = Command::new(BIN).env_remove("PALETTE_GATEWAY_CONFIG").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

/// `check` refuses what the gateway would refuse or panic on, each by its field: an API key with
/// a second line, a duration of 400000000000 years, a rate too slow for any limiter, a burst of
/// four billion, a secret file that is a FIFO. Running the gateway on the same file fails the
/// same way at once (exit 1, no panic, no hang).
#[test]
fn check_fails_exactly_when_the_gateway_would() {
    let dir = std::env::temp_dir().join(format!("pgw-cli-truth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Command::new("mkfifo").arg(dir.join("fifo-key")).status().unwrap().success());
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[upstream.limits]\nmax_wait = \"400000000000years\"\n\
         [credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n[credentials.f]\napi_key_file = \"fifo-key\"\n\
         [[clients]]\nname = \"a\"\nrate_limit = { per_second = 1e-12, burst = 4000000000 }\n",
    )
    .unwrap();
    let wants = [
        "upstream.limits.max_wait: must be at most 1 day",
        "credentials.default.api_key_env: environment variable PGW_TEST_KEY has a control character",
        "credentials.f.api_key_file: cannot read",
        "not a regular file",
        "clients[0].rate_limit.per_second: must be a number from 0.001",
    ];
    for args in [&["check", "--config"][..], &["--config"][..]] {
        let out = Command::new(BIN)
            .args(args)
            .arg(&path)
            .env("PGW_TEST_KEY", "key-one\nkey-two")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in wants {
            assert!(err.contains(want), "{args:?}: {want}\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert!(!err.contains("key-one"), "the secret itself is never printed: {err}");
    }
}

/// `--version` names the git commit the binary was built from (or `unknown` outside a checkout).
#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let want = std::env::var("PALETTE_GATEWAY_COMMIT").ok().filter(|c| !c.is_empty()).or(head);
    let want = want.unwrap_or_else(|| "unknown".into());
    assert_eq!(text.trim(), format!("palette-gateway {} (commit {want})", env!("CARGO_PKG_VERSION")));
    assert_eq!(palette_gateway::build::COMMIT, want);
}

/// `completions bash|zsh|fish` print a script for each shell; bash accepts its script.
#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("palette-gateway") && script.contains("explain"), "{shell}: {script}");
    }
    let script = write("completion.bash", &{
        let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    });
    let check = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Each subcommand's help lists only the options it takes: `new-key` no `--config`, `check`
/// its `--config`, `explain` its own; running's options (`--demo`) only on the top level.
#[test]
fn subcommand_help_lists_only_its_options() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for verb in ["new-key", "hash-key", "completions"] {
        let h = help(&["help", verb]);
        assert!(!h.contains("--config") && !h.contains("--demo") && !h.contains("--worker-threads"), "{verb}: {h}");
    }
    let h = help(&["check", "--help"]);
    assert!(h.contains("--config") && !h.contains("--demo") && !h.contains("--worker-threads"), "{h}");
    let h = help(&["explain", "--help"]);
    for want in ["--config", "--client", "--key", "--header", "<METHOD>", "<PATH>"] {
        assert!(h.contains(want), "{want}: {h}");
    }
    assert!(!h.contains("--demo"), "{h}");
    let h = help(&["--help"]);
    assert!(h.contains("--demo") && h.contains("explain") && h.contains("completions"), "{h}");
}

/// `--config PATH` before the subcommand still works (the image's entrypoint passes it).
#[test]
fn config_before_the_subcommand_still_works() {
    let good = write(
        "before.toml",
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n",
    );
    let out = Command::new(BIN).arg("--config").arg(&good).arg("check").env("PGW_TEST_KEY", "k").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).arg("--config").arg(&good).arg("new-key").output().unwrap();
    assert!(out.status.success());
}

/// A config value of the wrong form is named by its field path and line, with the form to
/// write (today's message named neither: `line 10: invalid value: string "10", expected a
/// duration`).
#[test]
fn parse_errors_name_the_field_and_the_form() {
    let bad = write(
        "form.toml",
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[upstream.limits]\nmax_wait = \"10\"\n\
         [credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n",
    );
    let out = Command::new(BIN).args(["check", "--config"]).arg(&bad).env("PGW_TEST_KEY", "k").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4: upstream.limits.max_wait: invalid value: string \"10\""), "{err}");
    assert!(err.contains("expected a duration like \"10s\""), "{err}");
}

/// A port already taken: the error says so once, not "Address in use: Address in use".
#[test]
fn a_bind_error_says_its_cause_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = write(
        "bind.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n"
        ),
    );
    let out = Command::new(BIN).arg("--config").arg(&cfg).env("PGW_TEST_KEY", "k").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port} (server.listen)")), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "{err}");
}

/// The warnings `check` prints are logged when the gateway starts and when it reloads.
#[test]
fn warnings_are_logged_at_start_and_reload() {
    use std::io::BufRead as _;
    let clean = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n";
    let path = write("warn-log.toml", &format!("{clean}[[clients]]\nname = \"ghost-one\"\n"));
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("PGW_TEST_KEY", "k")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    // The lines up to the first holding `want`, or None after `within`.
    let mut wait_for = |want: &str, within: std::time::Duration| -> Option<Vec<String>> {
        let until = std::time::Instant::now() + within;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = rx.recv_timeout(left) else { break };
            let done = line.contains(want);
            seen.push(line);
            if done {
                return Some(std::mem::take(&mut seen));
            }
        }
        None
    };
    let started = wait_for("palette-gateway listening", std::time::Duration::from_secs(20)).expect("started");
    assert!(started.iter().any(|l| l.contains("config warning") && l.contains("ghost-one")), "{started:#?}");
    // The file watcher reloads it. (Not SIGHUP: the gateway logs "listening" a moment before it
    // takes SIGHUP over from the default action, which ends the process.) Rewritten until the
    // watcher, which starts just after "listening", has seen a change.
    let mut reloaded = None;
    for n in 0..100 {
        std::fs::write(&path, format!("{clean}# edit {n}\n[[clients]]\nname = \"ghost-two\"\n")).unwrap();
        reloaded = wait_for("config reloaded", std::time::Duration::from_millis(300));
        if reloaded.is_some() {
            break;
        }
    }
    let reloaded = reloaded.expect("the gateway reloaded the edited config");
    assert!(reloaded.iter().any(|l| l.contains("config warning") && l.contains("ghost-two")), "{reloaded:#?}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// An explicit `--config`, before or after `check`, wins over `PALETTE_GATEWAY_CONFIG`.
#[test]
fn an_explicit_config_wins_over_the_environment() {
    let good = write(
        "explicit.toml",
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PGW_TEST_KEY\"\n",
    );
    let missing = good.with_file_name("nowhere.toml");
    for args in [&["check", "--config"][..], &["--config"][..]] {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg(&good);
        if args.len() == 1 {
            cmd.arg("check");
        }
        let out = cmd.env("PALETTE_GATEWAY_CONFIG", &missing).env("PGW_TEST_KEY", "k").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
