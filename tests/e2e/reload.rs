//! Hot reload: a new config is loaded and validated whole, then swapped in; an invalid one is
//! refused while the old one keeps serving; state that did not change (tokens, rate limits)
//! survives; the file watcher follows plain rewrites and Kubernetes' `..data` symlink swaps.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config::Environment;
use tokio_util::sync::CancellationToken;

/// A local key that only the reloaded configs know.
const NEW_KEY: &str = "pgw_new-local-key-dddddddddddddddddddddddddddddddd";
/// The Palette API key a rotated Secret holds (the fake accepts it too).
const ROTATED_KEY: &str = "palette-api-key-0002-rotated";

/// The standard rules plus a client `newbie` holding [`NEW_KEY`].
fn rules_with_newbie() -> String {
    format!(
        "{}\n[[clients]]\nname = \"newbie\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\n",
        standard_rules(),
        key_hash_string(NEW_KEY)
    )
}

/// `rules_with_newbie` without the `ci` client (its key is gone).
fn rules_without_ci() -> String {
    let rules = rules_with_newbie();
    let start = rules.find("[[clients]]\nname = \"ci\"").expect("ci client");
    let end = start + rules[start..].find("[[clients]]\nname = \"admin\"").expect("admin client");
    let mut out = rules.clone();
    out.replace_range(start..end, "");
    // The ci-only route names a client that no longer exists.
    out.replace("clients = [\"ci\"]\n", "")
}

/// Rules that name a credential that does not exist: `clients[3].credential`.
fn invalid_rules() -> String {
    format!("{}\n[[clients]]\nname = \"broken\"\ncredential = \"nope\"\nprojects = [\"*\"]\n", standard_rules())
}

fn env() -> Arc<dyn Environment> {
    Arc::new(standard_env())
}

async fn status(http: &reqwest::Client, url: &str, key: &str) -> u16 {
    http.get(url).header("ApiKey", key).send().await.expect("request").status().as_u16()
}

/// A reload adds a client (its key works at once) and removes another (its key gets 401),
/// while a slow request that started before the reload, as the removed client, finishes with
/// 200 on the config it started with.
#[tokio::test]
async fn valid_reload_swaps_rules_while_in_flight_requests_finish_on_the_old() {
    let g = FileGateway::start("reload-swap", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    assert_eq!(status(&g.http, &g.url("/v1/users"), NEW_KEY).await, 401);
    let slow = {
        let (http, url) = (g.http.clone(), g.url("/v1/__fake/slow/1500"));
        tokio::spawn(async move {
            let r = http.get(url).header("ApiKey", CI_KEY).send().await.expect("slow request");
            (r.status().as_u16(), r.text().await.expect("slow body"))
        })
    };
    // The slow request is in the gateway (it reached the fake) before the reload.
    assert!(
        eventually(Duration::from_secs(5), || async {
            g.fake.requests().iter().any(|r| r.path_and_query == "/v1/__fake/slow/1500")
        })
        .await
    );
    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &rules_without_ci()));
    g.gateway.reload(&g.path, &standard_env()).expect("valid reload");
    assert_eq!(status(&g.http, &g.url("/v1/users"), NEW_KEY).await, 200, "the new client works at once");
    assert_eq!(status(&g.http, &g.url("/v1/users"), CI_KEY).await, 401, "the removed client is refused");
    let (code, body) = tokio::time::timeout(Duration::from_secs(10), slow).await.expect("slow finishes").unwrap();
    assert_eq!(code, 200, "the in-flight request finished on its old config: {body}");
    assert!(body.contains("/v1/__fake/slow/1500"), "{body}");
    let m = scrape(&g.http, &g.admin).await;
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(
        metric(&m, "palette_gateway_requests_total", &[("client", "ci"), ("code", "200")]),
        1.0,
        "the slow request counted as the old client"
    );
}

