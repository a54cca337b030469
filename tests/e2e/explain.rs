//! `palette-gateway explain`: what the gateway would do with a request, step by step, without
//! sending it; and `check`'s warnings about rules that can never match.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{
    scratch_dir, standard_fake, standard_rules, FileGateway, Harness, CI_KEY, NO_BUDGET, PALETTE_KEY, SECRETS,
};

const BIN: &str = env!("CARGO_BIN_EXE_palette-gateway");

/// The user's case from issue 13: a rule written for the path as sent, under a stripped prefix.
const TEAM_OPS: &str = r#"
[credentials.default]
api_key_env = "PALETTE_API_KEY"

[[clients]]
name = "ops"
keys = ["sha256:0000000000000000000000000000000000000000000000000000000000000001"]
allow = ["GET /team-ops/**"]

[[routes]]
name = "team-ops"
path_prefix = "/team-ops"
strip_prefix = true
project_uid = "p042"
"#;

fn config(name: &str, rules: &str) -> PathBuf {
    let path = scratch_dir(name).join("gateway.toml");
    std::fs::write(&path, format!("[upstream]\nurl = \"https://api.spectrocloud.com\"\n{rules}")).unwrap();
    path
}

/// Runs the binary with the standard secrets in its environment and `stdin` on its input.
fn run(args: &[&str], config: Option<&Path>, stdin: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("PALETTE_API_KEY", PALETTE_KEY)
        .env("PALETTE_PASSWORD", "ops-password-0001")
        .env_remove("PALETTE_GATEWAY_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn texts(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_no_secret(out: &Output) {
    let (stdout, stderr) = texts(out);
    for s in SECRETS {
        assert!(!stdout.contains(s) && !stderr.contains(s), "a secret was printed:\n{stdout}\n{stderr}");
    }
}

/// A forwarded request: the operator sees the client, the route and its strip, the allow rule
/// that matched, the project, the upstream URL, the headers with the credential by name only,
/// the budget prefix, and exit 0. The local key (read from stdin) is never printed.
#[test]
fn a_forwarded_request_is_explained_step_by_step() {
    let path = config("explain-ok", &standard_rules());
    let out = run(&["explain", "--key", "-", "GET", "/team-a/v1/spectroclusters?limit=5"], Some(&path), CI_KEY);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for want in [
        "path check     ok: /team-a/v1/spectroclusters",
        "client         ci (by its local key)",
        "route          team-a (routes[0]): strips /team-a, upstream path /v1/spectroclusters",
        "policy         allowed by \"GET /v1/**\"",
        "scope          ProjectUid 5ca1ab1e0000000000000001 (set by the route",
        "upstream       GET https://api.spectrocloud.com/v1/spectroclusters?limit=5",
        "headers        apikey: [upstream api key \"default\"]",
        "projectuid: 5ca1ab1e0000000000000001",
        "budget         prefix /v1/spectroclusters",
        "result         forwarded (exit 0)",
    ] {
        assert!(stdout.contains(want), "{want}\n---\n{stdout}");
    }
    assert_no_secret(&out);
    // The key on the command line is not echoed either.
    let out = run(&["explain", "--key", CI_KEY, "GET", "/v1/users"], Some(&path), "");
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert_no_secret(&out);
}

/// The user's case: `allow = ["GET /team-ops/**"]` beside a `strip_prefix` route for
/// `/team-ops`. `explain` says which step refused, names the rule that matched only the path as
/// sent, says rules see the upstream path, and exits 1.
#[test]
fn a_rule_under_a_stripped_prefix_is_explained() {
    let path = config("explain-strip", TEAM_OPS);
    let out = run(&["explain", "--client", "ops", "GET", "/team-ops/v1/spectroclusters"], Some(&path), "");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for want in [
        "route          team-ops (routes[0]): strips /team-ops, upstream path /v1/spectroclusters",
        "no allow rule matches GET /v1/spectroclusters; allow = [\"GET /team-ops/**\"]",
        "\"GET /team-ops/**\" matches the path as sent (/team-ops/v1/spectroclusters), but rules are checked on the upstream path",
        "result         refused at policy: 403",
    ] {
        assert!(stdout.contains(want), "{want}\n---\n{stdout}");
    }
    assert!(!stdout.contains("\nupstream ") && !stdout.contains("\nheaders "), "nothing would be sent: {stdout}");
}

/// Refusals at each earlier step exit 1 with the step named: an unchecked path, an unknown
/// key, a method Palette does not serve, a project the client may not use.
#[test]
fn refusals_name_their_step() {
    let path = config("explain-refusals", &standard_rules());
    for (args, step) in [
        (&["--client", "ci", "GET", "/v1/%2e%2e/auth"][..], "refused at path check: 400"),
        (&["--key", "pgw_not-a-known-key", "GET", "/v1/users"][..], "refused at client: 401"),
        (&["--client", "ci", "TRACE", "/v1/users"][..], "refused at framing: 405"),
        (&["--client", "ci", "-H", "ProjectUid: p999", "GET", "/v1/users"][..], "refused at scope: 403"),
        (&["--client", "ci", "POST", "/v1/auth/authenticate"][..], "refused at policy: 403"),
    ] {
        let out = run(&[&["explain"][..], args].concat(), Some(&path), "");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}\n{stdout}\n{stderr}");
        assert!(stdout.contains(step), "{args:?}: {step}\n{stdout}");
        assert!(!stdout.contains("pgw_not-a-known-key"), "{stdout}");
    }
}

