//! Projects by name: the uid of each project name the config uses (a route's `project`, a
//! client's `projects` names), looked up with the credential the requests use, through
//! Palette's own lookup (`GET /v1/dashboard/projects/metadata`).
//!
//! One [`Lookup`] per upstream credential that needs names: a background task (owned by the
//! app's task tracker) fetches the credential's project list, refreshes it every
//! [`REFRESH_AFTER`] so that it never reaches [`TTL`], and retries failures with a capped
//! backoff; requests read the last listing without waiting (only a request that comes before
//! the very first lookup finished waits, at most [`FIRST_WAIT`]). Every call goes through the
//! upstream budget's bucket for the lookup's path and ends within the upstream's
//! `request_timeout`. A name missing from the listing may be looked up again when a request
//! needs it, at most every [`MISS_RETRY`] per credential, so a project created later is picked
//! up quickly without a client being able to flood Palette. A lookup carries over a reload
//! while its credential and upstream are unchanged.
//!
//! Fail closed: a name that is not found, that several projects share, or whose lookup failed
//! with no listing younger than [`TTL`] resolves to nothing, so it never widens a scope.
//!
//! The listing is a plain map behind an atomic pointer rather than a moka cache: it is replaced
//! whole on each lookup and read on the request path, and an entry must never disappear at
//! expiry while its refresh is on the way (moka's TTL would evict it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body;
use crate::config::{ClientId, Config, CredentialKind};
use crate::credentials::{Credentials, UpstreamCredential};
use crate::limit::upstream::{Bucket, UpstreamBudget};
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// Palette's name-to-uid lookup (`palette-api-spec.json`: `GET`, optional `name` query; the
/// gateway asks for the whole list, one call per credential, and matches names exactly itself).
pub const METADATA_PATH: &str = "/v1/dashboard/projects/metadata";
/// A listing older than this is not used: its names resolve to nothing until a lookup succeeds.
pub const TTL: Duration = Duration::from_secs(300);
/// A listing is refreshed in the background when it is this old, well before [`TTL`].
pub const REFRESH_AFTER: Duration = Duration::from_secs(240);
/// A request that arrives before the credential's first lookup finished waits at most this.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);
/// A request refused for a name not found may trigger a new lookup, at most this often.
pub const MISS_RETRY: Duration = Duration::from_secs(2);
/// Failed lookups are retried after 1 s, 2 s, 4 s... up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The largest listing answer read (a tenant's project list is far smaller).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The budget's client index for the gateway's own calls (shared with logins).
const GATEWAY_ITSELF: ClientId = ClientId(usize::MAX);

/// What a project name resolves to for one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Exactly one project has this name.
    Uid(HeaderValue),
    /// No lookup has finished yet.
    Pending,
    /// The credential sees no project of this name.
    NotFound,
    /// The credential sees this many projects of this name.
    Ambiguous(usize),
    /// The lookup failed and no listing is recent enough to use.
    Failed(String),
}

impl Resolution {
    /// The uid, when the name resolved.
    pub fn uid(&self) -> Option<&HeaderValue> {
        match self {
            Resolution::Uid(v) => Some(v),
            _ => None,
        }
    }

    /// Why the name has no uid, in words (for answers, `/readyz` and logs).
    pub fn reason(&self) -> String {
        match self {
            Resolution::Uid(_) => "resolved".into(),
            Resolution::Pending => "its lookup in Palette has not finished yet".into(),
            Resolution::NotFound => "Palette has no project of that name that this credential can see".into(),
            Resolution::Ambiguous(n) => {
                format!("{n} projects have that name in Palette: name it by uid instead")
            }
            Resolution::Failed(e) => format!("the lookup in Palette failed: {e}"),
        }
    }
}

