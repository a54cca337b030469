//! Projects by name (issue 12 §1): a route's `project = "Default"` and a client's `projects`
//! names, resolved with the client's credential through Palette's own lookup
//! (`GET /v1/dashboard/projects/metadata`), kept fresh in the background, and failing closed:
//! a name that does not resolve is refused naming it, listed by `/readyz` and counted.
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fake_palette::{FakePaletteConfig, FakeProject};
use palette_gateway::auth::key_hash_string;
use palette_gateway::config::Environment;
use serde_json::Value;

use crate::support::*;

const NAMED_KEY: &str = "pgw_named-local-key-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const DEFAULT_UID: &str = "5ca1ab1e00000000000000a1";
const TEAM_A_UID: &str = "5ca1ab1e00000000000000b2";
const TEAM_B_UID: &str = "5ca1ab1e00000000000000c3";
const LISTED_UID: &str = "5ca1ab1e00000000000000d4";
const METADATA: &str = "/v1/dashboard/projects/metadata";

fn projects() -> Vec<FakeProject> {
    vec![
        FakeProject::new("Default", DEFAULT_UID),
        FakeProject::new("team-a", TEAM_A_UID),
        FakeProject::new("Twice", "5ca1ab1e00000000000000e5"),
        FakeProject::new("Twice", "5ca1ab1e00000000000000f6"),
    ]
}

fn fake() -> FakePaletteConfig {
    FakePaletteConfig { projects: projects(), ..standard_fake() }
}

/// `named` lists two names (one Palette does not have yet) and a uid; `bot` (a login
/// credential) names team-a; three routes set a project by name.
fn rules() -> String {
    format!(
        r#"{standard}
[[clients]]
name = "named"
keys = ["{named}"]
projects = ["Default", "{LISTED_UID}", "team-b"]

[[routes]]
name = "by-name"
path_prefix = "/default"
strip_prefix = true
project = "Default"

[[routes]]
name = "ghost"
path_prefix = "/ghost"
strip_prefix = true
project = "no-such-project"

[[routes]]
name = "dup"
path_prefix = "/dup"
strip_prefix = true
project = "Twice"
"#,
        standard = standard_rules()
            .replace("credential = \"ops\"\nprojects = [\"*\"]", "credential = \"ops\"\nprojects = [\"team-a\"]"),
        named = key_hash_string(NAMED_KEY),
    )
}

fn lookups(fake: &fake_palette::FakePalette) -> usize {
    fake.requests().iter().filter(|r| r.path_and_query.starts_with(METADATA)).count()
}

/// Requests forwarded for clients (not logins, not lookups).
fn proxied(h: &Harness) -> usize {
    h.forwarded().iter().filter(|r| !r.path_and_query.starts_with(METADATA)).count()
}

