//! The runtime snapshot: everything a request needs (config, credentials, upstream client,
//! limits, budget), built in one place for start-up and reload alike and swapped whole.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth;
use crate::cache::ResponseCache;
use crate::config::Config;
use crate::credentials::{Credentials, InvalidKey};
use crate::kubernetes::Kubernetes;
use crate::limit::upstream::UpstreamBudget;
use crate::limit::ClientLimits;
use crate::metrics::Metrics;
use crate::projects::ProjectNames;
use crate::upstream::UpstreamClient;

/// Everything a request needs, swapped whole on reload.
pub struct Runtime {
    /// The validated config.
    pub config: Arc<Config>,
    /// Upstream credentials, indexed like the config's.
    pub(crate) credentials: Credentials,
    /// The pooled upstream client.
    pub(crate) upstream: UpstreamClient,
    /// Client and global rate limits.
    pub(crate) limits: ClientLimits,
    /// The outbound budget per Palette prefix.
    pub(crate) budget: UpstreamBudget,
    /// Local keys already matched to a client (this snapshot's clients only).
    pub(crate) key_cache: auth::KeyCache,
    /// Project names resolved per credential (process-lifetime: carried across reloads).
    pub(crate) projects: ProjectNames,
    /// `[auth.kubernetes]`: the ServiceAccount token checker (kept across reloads while the
    /// section is unchanged, so its cache and key set are too).
    pub(crate) kubernetes: Option<Arc<Kubernetes>>,
    /// The response cache (process-lifetime: kept across reloads while `[cache]` is unchanged).
    pub(crate) cache: Arc<ResponseCache>,
}

/// The live runtime, shared by the listeners and reload.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

impl Runtime {
    /// Builds the runtime for `config`. With `previous` (a reload), what did not change carries
    /// over: the upstream client (and with it the token managers whose settings are the same,
    /// token and all) when the upstream settings are unchanged, and the rate-limit state of
    /// unchanged clients and budget prefixes, and the project name lookups of unchanged
    /// credentials (see [`ProjectNames::build`]). The key cache always starts empty: it names
    /// this snapshot's clients.
    pub(crate) fn build(config: Config, previous: Option<&Runtime>, metrics: &Metrics) -> Result<Runtime, InvalidKey> {
        let same_upstream = previous.filter(|p| same_upstream(&config, &p.config));
        let upstream = match same_upstream {
            Some(p) => p.upstream.clone(),
            None => UpstreamClient::new(&config.upstream),
        };
        let limits = ClientLimits::build(&config, previous.map(|p| &p.limits));
        let budget = UpstreamBudget::build(&config.upstream.limits, previous.map(|p| &p.budget));
        let credentials = Credentials::build(
            &config,
            &upstream,
            same_upstream.map(|p| &p.credentials),
            metrics,
            budget.auth_bucket(),
        )?;
        let projects = ProjectNames::build(
            &config,
            &credentials,
            &upstream,
            &budget,
            previous.map(|p| &p.projects),
            same_upstream.is_some(),
            metrics,
        );
        let kubernetes = config
            .kubernetes
            .as_ref()
            .map(|k| Kubernetes::build(k, previous.and_then(|p| p.kubernetes.as_ref()), metrics));
        let cache = ResponseCache::build(config.cache, previous.map(|p| &p.cache), metrics);
        Ok(Runtime {
            config: Arc::new(config),
            credentials,
            upstream,
            limits,
            budget,
            key_cache: Default::default(),
            projects,
            kubernetes,
            cache,
        })
    }
}

/// Whether two configs talk to the same upstream the same way (so its client, its pool and
/// the tokens it minted stay valid).
fn same_upstream(a: &Config, b: &Config) -> bool {
    let (a, b) = (&a.upstream, &b.upstream);
    a.scheme == b.scheme
        && a.authority == b.authority
        && a.extra_roots == b.extra_roots
        && a.connect_timeout == b.connect_timeout
        && a.request_timeout == b.request_timeout
}