/// An invalid config is refused with an error naming the field, the old config keeps serving,
/// the error is counted, and the last-success timestamp moves only on a successful reload.
#[tokio::test]
async fn invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let g = FileGateway::start("reload-invalid", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let stamp = |m: &[Sample]| metric(m, "palette_gateway_config_last_reload_success_timestamp_seconds", &[]);
    let started = stamp(&scrape(&g.http, &g.admin).await);
    assert!(started > 1.6e9, "the start counts as a successful load: {started}");

    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &invalid_rules()));
    let err = g.gateway.reload(&g.path, &standard_env()).expect_err("invalid config refused").to_string();
    assert!(err.contains("clients[3].credential"), "the error names the field: {err}");
    assert!(err.contains("nope"), "{err}");
    // Broken TOML is refused the same way.
    write_atomically(&g.path, "[server\nlisten = ");
    let err = g.gateway.reload(&g.path, &standard_env()).expect_err("broken TOML refused").to_string();
    assert!(err.contains("line 1"), "the error says where: {err}");
    // A missing file too.
    let missing = g.dir.join("nowhere.toml");
    assert!(g.gateway.reload(&missing, &standard_env()).is_err());

    assert_eq!(status(&g.http, &g.url("/v1/users"), CI_KEY).await, 200, "the old config keeps serving");
    let m = scrape(&g.http, &g.admin).await;
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "error")]), 3.0);
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "ok")]), 0.0);
    assert_eq!(stamp(&m), started, "a refused reload does not move the success timestamp");

    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &rules_with_newbie()));
    g.gateway.reload(&g.path, &standard_env()).expect("valid reload");
    let m = scrape(&g.http, &g.admin).await;
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "ok")]), 1.0);
    assert!(stamp(&m) > started, "a successful reload moves the timestamp");
    assert_eq!(status(&g.http, &g.url("/v1/users"), NEW_KEY).await, 200);
}

/// A reload that moves a listener is refused, and the error says the field and that a restart
/// is needed; the gateway keeps listening where it was.
#[tokio::test]
async fn listener_address_change_is_refused() {
    let g = FileGateway::start("reload-listener", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let original = std::fs::read_to_string(&g.path).unwrap();
    for (field, from, to) in [
        ("server.listen", "listen = \"127.0.0.1:0\"\nadmin", "listen = \"127.0.0.1:1\"\nadmin"),
        ("server.admin_listen", "admin_listen = \"127.0.0.1:0\"", "admin_listen = \"127.0.0.1:1\""),
    ] {
        assert!(original.contains(from));
        write_atomically(&g.path, &original.replacen(from, to, 1));
        let err = g.gateway.reload(&g.path, &standard_env()).expect_err("listener change refused").to_string();
        assert!(err.contains(field), "{err}");
        assert!(err.contains("restart"), "{err}");
    }
    assert_eq!(status(&g.http, &g.url("/v1/users"), ADMIN_KEY).await, 200);
    let m = scrape(&g.http, &g.admin).await;
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "error")]), 2.0);
}

/// A reload that leaves a login credential unchanged keeps its token (no new login, the same
/// token upstream); a reload that changes the credential logs in again.
#[tokio::test]
async fn token_cache_survives_reload_of_an_unchanged_credential() {
    let g = FileGateway::start("reload-tokens", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    assert_eq!(status(&g.http, &g.url("/v1/users"), BOT_KEY).await, 200);
    assert_eq!(g.fake.logins(), 1);
    let token_before = g.fake.requests().last().unwrap().headers["authorization"].clone();

    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &rules_with_newbie()));
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    for _ in 0..5 {
        assert_eq!(status(&g.http, &g.url("/v1/users"), BOT_KEY).await, 200);
    }
    assert_eq!(g.fake.logins(), 1, "no new login for an unchanged credential");
    assert_eq!(g.fake.requests().last().unwrap().headers["authorization"], token_before, "the same token is used");

    let changed = rules_with_newbie().replace("refresh_before = \"3m\"", "refresh_before = \"4m\"");
    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &changed));
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    assert_eq!(status(&g.http, &g.url("/v1/users"), BOT_KEY).await, 200);
    assert_eq!(g.fake.logins(), 2, "a changed credential logs in again");
    assert_ne!(g.fake.requests().last().unwrap().headers["authorization"], token_before);
}