async fn get(h: &Harness, key: &str, path: &str, project: Option<&str>) -> (u16, Value) {
    let mut req = h.http.get(h.url(path)).header("ApiKey", key);
    if let Some(p) = project {
        req = req.header("ProjectUid", p);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn start() -> Harness {
    let h = Harness::start(fake(), NO_BUDGET, &rules()).await;
    h.wait_ready().await;
    h
}

/// A route with `project = "Default"` sends Default's uid, whatever the client asked for; the
/// names were looked up once per credential, and requests in steady state cause no lookup.
#[tokio::test]
async fn a_route_by_name_sends_the_projects_uid_and_requests_cause_no_lookup() {
    let h = start().await;
    let (status, body) = get(&h, ADMIN_KEY, "/default/v1/clusterprofiles?ProjectUid=evil", Some("evil")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["projectUid"], DEFAULT_UID);
    assert_eq!(body["path"], "/v1/clusterprofiles");
    assert_eq!(body["query"], Value::Null, "the client's ?ProjectUid= is dropped");
    assert!(eventually(Duration::from_secs(5), || async { lookups(&h.fake) == 2 }).await, "{}", lookups(&h.fake));
    let looked_up =
        h.fake.requests().into_iter().filter(|r| r.path_and_query.starts_with(METADATA)).collect::<Vec<_>>();
    // One lookup per credential that needs names (default for admin and named, ops for bot),
    // each with that credential: the API key, or the token.
    assert_eq!(looked_up.len(), 2, "{:?}", looked_up.iter().map(|r| &r.headers).collect::<Vec<_>>());
    assert!(looked_up.iter().any(|r| r.headers.get("apikey").is_some_and(|v| v == PALETTE_KEY)));
    assert!(looked_up.iter().any(|r| r.headers.contains_key("authorization") && !r.headers.contains_key("apikey")));
    for _ in 0..20 {
        assert_eq!(get(&h, NAMED_KEY, "/default/v1/packs", None).await.0, 200);
        assert_eq!(get(&h, NAMED_KEY, "/v1/packs", Some(DEFAULT_UID)).await.0, 200);
    }
    assert_eq!(lookups(&h.fake), 2, "steady state: requests read the last lookup");
}

/// A client's `ProjectUid` passes when it is one of its uids or the uid of one of its names;
/// any other project, or the name itself, gets 403 naming the name that did not resolve.
#[tokio::test]
async fn a_client_mixes_names_and_uids_and_another_project_is_refused() {
    let h = start().await;
    for (uid, why) in [(DEFAULT_UID, "Default's uid"), (LISTED_UID, "a listed uid")] {
        let (status, body) = get(&h, NAMED_KEY, "/v1/packs", Some(uid)).await;
        assert_eq!(status, 200, "{why}: {body}");
        assert_eq!(body["projectUid"], uid, "{why}");
    }
    let before = proxied(&h);
    for other in [TEAM_A_UID, "Default", "5CA1AB1E00000000000000A1"] {
        let (status, body) = get(&h, NAMED_KEY, "/v1/packs", Some(other)).await;
        assert_eq!(status, 403, "{other}: {body}");
        assert_eq!(body["code"], "ProjectForbidden");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("client named") && message.contains("\"team-b\""), "{message}");
    }
    // The same through ?ProjectUid=.
    assert_eq!(get(&h, NAMED_KEY, &format!("/v1/packs?projectuid={TEAM_A_UID}"), None).await.0, 403);
    assert_eq!(proxied(&h), before, "a refused project never reaches Palette");
    // A login credential resolves its client's names with its token.
    let (status, body) = get(&h, BOT_KEY, "/v1/packs", Some(TEAM_A_UID)).await;
    assert_eq!((status, &body["projectUid"]), (200, &Value::from(TEAM_A_UID)), "{body}");
    assert_eq!(get(&h, BOT_KEY, "/v1/packs", Some(DEFAULT_UID)).await.0, 403);
}

/// A route whose project Palette does not have answers 404 `ProjectNotFound` naming it;
/// `/readyz` stays ready but lists it (and the client's missing name), and the metrics show it
/// unresolved and count the refusal.
#[tokio::test]
async fn an_unresolved_name_is_refused_naming_it_listed_by_readyz_and_counted() {
    let h = start().await;
    let before = proxied(&h);
    let (status, body) = get(&h, ADMIN_KEY, "/ghost/v1/packs", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "ProjectNotFound");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("\"no-such-project\"") && message.contains("route ghost"), "{message}");
    assert!(!body["ref"].as_str().unwrap().is_empty());
    assert_eq!(proxied(&h), before, "nothing forwarded");

    let ready = h.http.get(format!("{}/readyz", h.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    let listed: Vec<&str> =
        ready["unresolved_projects"].as_array().unwrap().iter().map(|e| e["project"].as_str().unwrap()).collect();
    for name in ["no-such-project", "team-b", "Twice"] {
        assert!(listed.contains(&name), "{name}: {ready}");
    }
    assert!(!listed.contains(&"Default"), "{ready}");

    let (_, samples) = h.metrics().await;
    let unresolved = |project| {
        metric(&samples, "palette_gateway_project_names_unresolved", &[("credential", "default"), ("project", project)])
    };
    assert_eq!(unresolved("no-such-project"), 1.0);
    assert_eq!(unresolved("Default"), 0.0);
    assert!(metric(&samples, "palette_gateway_project_name_refusals_total", &[("project", "no-such-project")]) >= 1.0);
}

/// Two projects named `Twice`: the name resolves to none, and the route answers 403
/// `ProjectAmbiguous` saying to use the uid.
#[tokio::test]
async fn an_ambiguous_name_resolves_to_none() {
    let h = start().await;
    let (status, body) = get(&h, ADMIN_KEY, "/dup/v1/packs", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "ProjectAmbiguous");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("\"Twice\"") && message.contains("2 projects") && message.contains("uid"), "{message}");
}

/// A project created in Palette after start-up: the client's first request for it is refused,
/// and that refusal triggers a new lookup (paced), so the project works within seconds.
#[tokio::test]
async fn a_name_that_appears_later_is_picked_up() {
    let h = start().await;
    assert_eq!(get(&h, NAMED_KEY, "/v1/packs", Some(TEAM_B_UID)).await.0, 403);
    let mut now = projects();
    now.push(FakeProject::new("team-b", TEAM_B_UID));
    h.fake.set_projects(now);
    let started = lookups(&h.fake);
    let picked_up = eventually(Duration::from_secs(10), || async {
        get(&h, NAMED_KEY, "/v1/packs", Some(TEAM_B_UID)).await.0 == 200
    })
    .await;
    assert!(picked_up, "team-b never resolved");
    // Dozens of refused requests, a handful of lookups: paced, never one per request.
    let extra = lookups(&h.fake) - started;
    assert!((1..=4).contains(&extra), "{extra} lookups");
    let (status, body) = get(&h, NAMED_KEY, "/v1/packs", Some(TEAM_B_UID)).await;
    assert_eq!((status, &body["projectUid"]), (200, &Value::from(TEAM_B_UID)));
}

/// A reload that adds routes by name: one whose project the last lookup listed resolves at
/// once with no new lookup; one created in Palette since is looked up right after the reload;
/// a reload that changes nothing about names costs no lookup (the lookup carries over).
#[tokio::test]
async fn a_reload_adding_a_name_looks_it_up_and_an_unchanged_one_keeps_the_listing() {
    let g = FileGateway::start("project-names-reload", fake(), "", NO_BUDGET, &rules()).await;
    let env: Arc<dyn Environment> = Arc::new(standard_env());
    let http = &g.http;
    let get = |path: &'static str| {
        let url = g.url(path);
        async move {
            let r = http.get(url).header("ApiKey", ADMIN_KEY).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)["projectUid"].clone())
        }
    };
    assert!(eventually(Duration::from_secs(5), || async { get("/default/v1/packs").await.0 == 200 }).await);
    assert!(eventually(Duration::from_secs(5), || async { lookups(&g.fake) == 2 }).await);

    let mut now = projects();
    now.push(FakeProject::new("created-later", TEAM_B_UID));
    g.fake.set_projects(now);
    let added = "[[routes]]\nname = \"a-by-name\"\npath_prefix = \"/by-a\"\nstrip_prefix = true\nproject = \"team-a\"\n\
                 [[routes]]\nname = \"later\"\npath_prefix = \"/later\"\nstrip_prefix = true\nproject = \"created-later\"\n";
    std::fs::write(&g.path, g.config_text("", NO_BUDGET, &format!("{}\n{added}", rules()))).unwrap();
    g.gateway.reload(&g.path, &*env).unwrap();
    assert_eq!(get("/by-a/v1/packs").await, (200, Value::from(TEAM_A_UID)), "team-a was in the last listing");
    let resolved = eventually(Duration::from_secs(10), || async {
        get("/later/v1/packs").await == (200, Value::from(TEAM_B_UID))
    })
    .await;
    assert!(resolved, "the name added by the reload never resolved");
    // Both credentials take the new routes: one lookup each for the new name, none for team-a.
    assert!(eventually(Duration::from_secs(5), || async { lookups(&g.fake) == 4 }).await, "{}", lookups(&g.fake));

    // A request refused just before that lookup may have asked for one more: let it pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let settled = lookups(&g.fake);
    g.gateway.reload(&g.path, &*env).unwrap();
    assert_eq!(get("/default/v1/packs").await.0, 200);
    assert_eq!(get("/later/v1/packs").await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lookups(&g.fake), settled, "an unchanged reload keeps the lookups, listing and all");

    // A reload that drops the route naming "no-such-project": its gauge series goes too.
    let unresolved = |samples: &[Sample], project| {
        samples.iter().any(|s| s.name == "palette_gateway_project_names_unresolved" && s.labels["project"] == project)
    };
    assert!(unresolved(&scrape(http, &g.admin).await, "no-such-project"));
    let without_ghost = rules().replace(
        "name = \"ghost\"\npath_prefix = \"/ghost\"\nstrip_prefix = true\nproject = \"no-such-project\"\n",
        "name = \"ghost\"\npath_prefix = \"/ghost\"\n",
    );
    std::fs::write(&g.path, g.config_text("", NO_BUDGET, &without_ghost)).unwrap();
    g.gateway.reload(&g.path, &*env).unwrap();
    let samples = scrape(http, &g.admin).await;
    assert!(!unresolved(&samples, "no-such-project"), "a removed name leaves no series");
    assert!(unresolved(&samples, "team-b"), "the other names keep theirs");
}

