//! The runtime snapshot: everything a request needs (config, credentials, upstream client,
//! limits, budget), built in one place for start-up and reload alike and swapped whole.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth;
use crate::cache::ResponseCache;
use crate::cluster::Cluster;
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
    /// The budget shared with other replicas through Redis (`[cluster]`).
    pub(crate) cluster: Option<Cluster>,
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
        // The same `[cluster]` keeps its handle (connection, state, heartbeat task).
        let cluster = config.cluster.as_ref().map(|c| match previous.and_then(|p| p.cluster.as_ref()) {
            Some(old) if old.config() == c => old.clone(),
            _ => Cluster::new(c, metrics),
        });
        budget.share_through(cluster.as_ref());
        let credentials = Credentials::build(
            &config,
            &upstream,
            same_upstream.map(|p| &p.credentials),
            metrics,
            budget.auth_bucket(),
        )?;
        let check_path = crate::path::check(crate::credentials::key_check::CHECK_PATH).ok();
        credentials.set_key_check_bucket(check_path.and_then(|p| budget.bucket_for(&p)));
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
            cluster,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    fn runtime(cluster: &str, previous: Option<&Runtime>) -> Runtime {
        let text =
            format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n{cluster}");
        let cfg = load_str(&text, Path::new("."), &MapEnv::new().with("K", "x")).unwrap();
        Runtime::build(cfg, previous, &Metrics::new()).unwrap()
    }

    /// A reload with the same `[cluster]` keeps its handle (its connection, state and heartbeat);
    /// a changed section gets a new one, a removed one none; the budget follows.
    #[tokio::test]
    async fn the_cluster_handle_is_carried_across_reloads() {
        let section = "[cluster]\nredis_url = \"redis://127.0.0.1:1\"\n";
        let first = runtime(section, None);
        let same = runtime(&format!("{section}[log]\nlevel = \"debug\"\n"), Some(&first));
        assert!(same.cluster.as_ref().unwrap().same(first.cluster.as_ref().unwrap()));
        let changed = runtime(&format!("{section}key_prefix = \"other\"\n"), Some(&same));
        assert!(!changed.cluster.as_ref().unwrap().same(same.cluster.as_ref().unwrap()));
        let login = |rt: &Runtime| rt.budget.auth_bucket().unwrap().cluster();
        assert!(login(&changed).is_some_and(|c| c.same(changed.cluster.as_ref().unwrap())));
        let removed = runtime("", Some(&changed));
        assert!(removed.cluster.is_none());
        assert!(login(&removed).is_none(), "the carried-over buckets no longer share");
    }
}