/// Why a lookup failed. Messages carry Palette's status and error code, never a body (it
/// could echo the credential).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The request could not be made or the answer not read.
    #[error("{0}")]
    Upstream(String),
    /// Palette answered another status than 200.
    #[error("Palette answered {0}{code}", code = .1.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused(StatusCode, Option<String>),
    /// The answer is not the metadata list.
    #[error("the answer is not a project list")]
    BadAnswer,
    /// No complete answer (budget wait included) within the upstream's request timeout.
    #[error("no complete answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// One successful lookup: every project name the credential sees, with its uids.
#[derive(Debug)]
struct Listing {
    by_name: HashMap<String, Vec<HeaderValue>>,
    fetched: Instant,
}

/// How a lookup reaches Palette; replaced on every runtime build (the budget may change).
struct Io {
    client: UpstreamClient,
    credential: UpstreamCredential,
    bucket: Option<Arc<Bucket>>,
}

/// Where a lookup gets its listings.
enum Source {
    /// Palette, the way requests reach it.
    Palette(ArcSwap<Io>),
    /// A stand-in for unit tests (paused time, no sockets).
    #[cfg(test)]
    Test(tests::Fetch),
}

/// One credential's project names: the last listing and the task that keeps it fresh.
pub struct Lookup {
    credential: Arc<str>,
    /// The credential's settings: a reload keeps the lookup only when they are unchanged.
    kind: CredentialKind,
    wanted: ArcSwap<Vec<Arc<str>>>,
    listing: ArcSwapOption<Listing>,
    last_error: Mutex<Option<String>>,
    /// Counts finished attempts; a request waiting for the first lookup watches it.
    attempts: watch::Sender<u64>,
    /// Asks the task for an early lookup (a name missing, a name added by a reload).
    wake: Notify,
    /// Set with each wake, cleared when a lookup starts: a wake from before the last lookup
    /// (a stale permit) asks for nothing.
    early: AtomicBool,
    source: Source,
    metrics: Metrics,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").field("credential", &self.credential).finish_non_exhaustive()
    }
}

impl Lookup {
    fn new(credential: &str, kind: CredentialKind, source: Source, metrics: Metrics) -> Self {
        Lookup {
            credential: Arc::from(credential),
            kind,
            wanted: ArcSwap::from_pointee(Vec::new()),
            listing: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            attempts: watch::Sender::new(0),
            wake: Notify::new(),
            early: AtomicBool::new(false),
            source,
            metrics,
        }
    }

    /// The credential's name.
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// The names this credential resolves (the config's, for this credential).
    pub fn wanted(&self) -> Arc<Vec<Arc<str>>> {
        self.wanted.load_full()
    }

    /// What `name` resolves to now, without waiting.
    pub fn resolve(&self, name: &str) -> Resolution {
        let error = || self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.listing.load().as_deref() {
            Some(l) if l.fetched.elapsed() < TTL => match l.by_name.get(name).map(Vec::as_slice) {
                None | Some([]) => Resolution::NotFound,
                Some([uid]) => Resolution::Uid(uid.clone()),
                Some(many) => Resolution::Ambiguous(many.len()),
            },
            Some(_) => Resolution::Failed(error().unwrap_or_else(|| "the listing expired before its refresh".into())),
            None => error().map_or(Resolution::Pending, Resolution::Failed),
        }
    }

    /// Waits (at most `within`) for the first lookup to finish, when none has yet.
    pub async fn first_lookup(&self, within: Duration) {
        let mut seen = self.attempts.subscribe();
        if *seen.borrow_and_update() == 0 {
            let _ = tokio::time::timeout(within, seen.changed()).await;
        }
    }

    /// A request needed a name the listing does not have: look again soon (paced by
    /// [`MISS_RETRY`]), in case the project was created since.
    pub fn missed(&self) {
        self.ask_early();
    }