/// `check` accepts names but says, as a note, that it cannot tell offline whether they exist.
#[test]
fn check_notes_that_it_cannot_resolve_names_offline() {
    let dir = scratch_dir("project-names-check");
    let path = dir.join("gateway.toml");
    let text = format!(
        "{}\n[[routes]]\nname = \"x\"\npath_prefix = \"/x\"\nproject = \"Default\"\n",
        gateway_config("http://127.0.0.1:1", "", &standard_rules())
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palette-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .env("PALETTE_API_KEY", PALETTE_KEY)
        .env("PALETTE_PASSWORD", OPS_PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("note:") && stdout.contains("cannot reach Palette"), "{stdout}");
    assert!(stdout.contains("routes[2].project \"Default\""), "{stdout}");
    // A config without names gets no note.
    std::fs::write(&path, gateway_config("http://127.0.0.1:1", "", &standard_rules())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palette-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .env("PALETTE_API_KEY", PALETTE_KEY)
        .env("PALETTE_PASSWORD", OPS_PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("note:"));
}

/// Lookups spend the Palette budget of their prefix like any request: with a `/v1/dashboard`
/// budget of one request per 20 s, the start-up lookup leaves a client's dashboard call nothing
/// (429 naming the upstream budget), while another prefix is untouched.
#[tokio::test]
async fn lookups_draw_from_the_dashboard_budget() {
    let extra = "[upstream.limits]\nmax_wait = \"200ms\"\n[[upstream.limits.prefix]]\nprefix = \"/v1/dashboard\"\nper_second = 0.05\nburst = 1\n";
    let rules = format!(
        "[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n[[clients]]\nname = \"named\"\nkeys = [\"{}\"]\nprojects = [\"Default\"]\n",
        key_hash_string(NAMED_KEY)
    );
    let h = Harness::start(fake(), extra, &rules).await;
    assert!(eventually(Duration::from_secs(5), || async { lookups(&h.fake) == 1 }).await);
    let (status, body) = get(&h, NAMED_KEY, "/v1/dashboard/spectroclusters", None).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["message"].as_str().unwrap().contains("upstream"), "{body}");
    assert_eq!(get(&h, NAMED_KEY, "/v1/packs", Some(DEFAULT_UID)).await.0, 200);
}

/// A client hammering a route whose project is missing, for 1.5 s and then a hundred at once:
/// every request is 404, and Palette sees a lookup or two, not one per request.
#[tokio::test]
async fn a_flood_of_misses_costs_palette_a_lookup_or_two() {
    let h = start().await;
    assert!(eventually(Duration::from_secs(5), || async { lookups(&h.fake) == 2 }).await);
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(get(&h, ADMIN_KEY, "/ghost/v1/packs", None).await.0, 404);
        sent += 1;
    }
    let statuses = futures_util::future::join_all((0..100).map(|_| get(&h, ADMIN_KEY, "/ghost/v1/packs", None))).await;
    assert!(statuses.iter().all(|(s, _)| *s == 404));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let extra = lookups(&h.fake) - 2;
    assert!(extra <= 2, "{extra} lookups for {} misses", sent + 100);
}