/// A client whose rate limit did not change keeps its state across a reload (still limited);
/// a client whose limit changed starts afresh.
#[tokio::test]
async fn rate_limit_state_survives_for_unchanged_clients() {
    let limited = |rules: String| format!("[rate_limit]\ndefault = {{ per_second = 0.05, burst = 2 }}\n{rules}");
    let g = FileGateway::start("reload-limits", standard_fake(), "", NO_BUDGET, &limited(standard_rules())).await;
    for key in [ADMIN_KEY, CI_KEY] {
        for _ in 0..2 {
            assert_eq!(status(&g.http, &g.url("/v1/users"), key).await, 200);
        }
        assert_eq!(status(&g.http, &g.url("/v1/users"), key).await, 429);
    }
    // ci gets its own, different limit; admin's stays as it was.
    let new_rules = limited(rules_with_newbie()).replacen(
        "name = \"ci\"\n",
        "name = \"ci\"\nrate_limit = { per_second = 0.05, burst = 3 }\n",
        1,
    );
    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &new_rules));
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    assert_eq!(status(&g.http, &g.url("/v1/users"), ADMIN_KEY).await, 429, "an unchanged client stays limited");
    assert_eq!(status(&g.http, &g.url("/v1/users"), CI_KEY).await, 200, "a changed limit starts afresh");
}

/// A rotated secret file (`api_key_file`) is read again on reload: the next request carries
/// the new Palette key.
#[tokio::test]
async fn rewritten_secret_file_takes_effect_on_reload() {
    let fake_cfg =
        fake_palette::FakePaletteConfig { api_keys: vec![PALETTE_KEY.into(), ROTATED_KEY.into()], ..standard_fake() };
    let dir = scratch_dir("reload-secret-file");
    std::fs::write(dir.join("palette.key"), format!("{PALETTE_KEY}\n")).unwrap();
    let rules = standard_rules().replace("api_key_env = \"PALETTE_API_KEY\"", "api_key_file = \"palette.key\"");
    let fake = TrackedFake(fake_palette::FakePalette::start(fake_cfg).await.unwrap());
    let path = dir.join("gateway.toml");
    std::fs::write(&path, server_config(&fake.url(), "", NO_BUDGET, &rules)).unwrap();
    let g = FileGateway::from_file(fake, dir.clone(), path).await;

    assert_eq!(status(&g.http, &g.url("/v1/users"), ADMIN_KEY).await, 200);
    assert_eq!(g.fake.requests().last().unwrap().headers["apikey"], PALETTE_KEY);
    write_atomically(&dir.join("palette.key"), &format!("{ROTATED_KEY}\n"));
    assert_eq!(status(&g.http, &g.url("/v1/users"), ADMIN_KEY).await, 200);
    assert_eq!(g.fake.requests().last().unwrap().headers["apikey"], PALETTE_KEY, "not before the reload");
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    assert_eq!(status(&g.http, &g.url("/v1/users"), ADMIN_KEY).await, 200);
    assert_eq!(g.fake.requests().last().unwrap().headers["apikey"], ROTATED_KEY, "the rotated key is used");
}

/// The watcher: the gateway in an `Arc`, `app::spawn_reload` on it, and a way to stop it.
struct Watched {
    gateway: Arc<palette_gateway::app::RunningGateway>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    fn spawn(gateway: palette_gateway::app::RunningGateway, path: &Path) -> Watched {
        Watched::spawn_shared(Arc::new(gateway), path)
    }

    fn spawn_shared(gateway: Arc<palette_gateway::app::RunningGateway>, path: &Path) -> Watched {
        let watched = gateway.runtime().load().config.watched_files(path);
        let stop = CancellationToken::new();
        let task = palette_gateway::app::spawn_reload(&gateway, path.to_path_buf(), env(), watched, stop.clone());
        Watched { gateway, stop, task }
    }

    fn reloads(&self, result: &str) -> u64 {
        self.gateway.metrics().config_reloads.with_label_values(&[result]).get()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("watcher stops").unwrap();
    }
}

