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
