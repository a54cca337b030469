//! The decision steps after authentication and client limits: route, policy (`/v1/auth`,
//! credential endpoints, `allow`), scope (`ProjectUid`) and header hygiene, as one function.
//! The request path (`process`) and `palette-gateway explain` both call it, so what `explain`
//! prints is what a request gets: there is no second copy of the order or of a rule.

use http::{HeaderMap, HeaderValue, Method};

use crate::config::{ClientId, Config};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pattern::AllowRule;
use crate::proxy::auth::PresentedKey;
use crate::proxy::path::CheckedPath;
use crate::proxy::routes::{self, RouteMatch};
use crate::proxy::scope::{self, Scope};
use crate::proxy::{hygiene, policy, project_names, ConnInfo};
use crate::runtime::Runtime;

/// What the steps decided for a request that passes them.
#[derive(Debug)]
pub(crate) struct Decision<'a> {
    /// The `allow` rule that let the request through (`None`: the client has no `allow` list,
    /// so everything not refused for its own reason passes).
    pub(crate) rule: Option<&'a AllowRule>,
    /// The project scope and the query to forward.
    pub(crate) scope: Scope,
}

/// Route, policy, scope, hygiene. The route match comes back in any case (the log names the
/// route of a refused request too); on success `headers` are what goes upstream, before the
/// credential is added, without any header holding `local_key` (the key authentication read).
/// `live` resolves project names (the request path); without it
/// (`explain`, offline) a name resolves to nothing, and the future is ready at once.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn route<'a>(
    cfg: &'a Config,
    client_idx: ClientId,
    method: &Method,
    checked: &CheckedPath,
    query: Option<&str>,
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    local_key: Option<&PresentedKey>,
    live: Option<(&Runtime, &Metrics)>,
) -> (RouteMatch<'a>, Result<Decision<'a>, GatewayError>) {
    let client = cfg.client(client_idx);
    let matched = routes::select(cfg, client_idx, method, checked);
    let decided = async {
        let rule = policy::check(client, method, &matched.upstream_path).map_err(|e| after_strip(e, &matched))?;
        // Scope is decided on the headers as the client sent them (a `Connection: ProjectUid`
        // cannot hide a project from the check); every removal comes next, then every header
        // the gateway decides, so none can be taken away.
        let scope = match live {
            Some((rt, metrics)) => project_names::decide(rt, metrics, client, matched.route, headers, query).await?,
            None => scope::decide(client, matched.route, headers, query)?,
        };
        let decided = hygiene::Decided {
            forwarded_for: &conn.forwarded_for,
            tls: conn.tls,
            request_id,
            project: scope.project.as_ref(),
            local_key: local_key.map(PresentedKey::as_bytes),
        };
        hygiene::request_headers(headers, &decided);
        Ok(Decision { rule, scope })
    }
    .await;
    (matched, decided)
}

/// An `allow` refusal of a stripped request says so: the path it names is not the one the
/// client sent (issue 13's `GET /team-ops/**` beside a `strip_prefix` route for `/team-ops`).
fn after_strip(e: GatewayError, matched: &RouteMatch<'_>) -> GatewayError {
    match (e, matched.route) {
        (GatewayError::Forbidden { client, method, path }, Some(route)) if route.strip_prefix => {
            GatewayError::ForbiddenAfterStrip {
                client,
                method,
                path,
                route: route.name.to_string(),
                prefix: route.path_prefix.clone(),
            }
        }
        (e, _) => e,
    }
}