/// Changes the watched files with `change(round)` until `seen` holds: the watcher task sets up
/// its watch after `spawn` returns, so a change made before that is not an event; each round
/// writes different content, so a later one is.
async fn change_until<C, F, Fut>(mut change: C, mut seen: F) -> bool
where
    C: FnMut(u32),
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for round in 0..10 {
        change(round);
        if eventually(Duration::from_secs(2), &mut seen).await {
            return true;
        }
    }
    false
}

/// Rewriting the config file reloads the gateway on its own (no signal): the new client works.
#[tokio::test]
async fn watcher_reloads_when_the_config_file_is_rewritten() {
    let g = FileGateway::start("reload-watch", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let FileGateway { fake, gateway, path, base, http, .. } = g;
    let w = Watched::spawn(gateway, &path);
    let url = format!("{base}/v1/users");
    let text = server_config(&fake.url(), "", NO_BUDGET, &rules_with_newbie());
    let ok = change_until(
        |round| write_atomically(&path, &format!("{text}\n# round {round}\n")),
        || async { status(&http, &url, NEW_KEY).await == 200 },
    )
    .await;
    assert!(ok, "the watcher never reloaded the rewritten file");
    assert!(w.reloads("ok") >= 1);
    assert_eq!(w.reloads("error"), 0);
    // An in-place write (no rename) of an invalid config is refused; the old one keeps serving.
    std::fs::write(&path, server_config(&fake.url(), "", NO_BUDGET, &invalid_rules())).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { w.reloads("error") >= 1 }).await, "refusal counted");
    assert_eq!(status(&http, &url, NEW_KEY).await, 200);
    w.stop().await;
}

/// A ConfigMap-style mount: `dir/..data -> ..<timestamp>`, `dir/gateway.toml ->
/// ..data/gateway.toml`.
struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    fn new(dir: PathBuf, file: &str, text: &str) -> ConfigMapDir {
        let mut m = ConfigMapDir { dir, generation: 0 };
        let first = m.write_generation(file, text);
        std::os::unix::fs::symlink(&first, m.dir.join("..data")).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(file), m.dir.join(file)).unwrap();
        m
    }

    fn write_generation(&mut self, file: &str, text: &str) -> String {
        self.generation += 1;
        let name = format!("..2026_01_01_00_00_00.{:09}", self.generation);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join(file), text).unwrap();
        name
    }

    /// What the kubelet does: a new timestamped dir, a new `..data_tmp` symlink renamed over
    /// `..data` (atomic), then the old dir removed.
    fn swap(&mut self, file: &str, text: &str) {
        let old = std::fs::read_link(self.dir.join("..data")).unwrap();
        let new = self.write_generation(file, text);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(old)).unwrap();
    }
}

/// Rotates the Palette key in a Secret-style directory (alternating, so every round is a change)
/// until requests reach the fake with the rotated key.
async fn rotate_until_used(
    secret: &mut ConfigMapDir,
    http: &reqwest::Client,
    url: &str,
    fake: &fake_palette::FakePalette,
) -> bool {
    change_until(
        |round| secret.swap("api-key", if round % 2 == 0 { ROTATED_KEY } else { PALETTE_KEY }),
        || async {
            status(http, url, ADMIN_KEY).await == 200
                && fake.requests().last().is_some_and(|r| r.headers["apikey"] == ROTATED_KEY)
        },
    )
    .await
}

/// A Kubernetes ConfigMap update (the `..data` symlink swapped) reloads the gateway on its own.
#[tokio::test]
async fn watcher_follows_a_kubernetes_configmap_symlink_swap() {
    let fake = TrackedFake(fake_palette::FakePalette::start(standard_fake()).await.unwrap());
    let dir = scratch_dir("reload-configmap");
    let mut mount =
        ConfigMapDir::new(dir.clone(), "gateway.toml", &server_config(&fake.url(), "", NO_BUDGET, &standard_rules()));
    let path = dir.join("gateway.toml");
    let g = FileGateway::from_file(fake, dir, path.clone()).await;
    let FileGateway { fake, gateway, base, http, .. } = g;
    let w = Watched::spawn(gateway, &path);
    let url = format!("{base}/v1/users");
    assert_eq!(status(&http, &url, NEW_KEY).await, 401);
    let text = server_config(&fake.url(), "", NO_BUDGET, &rules_with_newbie());
    let ok = change_until(
        |round| mount.swap("gateway.toml", &format!("{text}\n# round {round}\n")),
        || async { status(&http, &url, NEW_KEY).await == 200 },
    )
    .await;
    assert!(ok, "the watcher never saw the ..data swap");
    assert_eq!(w.reloads("error"), 0);
    assert_eq!(status(&http, &url, CI_KEY).await, 200);
    w.stop().await;
}