    fn ask_early(&self) {
        self.early.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The background task: looks up at once, then refreshes every [`REFRESH_AFTER`]; after a
    /// failure retries with a capped backoff; looks up early when woken (no sooner than
    /// [`MISS_RETRY`] after the last attempt, never while backing off). Ends when `cancel`
    /// fires, even mid-call.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            self.early.store(false, Ordering::Release);
            let before: Vec<Resolution> = self.wanted().iter().map(|n| self.resolve(n)).collect();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.fetch() => r,
            };
            match result {
                Ok(listing) => {
                    failures = 0;
                    self.listing.store(Some(Arc::new(listing)));
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::debug!(credential = %self.credential, "project names looked up");
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(credential = %self.credential, error = %e, "project name lookup failed");
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            }
            self.attempts.send_modify(|n| *n += 1);
            self.publish();
            // Said once per change, not after every lookup a flood of misses asks for.
            for (i, name) in self.wanted().iter().enumerate() {
                let r = self.resolve(name);
                if r.uid().is_none() && before.get(i) != Some(&r) {
                    tracing::warn!(credential = %self.credential, project = %name, reason = %r.reason(), "project name does not resolve");
                }
            }
            let next = if failures == 0 { started + REFRESH_AFTER } else { started + backoff(failures) };
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(next) => break,
                    () = self.wake.notified(), if failures == 0 => {
                        if !self.early.load(Ordering::Acquire) {
                            continue;
                        }
                        let early = started + MISS_RETRY;
                        if early < next {
                            tokio::select! {
                                () = cancel.cancelled() => return,
                                () = tokio::time::sleep_until(early) => {}
                            }
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Sets `palette_gateway_project_names_unresolved` for every wanted name.
    fn publish(&self) {
        for name in self.wanted().iter() {
            let unresolved = i64::from(self.resolve(name).uid().is_none());
            self.metrics.project_names_unresolved.with_label_values(&[&self.credential, name]).set(unresolved);
        }
    }

    /// Drops the gauge series of `names` (no longer in the config).
    fn forget(&self, names: &[Arc<str>]) {
        for name in names {
            let _ = self.metrics.project_names_unresolved.remove_label_values(&[&self.credential, name]);
        }
    }

    /// One lookup, from wherever this one gets them.
    async fn fetch(&self) -> Result<Listing, LookupError> {
        let by_name = match &self.source {
            Source::Palette(io) => fetch_from(&io.load_full()).await?,
            #[cfg(test)]
            Source::Test(fetch) => fetch().await?,
        };
        Ok(Listing { by_name, fetched: Instant::now() })
    }
}

/// One lookup from Palette: budget, credential, `GET` [`METADATA_PATH`], all within the
/// upstream's request timeout.
async fn fetch_from(io: &Io) -> Result<HashMap<String, Vec<HeaderValue>>, LookupError> {
    {
        let total = io.client.request_timeout();
        let call = async {
            if let Some(bucket) = &io.bucket {
                bucket
                    .acquire(GATEWAY_ITSELF, total)
                    .await
                    .map_err(|_| LookupError::Upstream(format!("the budget for {METADATA_PATH} has no room")))?;
            }
            let (name, value, token) = match &io.credential {
                UpstreamCredential::ApiKey { header, .. } => (crate::auth::API_KEY.clone(), header.clone(), None),
                UpstreamCredential::Token(m) => {
                    let t = m.get(total).await.map_err(|e| LookupError::Upstream(e.to_string()))?;
                    (header::AUTHORIZATION, t.header.clone(), Some((m.clone(), t)))
                }
            };
            let uri = io.client.uri(METADATA_PATH).map_err(|e| LookupError::Upstream(e.to_string()))?;
            let req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header(name, value)
                .header(header::ACCEPT, "application/json")
                .body(body::empty())
                .map_err(|e| LookupError::Upstream(e.to_string()))?;
            let resp = io.client.send(req).await.map_err(|e| LookupError::Upstream(e.to_string()))?;
            let status = resp.status();
            let bytes: Bytes = body::collect_limited(resp.into_body(), MAX_BODY)
                .await
                .map_err(|e| LookupError::Upstream(format!("reading the answer: {e}")))?;
            if status == StatusCode::UNAUTHORIZED {
                if let Some((manager, token)) = token {
                    manager.replace_soon(&token);
                }
            }
            Ok::<_, LookupError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(total, call).await.map_err(|_| LookupError::Timeout(total))??;
        if status != StatusCode::OK {
            return Err(LookupError::Refused(status, error_code(&bytes)));
        }
        parse_listing(&bytes)
    }
}

/// Palette's error `code`, cut to a bounded plain word (its message could echo what we sent).
fn error_code(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let code = v.get("code")?.as_str()?;
    Some(code.chars().filter(char::is_ascii_alphanumeric).take(64).collect())
}

/// `{"items": [{"metadata": {"name", "uid"}}]}` → name → uids. An item without a name or with
/// a uid that could not be sent as a header is skipped (it can never be the answer).
fn parse_listing(bytes: &[u8]) -> Result<HashMap<String, Vec<HeaderValue>>, LookupError> {
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        metadata: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        name: Option<String>,
        uid: Option<String>,
    }
    let list: List = serde_json::from_slice(bytes).map_err(|_| LookupError::BadAnswer)?;
    let mut by_name: HashMap<String, Vec<HeaderValue>> = HashMap::new();
    for meta in list.items.into_iter().filter_map(|i| i.metadata) {
        let (Some(name), Some(uid)) = (meta.name, meta.uid) else { continue };
        let usable = (1..=128).contains(&uid.len())
            && uid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        let Some(uid) = usable.then(|| HeaderValue::from_str(&uid).ok()).flatten() else { continue };
        let uids = by_name.entry(name).or_default();
        // The same project listed twice is still one project.
        if !uids.contains(&uid) {
            uids.push(uid);
        }
    }
    Ok(by_name)
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

/// Every credential's [`Lookup`], indexed like [`Config::credentials`]; `None` for a credential
/// no name needs (it never calls the lookup).
#[derive(Debug, Default)]
pub struct ProjectNames {
    by_credential: Vec<Option<Arc<Lookup>>>,
}

impl ProjectNames {
    /// The lookups `config` needs. With `previous` (a reload) a credential's lookup carries
    /// over, listing and all, when the credential is unchanged and `same_upstream`; a name its
    /// listing lacks gets an early lookup. The gauges of names no lookup keeps are dropped.
    pub(crate) fn build(
        config: &Config,
        credentials: &Credentials,
        client: &UpstreamClient,
        budget: &UpstreamBudget,
        previous: Option<&ProjectNames>,
        same_upstream: bool,
        metrics: &Metrics,
    ) -> Self {
        let bucket = crate::path::check(METADATA_PATH).ok().and_then(|p| budget.bucket_for(&p).cloned());
        let wanted = wanted_names(config);
        let mut by_credential = Vec::with_capacity(config.credentials.len());
        let mut kept: Vec<Arc<Lookup>> = Vec::new();
        for (i, names) in wanted.into_iter().enumerate() {
            let (Some(c), Some(cred)) = (config.credentials.get(i), credentials.get(i)) else {
                by_credential.push(None);
                continue;
            };
            if names.is_empty() {
                by_credential.push(None);
                continue;
            }
            let io = Io { client: client.clone(), credential: cred.clone(), bucket: bucket.clone() };
            let reused = previous
                .filter(|_| same_upstream)
                .and_then(|p| p.lookups().find(|l| *l.credential == *c.name && l.kind == c.kind).cloned());
            let lookup = match reused {
                Some(l) => {
                    // Irrefutable outside tests, where `Source` has one variant.
                    #[allow(irrefutable_let_patterns)]
                    if let Source::Palette(current) = &l.source {
                        current.store(Arc::new(io));
                    }
                    let old = l.wanted();
                    let gone: Vec<Arc<str>> = old.iter().filter(|n| !names.contains(n)).cloned().collect();
                    l.forget(&gone);
                    // A new name the last listing does not resolve: look it up soon (the
                    // listing holds every project, so a name it has needs no call).
                    if names.iter().any(|n| !old.contains(n) && l.resolve(n).uid().is_none()) {
                        l.ask_early();
                    }
                    l
                }
                None => Arc::new(Lookup::new(
                    &c.name,
                    c.kind.clone(),
                    Source::Palette(ArcSwap::from_pointee(io)),
                    metrics.clone(),
                )),
            };
            lookup.wanted.store(Arc::new(names));
            lookup.publish();
            kept.push(lookup.clone());
            by_credential.push(Some(lookup));
        }
        for old in previous.into_iter().flat_map(ProjectNames::lookups) {
            if !kept.iter().any(|k| Arc::ptr_eq(k, old)) {
                // A replacement of the same credential publishes its own series again.
                let replaced: Vec<Arc<str>> = kept
                    .iter()
                    .filter(|k| k.credential == old.credential)
                    .flat_map(|k| k.wanted().iter().cloned().collect::<Vec<_>>())
                    .collect();
                let gone: Vec<Arc<str>> = old.wanted().iter().filter(|n| !replaced.contains(n)).cloned().collect();
                old.forget(&gone);
            }
        }
        ProjectNames { by_credential }
    }

    /// The lookup of the credential at `index`, if names need it.
    pub fn for_credential(&self, index: usize) -> Option<&Arc<Lookup>> {
        self.by_credential.get(index).and_then(Option::as_ref)
    }

    /// Every lookup.
    pub fn lookups(&self) -> impl Iterator<Item = &Arc<Lookup>> {
        self.by_credential.iter().flatten()
    }

    /// Every configured name that has no uid now: (credential, name, why).
    pub fn unresolved(&self) -> Vec<(Arc<str>, Arc<str>, String)> {
        self.lookups()
            .flat_map(|l| {
                l.wanted()
                    .iter()
                    .filter_map(|n| {
                        let r = l.resolve(n);
                        r.uid().is_none().then(|| (l.credential.clone(), n.clone(), r.reason()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The names each credential resolves: its clients' `projects` names, and the `project` of
/// every route one of its clients may take.
fn wanted_names(config: &Config) -> Vec<Vec<Arc<str>>> {
    let mut wanted: Vec<Vec<Arc<str>>> = vec![Vec::new(); config.credentials.len()];
    let mut add = |credential: usize, name: &Arc<str>| {
        if let Some(list) = wanted.get_mut(credential) {
            if !list.contains(name) {
                list.push(name.clone());
            }
        }
    };
    for (i, client) in config.clients.iter().enumerate() {
        for name in &client.project_names {
            add(client.credential, name);
        }
        for route in &config.routes {
            let takes = route.clients.as_ref().map_or(true, |cs| cs.contains(&ClientId(i)));
            if let (Some(name), true) = (&route.project_name, takes) {
                add(client.credential, name);
            }
        }
    }
    wanted
}

/// What `check` says about project names: it cannot reach Palette, so it cannot tell whether
/// they exist. `None` when the config names no project.
pub fn check_note(config: &Config) -> Option<String> {
    let mut named: Vec<String> = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(n) = &r.project_name {
            named.push(format!("routes[{i}].project {n:?}"));
        }
    }
    for (i, c) in config.clients.iter().enumerate() {
        for n in &c.project_names {
            named.push(format!("clients[{i}].projects {n:?}"));
        }
    }
    if named.is_empty() {
        return None;
    }
    Some(format!(
        "note: project names are resolved against Palette when the gateway runs; check cannot reach Palette, so it \
         cannot tell whether these exist: {}. A projects entry of 24 lowercase hex digits is read as a uid, so a \
         project whose name has that form cannot be named (use its uid).",
        named.join(", ")
    ))
}

#[cfg(test)]
mod tests;
