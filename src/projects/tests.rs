//! The resolver on tokio's paused clock, with a stand-in for Palette.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::{load_str, MapEnv, Secret};

type Answer = Result<HashMap<String, Vec<HeaderValue>>, LookupError>;
/// What a test lookup answers, called once per lookup.
pub(super) type Fetch = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// A stand-in Palette: the projects it lists (name, uid), whether it fails, and its calls.
#[derive(Default)]
struct Stand {
    projects: Mutex<Vec<(&'static str, &'static str)>>,
    failing: std::sync::atomic::AtomicBool,
    /// Never answers (a Palette that hangs).
    hangs: std::sync::atomic::AtomicBool,
    calls: AtomicUsize,
}

impl Stand {
    fn set(&self, projects: &[(&'static str, &'static str)]) {
        *self.projects.lock().unwrap() = projects.to_vec();
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn lookup(stand: &Arc<Stand>, wanted: &[&str]) -> Arc<Lookup> {
    let s = stand.clone();
    let fetch: Fetch = Arc::new(move || {
        let s = s.clone();
        Box::pin(async move {
            s.calls.fetch_add(1, Ordering::SeqCst);
            if s.hangs.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if s.failing.load(Ordering::SeqCst) {
                return Err(LookupError::Refused(StatusCode::INTERNAL_SERVER_ERROR, None));
            }
            let mut by_name: HashMap<String, Vec<HeaderValue>> = HashMap::new();
            for (name, uid) in s.projects.lock().unwrap().iter() {
                by_name.entry(name.to_string()).or_default().push(HeaderValue::from_static(uid));
            }
            Ok(by_name)
        })
    });
    let kind = CredentialKind::ApiKey(Secret::new("k"));
    let l = Arc::new(Lookup::new("default", kind, Source::Test(fetch), Metrics::new()));
    l.wanted.store(Arc::new(wanted.iter().map(|n| Arc::from(*n)).collect()));
    l
}

const A: &str = "5ca1ab1e00000000000000a1";
const B: &str = "5ca1ab1e00000000000000b2";

fn uid(v: &str) -> Resolution {
    Resolution::Uid(HeaderValue::from_str(v).unwrap())
}

/// Lets the background task run what is due now.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_name_resolves_after_the_first_lookup_and_a_request_waits_only_for_that() {
    let stand = Arc::new(Stand::default());
    stand.set(&[("Default", A), ("team-a", B)]);
    let l = lookup(&stand, &["Default"]);
    assert_eq!(l.resolve("Default"), Resolution::Pending);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(l.clone().run(cancel.clone()));
    let before = Instant::now();
    l.first_lookup(FIRST_WAIT).await;
    assert_eq!(before.elapsed(), Duration::ZERO, "the lookup answers at once");
    assert_eq!(l.resolve("Default"), uid(A));
    assert_eq!(l.resolve("team-a"), uid(B));
    assert_eq!(l.resolve("default"), Resolution::NotFound, "names are compared exactly");
    // Once a lookup finished, nobody waits for another.
    let before = Instant::now();
    l.first_lookup(FIRST_WAIT).await;
    assert_eq!(before.elapsed(), Duration::ZERO);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_listing_is_refreshed_ahead_of_expiry_so_a_name_never_stops_resolving() {
    let stand = Arc::new(Stand::default());
    stand.set(&[("Default", A)]);
    let l = lookup(&stand, &["Default"]);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(l.clone().run(cancel.clone()));
    settle().await;
    assert_eq!(stand.calls(), 1);
    // Thirty minutes, checked every 10 s: always resolved, one lookup per REFRESH_AFTER.
    for _ in 0..180 {
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(l.resolve("Default"), uid(A), "at {:?}", stand.calls());
    }
    assert_eq!(stand.calls(), 1 + 1800 / REFRESH_AFTER.as_secs() as usize);
    // A project renamed in Palette: the next refresh follows it.
    stand.set(&[("Renamed", A)]);
    tokio::time::advance(REFRESH_AFTER).await;
    settle().await;
    assert_eq!(l.resolve("Default"), Resolution::NotFound);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failing_lookups_keep_the_listing_until_its_ttl_then_fail_closed_with_capped_retries() {
    let stand = Arc::new(Stand::default());
    stand.set(&[("Default", A)]);
    let l = lookup(&stand, &["Default"]);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(l.clone().run(cancel.clone()));
    settle().await;
    stand.failing.store(true, Ordering::SeqCst);
    // The refresh at 240 s fails; the listing serves until 300 s.
    tokio::time::advance(REFRESH_AFTER + Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(stand.calls(), 2);
    assert_eq!(l.resolve("Default"), uid(A), "a failed refresh keeps a listing that is still fresh");
    tokio::time::advance(TTL - REFRESH_AFTER).await;
    settle().await;
    match l.resolve("Default") {
        Resolution::Failed(e) => assert!(e.contains("500"), "{e}"),
        other => panic!("an expired listing must not be used: {other:?}"),
    }
    // Ten minutes of failures: retries back off 1, 2, 4 ... 60 s, not faster.
    let calls = stand.calls();
    for _ in 0..600 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let retries = stand.calls() - calls;
    assert!((9..=16).contains(&retries), "{retries} retries in 10 minutes");
    // Misses do not bypass the backoff.
    let calls = stand.calls();
    for _ in 0..50 {
        l.missed();
    }
    settle().await;
    assert_eq!(stand.calls(), calls);
    // Palette back: the next retry resolves again.
    stand.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(MAX_BACKOFF).await;
    settle().await;
    assert_eq!(l.resolve("Default"), uid(A));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_missing_name_is_looked_up_again_soon_but_paced() {
    let stand = Arc::new(Stand::default());
    stand.set(&[("Default", A)]);
    let l = lookup(&stand, &["team-b"]);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(l.clone().run(cancel.clone()));
    settle().await;
    assert_eq!(l.resolve("team-b"), Resolution::NotFound);
    stand.set(&[("Default", A), ("team-b", B)]);
    // A hundred refused requests ask for a lookup: one happens, MISS_RETRY after the last.
    for _ in 0..100 {
        l.missed();
        settle().await;
    }
    assert_eq!(stand.calls(), 1);
    tokio::time::advance(MISS_RETRY).await;
    settle().await;
    assert_eq!(stand.calls(), 2);
    assert_eq!(l.resolve("team-b"), uid(B));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_name_two_projects_share_resolves_to_none() {
    let stand = Arc::new(Stand::default());
    stand.set(&[("Default", A), ("Default", B)]);
    let l = lookup(&stand, &["Default"]);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(l.clone().run(cancel.clone()));
    l.first_lookup(FIRST_WAIT).await;
    assert_eq!(l.resolve("Default"), Resolution::Ambiguous(2));
    assert!(l.resolve("Default").reason().contains("2 projects have that name"));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_at_most_first_wait_for_a_palette_that_hangs() {
    let stand = Arc::new(Stand::default());
    stand.hangs.store(true, Ordering::SeqCst);
    let l = lookup(&stand, &["Default"]);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(l.clone().run(cancel.clone()));
    let before = Instant::now();
    l.first_lookup(FIRST_WAIT).await;
    assert_eq!(before.elapsed(), FIRST_WAIT);
    assert_eq!(l.resolve("Default"), Resolution::Pending);
    // The task stops even mid-call.
    cancel.cancel();
    task.await.unwrap();
}

#[test]
fn the_listing_keeps_only_usable_items() {
    let body = serde_json::json!({"items": [
        {"metadata": {"name": "Default", "uid": A}},
        {"metadata": {"name": "Default", "uid": A}},
        {"metadata": {"name": "evil", "uid": "a\r\nX: y"}},
        {"metadata": {"name": "no-uid"}},
        {"metadata": {"uid": B}},
        {},
        {"metadata": {"name": "team-a", "uid": B}},
    ]});
    let by_name = parse_listing(body.to_string().as_bytes()).unwrap();
    assert_eq!(by_name["Default"], [HeaderValue::from_static(A)], "one project listed twice is one project");
    assert_eq!(by_name["team-a"], [HeaderValue::from_static(B)]);
    assert!(!by_name.contains_key("evil") && !by_name.contains_key("no-uid"));
    assert!(matches!(parse_listing(b"{\"code\":\"x\"}"), Err(LookupError::BadAnswer)));
    assert!(matches!(parse_listing(b"not json"), Err(LookupError::BadAnswer)));
}

#[test]
fn each_credential_resolves_the_names_its_clients_use() {
    let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n\
        [credentials.default]\napi_key_env = \"K\"\n[credentials.other]\napi_key_env = \"K\"\n\
        [credentials.unused]\napi_key_env = \"K\"\n\
        [[clients]]\nname = \"a\"\nprojects = [\"Default\", \"5ca1ab1e00000000000000a1\"]\n\
        [[clients]]\nname = \"b\"\ncredential = \"other\"\nprojects = [\"team-b\"]\n\
        [[clients]]\nname = \"c\"\ncredential = \"unused\"\nprojects = [\"*\"]\n\
        [[routes]]\nname = \"only-a\"\npath_prefix = \"/a\"\nclients = [\"a\"]\nproject = \"team-a\"\n\
        [[routes]]\nname = \"both\"\npath_prefix = \"/b\"\nclients = [\"a\", \"b\"]\nproject = \"shared\"\n";
    let cfg = load_str(text, Path::new("."), &MapEnv::new().with("K", "k")).unwrap();
    let wanted = wanted_names(&cfg);
    let names = |i: usize| wanted[i].iter().map(|n| &**n).collect::<Vec<_>>();
    assert_eq!(names(0), ["Default", "team-a", "shared"]);
    assert_eq!(names(1), ["team-b", "shared"]);
    assert!(names(2).is_empty(), "a credential no name needs never calls the lookup");
    let note = check_note(&cfg).unwrap();
    for want in
        ["routes[0].project \"team-a\"", "clients[1].projects \"team-b\"", "cannot reach Palette", "24 lowercase hex"]
    {
        assert!(note.contains(want), "{want}: {note}");
    }
    let plain = load_str("[upstream]\nurl = \"http://127.0.0.1:1\"\n", Path::new("."), &MapEnv::new()).unwrap();
    assert_eq!(check_note(&plain), None);
}