/// A Kubernetes Secret holding the Palette key is rotated (its `..data` swapped): the gateway
/// reloads on its own and the next request carries the new key.
#[tokio::test]
async fn watcher_applies_a_rotated_kubernetes_secret() {
    let fake_cfg =
        fake_palette::FakePaletteConfig { api_keys: vec![PALETTE_KEY.into(), ROTATED_KEY.into()], ..standard_fake() };
    let fake = TrackedFake(fake_palette::FakePalette::start(fake_cfg).await.unwrap());
    let dir = scratch_dir("reload-k8s-secret");
    let secret_dir = dir.join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    let mut secret = ConfigMapDir::new(secret_dir.clone(), "api-key", PALETTE_KEY);
    let rules = standard_rules().replace(
        "api_key_env = \"PALETTE_API_KEY\"",
        &format!("api_key_file = \"{}\"", secret_dir.join("api-key").display()),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, server_config(&fake.url(), "", NO_BUDGET, &rules)).unwrap();
    let g = FileGateway::from_file(fake, dir, path.clone()).await;
    let FileGateway { fake, gateway, base, http, .. } = g;
    let w = Watched::spawn(gateway, &path);
    let url = format!("{base}/v1/users");
    assert_eq!(status(&http, &url, ADMIN_KEY).await, 200);
    assert_eq!(fake.requests().last().unwrap().headers["apikey"], PALETTE_KEY);
    let ok = rotate_until_used(&mut secret, &http, &url, &fake).await;
    assert!(ok, "the rotated secret never took effect");
    w.stop().await;
}