/// Exit 2, with the reason on stderr, for a bad config and for arguments explain cannot use.
#[test]
fn bad_configs_and_arguments_exit_2() {
    let good = config("explain-usage", &standard_rules());
    let bad = config("explain-bad", "[[clients]]\nname = \"a\"\ncredential = \"nope\"\n");
    for (args, cfg, want) in [
        (&["explain", "GET", "/v1/x"][..], Some(bad.as_path()), "does not load (bad config, exit 2)"),
        (&["explain", "GET", "/v1/x"][..], None, "explain needs --config"),
        (&["explain", "--client", "nobody", "GET", "/v1/x"][..], Some(good.as_path()), "no such client"),
        (&["explain", "G(T", "/v1/x"][..], Some(good.as_path()), "is not an HTTP method"),
        (&["explain", "GET", "https://example.com/v1/x"][..], Some(good.as_path()), "not a URL"),
        (&["explain", "-H", "ApiKey secret-value", "GET", "/v1/x"][..], Some(good.as_path()), "expected 'Name: value'"),
    ] {
        let out = run(args, cfg, "");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{stdout}\n{stderr}");
        assert!(stderr.contains(want), "{args:?}: {want}\n{stderr}");
        assert!(!stderr.contains("secret-value"), "{stderr}");
    }
}

/// What `explain` says is what the running gateway does: the same config, the same requests;
/// a forwarded one reaches Palette at the path and with the project `explain` printed, a
/// refused one gets the status it printed.
#[tokio::test]
async fn explain_and_the_gateway_agree() {
    let g = FileGateway::start("explain-agree", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let path = g.path.clone();
    let explain = |args: Vec<String>| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(&args, Some(&path), CI_KEY)
            })
            .await
            .unwrap()
        }
    };
    for (target, project) in
        [("/team-a/v1/users?limit=2", "5ca1ab1e0000000000000001"), ("/v1/spectroclusters", "5ca1ab1e0000000000000002")]
    {
        let out = explain(vec!["explain".into(), "--key".into(), "-".into(), "GET".into(), target.into()]).await;
        let (stdout, _) = texts(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        let upstream = stdout.lines().find_map(|l| l.strip_prefix("upstream       GET ")).unwrap().to_string();
        let resp = g.http.get(g.url(target)).header("ApiKey", CI_KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{target}");
        let last = g.fake.requests().into_iter().filter(|r| !r.path_and_query.starts_with("/v1/auth/")).last().unwrap();
        assert_eq!(upstream, format!("{}{}", g.fake.url(), last.path_and_query), "{stdout}");
        assert_eq!(last.headers.get("projectuid").unwrap(), project, "{stdout}");
        assert!(stdout.contains(&format!("projectuid: {project}")), "{stdout}");
    }
    let out = explain(vec!["explain".into(), "--key".into(), "-".into(), "DELETE".into(), "/v1/users/u1".into()]).await;
    let (stdout, _) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("refused at policy: 403"), "{stdout}");
    assert!(stdout.contains("\"GET /v1/**\": its method is GET"), "why each rule did not match: {stdout}");
    let resp = g.http.delete(g.url("/v1/users/u1")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 403);
}

/// `check` warns about each kind of rule that can never match, and still says ok (exit 0): an
/// allow rule under a stripped prefix, a route shadowed by an earlier one, a client no request
/// can be, a client none of whose rules can match.
#[test]
fn check_warns_about_rules_that_never_match() {
    let path = config(
        "check-warnings",
        &format!(
            "{TEAM_OPS}\n[[routes]]\nname = \"ops-v1\"\npath_prefix = \"/team-ops/v1\"\n\
             [[clients]]\nname = \"ghost\"\n"
        ),
    );
    let out = run(&["check"], Some(&path), "");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    for want in [
        "warning: clients[0].allow[0]: \"GET /team-ops/**\" names the prefix /team-ops of route \"team-ops\"",
        "e.g. \"GET /**\"",
        "warning: clients[0].allow: none of client \"ops\"'s allow rules can match",
        "warning: routes[1]: route \"ops-v1\" can never match: route \"team-ops\" (routes[0]) comes first",
        "warning: clients[1]: no request can be client \"ghost\"",
    ] {
        assert!(stderr.contains(want), "{want}\n---\n{stderr}");
    }
    // A config without such rules has no warning.
    let out = run(&["check"], Some(&config("check-clean", &standard_rules())), "");
    assert_eq!(out.status.code(), Some(0));
    assert!(!texts(&out).1.contains("warning"), "{}", texts(&out).1);
}

/// The user's case on the real gateway: the 403 names the forwarded path and says a route
/// stripped it (before, it named `/v1/...`, a path the client never sent, and nothing else).
#[tokio::test]
async fn a_refusal_after_a_strip_says_so() {
    let rules = format!(
        "[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
         [[clients]]\nname = \"ops\"\nkeys = [\"{}\"]\nallow = [\"GET /team-ops/**\"]\n\
         [[routes]]\nname = \"team-ops\"\npath_prefix = \"/team-ops\"\nstrip_prefix = true\n",
        palette_gateway::auth::key_hash_string(CI_KEY)
    );
    let h = Harness::start(standard_fake(), NO_BUDGET, &rules).await;
    let resp = h.http.get(h.url("/team-ops/v1/users")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "Forbidden");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "client ops may not GET /v1/users (the path after route team-ops strips /team-ops: allow rules"
        ),
        "{msg}"
    );
    assert!(msg.contains("palette-gateway explain"), "{msg}");
    assert!(h.forwarded().is_empty(), "nothing reached Palette");
}