/// 50 reloads, valid and invalid alternating, while 4 clients (API key, route-scoped, POST and
/// token credential) send requests continuously: every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_fails_no_request() {
    let g = FileGateway::start("reload-storm", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let traffic: [(&str, &str, &str); 4] = [
        ("GET", "/v1/users", ADMIN_KEY),
        ("GET", "/v1/spectroclusters", CI_KEY),
        ("POST", "/v1/dashboard/projects", CI_KEY),
        ("GET", "/v1/packs", BOT_KEY),
    ];
    for (method, path, key) in traffic {
        let (http, url, stop, sent) = (g.http.clone(), g.url(path), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                let req = if method == "POST" { http.post(&url).body("{}") } else { http.get(&url) };
                match req.header("ApiKey", key).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => failures.push(format!("{method} {url}: {}", r.status())),
                    Err(e) => failures.push(format!("{method} {url}: {e}")),
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for i in 0..50 {
        let rules = match i % 4 {
            0 => rules_with_newbie(),
            2 => standard_rules(),
            1 => invalid_rules(),
            _ => "[server\n".to_string(),
        };
        write_atomically(&g.path, &g.config_text("", NO_BUDGET, &rules));
        match g.gateway.reload(&g.path, &standard_env()) {
            Ok(()) => ok += 1,
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert_eq!((ok, refused), (25, 25));
    assert!(
        failures.is_empty(),
        "{} requests failed during the storm: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent.load(Ordering::SeqCst) >= 50, "too little traffic: {}", sent.load(Ordering::SeqCst));
    assert_eq!(g.fake.logins(), 1, "the token credential never changed, so no new login");
    let m = scrape(&g.http, &g.admin).await;
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "ok")]), 25.0);
    assert_eq!(metric(&m, "palette_gateway_config_reloads_total", &[("result", "error")]), 25.0);
}

/// Left alone, the watcher does not touch the config: nothing is re-read while nothing changes.
#[tokio::test]
async fn idle_watcher_does_not_reread_the_config() {
    use notify::Watcher as _;
    let g = FileGateway::start("reload-idle", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let FileGateway { fake: _fake, gateway, path, dir, .. } = g;
    // A second watcher, the test's own, counts every time the config file is opened.
    let opens = Arc::new(AtomicU64::new(0));
    let counter = opens.clone();
    let target = path.clone();
    let mut spy = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if matches!(ev.kind, notify::EventKind::Access(notify::event::AccessKind::Open(_)))
                && ev.paths.iter().any(|p| p == &target)
            {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    spy.watch(&dir, notify::RecursiveMode::NonRecursive).unwrap();
    let w = Watched::spawn(gateway, &path);
    // The watcher reads the file once to fingerprint it; give that time to happen and settle.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let settled = opens.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = opens.load(Ordering::SeqCst) - settled;
    w.stop().await;
    assert_eq!(idle, 0, "the unchanged config was opened {idle} times in 2 s of quiet");
    assert_eq!(_fake.logins(), 1);
}

/// Stopping the watcher (the first thing a SIGTERM does) is immediate, so `/readyz` can turn
/// 503 at once.
#[tokio::test]
async fn watcher_stops_at_once() {
    let g = FileGateway::start("reload-stop", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let FileGateway { fake: _fake, gateway, path, .. } = g;
    let mut w = Watched::spawn(gateway, &path);
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let gateway = w.gateway.clone();
        let started = Instant::now();
        w.stop().await;
        slowest = slowest.max(started.elapsed());
        w = Watched::spawn_shared(gateway, &path);
    }
    w.stop().await;
    assert!(slowest < Duration::from_millis(60), "stopping the watcher took up to {slowest:?}");
}

/// A secret file that a reload brings in (here the Palette key moves from an environment
/// variable to a Secret mount) is watched from then on: rotating it reloads on its own.
#[tokio::test]
async fn watcher_follows_secret_files_added_by_a_reload() {
    let fake_cfg =
        fake_palette::FakePaletteConfig { api_keys: vec![PALETTE_KEY.into(), ROTATED_KEY.into()], ..standard_fake() };
    let g = FileGateway::start("reload-new-secret", fake_cfg, "", NO_BUDGET, &standard_rules()).await;
    let FileGateway { fake, gateway, path, dir, base, http, .. } = g;
    let w = Watched::spawn(gateway, &path);
    let url = format!("{base}/v1/users");
    let secret_dir = dir.join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    let mut secret = ConfigMapDir::new(secret_dir.clone(), "api-key", PALETTE_KEY);
    let rules = standard_rules().replace(
        "api_key_env = \"PALETTE_API_KEY\"",
        &format!("api_key_file = \"{}\"", secret_dir.join("api-key").display()),
    );
    let text = server_config(&fake.url(), "", NO_BUDGET, &rules);
    let moved = change_until(
        |round| write_atomically(&path, &format!("{text}\n# round {round}\n")),
        || async { w.reloads("ok") >= 1 },
    )
    .await;
    assert!(moved, "the config change was not reloaded");
    assert_eq!(status(&http, &url, ADMIN_KEY).await, 200);
    assert_eq!(fake.requests().last().unwrap().headers["apikey"], PALETTE_KEY);
    let rotated = rotate_until_used(&mut secret, &http, &url, &fake).await;
    w.stop().await;
    assert!(rotated, "rotating the new secret file never took effect");
}

/// A secret file replaced by something that is not a one-line secret is refused on reload, as
/// `check` and start-up refuse it, and never hangs the watcher: a FIFO nobody writes, a file
/// over the size bound, a key with a second line. The old key keeps serving throughout, and a
/// good key written afterwards is picked up.
#[tokio::test]
async fn bad_secret_files_are_refused_on_reload_without_hanging() {
    let fake_cfg =
        fake_palette::FakePaletteConfig { api_keys: vec![PALETTE_KEY.into(), ROTATED_KEY.into()], ..standard_fake() };
    let dir = scratch_dir("reload-bad-secret");
    let key = dir.join("palette.key");
    std::fs::write(&key, format!("{PALETTE_KEY}\n")).unwrap();
    let rules = standard_rules().replace("api_key_env = \"PALETTE_API_KEY\"", "api_key_file = \"palette.key\"");
    let fake = TrackedFake(fake_palette::FakePalette::start(fake_cfg).await.unwrap());
    let path = dir.join("gateway.toml");
    std::fs::write(&path, server_config(&fake.url(), "", NO_BUDGET, &rules)).unwrap();
    let g = FileGateway::from_file(fake, dir.clone(), path.clone()).await;
    let FileGateway { fake, gateway, base, http, .. } = g;
    let w = Watched::spawn(gateway, &path);
    let url = format!("{base}/v1/users");
    // The watcher is up once a harmless change (same key, other whitespace) has been reloaded.
    let up = change_until(
        |round| write_atomically(&key, &format!("{PALETTE_KEY}{}", "\n".repeat(round as usize + 2))),
        || async { w.reloads("ok") >= 1 },
    )
    .await;
    assert!(up, "the watcher never reloaded");
    let fifo = dir.join("fifo.tmp");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    type Change<'a> = Box<dyn Fn() + 'a>;
    let bad: [(&str, Change); 3] = [
        ("a FIFO", Box::new(|| std::fs::rename(&fifo, &key).unwrap())),
        ("a 2 MiB file", Box::new(|| write_atomically(&key, &"k".repeat(2 * 1024 * 1024)))),
        ("a key with a second line", Box::new(|| write_atomically(&key, &format!("{PALETTE_KEY}\n{ROTATED_KEY}\n")))),
    ];
    for (n, (what, change)) in bad.iter().enumerate() {
        change();
        let refused = eventually(Duration::from_secs(5), || async { w.reloads("error") > n as u64 }).await;
        assert!(refused, "{what}: the reload was not refused (or the watcher hangs)");
        let started = Instant::now();
        assert_eq!(status(&http, &url, ADMIN_KEY).await, 200, "{what}");
        assert!(started.elapsed() < Duration::from_secs(1), "{what}: serving slowed down");
        assert_eq!(fake.requests().last().unwrap().headers["apikey"], PALETTE_KEY, "{what}: the old key serves");
    }
    write_atomically(&key, &format!("{ROTATED_KEY}\n"));
    let rotated = eventually(Duration::from_secs(5), || async {
        status(&http, &url, ADMIN_KEY).await == 200
            && fake.requests().last().is_some_and(|r| r.headers["apikey"] == ROTATED_KEY)
    })
    .await;
    assert!(rotated, "a good key after the bad ones is used");
    w.stop().await;
}

/// With `RUST_LOG=trace` and the log written next to the config (as a container's redirected
/// stderr often is), an idle gateway stays quiet: its log writes must not wake the config
/// watcher, whose own trace lines would be written there again, in a loop. A change to the
/// config is still reloaded.
#[tokio::test]
async fn trace_logging_next_to_the_config_does_not_feed_the_watcher() {
    let fake = TrackedFake(fake_palette::FakePalette::start(standard_fake()).await.unwrap());
    let dir = scratch_dir("reload-trace-log");
    let path = dir.join("gateway.toml");
    let rules = format!(
        "[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n[[clients]]\nname = \"admin\"\nkeys = [\"{}\"]\n",
        key_hash_string(ADMIN_KEY)
    );
    let text = server_config(&fake.url(), "", NO_BUDGET, &rules);
    std::fs::write(&path, &text).unwrap();
    let log = dir.join("gateway.log");
    for filter in ["trace", "info,notify=trace"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_palette-gateway"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", filter)
            .env("PALETTE_API_KEY", PALETTE_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let listening = eventually(Duration::from_secs(10), || async { read().contains("palette-gateway listening") });
        assert!(listening.await, "{filter}: the gateway did not start:\n{}", read());
        // Let start-up settle, then measure two seconds of idling.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = size();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let grown = size() - before;
        let reloaded = {
            write_atomically(&path, &format!("{text}\n# changed\n"));
            eventually(Duration::from_secs(5), || async { read().contains("config reloaded") }).await
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(grown < 64 * 1024, "{filter}: an idle gateway wrote {grown} bytes of log in 2 s");
        assert!(reloaded, "{filter}: the config change was not reloaded");
        std::fs::write(&path, &text).unwrap();
    }
}
