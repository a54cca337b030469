//! Step 8, scope, with project names: resolves the names the request involves (its route's
//! `project`, the client's `projects` names) with the client's credential, then lets
//! [`scope::decide_with`] decide. Names are read from the credential's last lookup, without
//! waiting; only a request refused for a name whose first lookup has not finished waits for
//! it, at most [`projects::FIRST_WAIT`], and is decided again. A refusal for a name counts in
//! `palette_gateway_project_name_refusals_total`, and a name not found asks for an early
//! lookup (paced), so a project created meanwhile is picked up.

use http::HeaderMap;

use crate::config::{Client, Route};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::projects::{self, Resolution};
use crate::runtime::Runtime;
use crate::scope::{self, Names, Scope};

/// The request's scope (see [`scope::decide_with`]), names resolved.
pub(crate) async fn decide(
    rt: &Runtime,
    metrics: &Metrics,
    client: &Client,
    route: Option<&Route>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Scope, GatewayError> {
    // A route's uid decides alone, and without names there is nothing to resolve: the common
    // case costs nothing.
    let route_uid = route.is_some_and(|r| r.project_uid.is_some());
    let route_name = route.filter(|r| r.project_uid.is_none()).and_then(|r| r.project_name.as_ref());
    if route_uid || (route_name.is_none() && client.project_names.is_empty()) {
        return scope::decide(client, route, headers, query);
    }
    let lookup = rt.projects.for_credential(client.credential);
    let resolve = |name: &str| lookup.map_or(Resolution::Pending, |l| l.resolve(name));
    let view = || Names {
        route: route_name.map(|n| resolve(n)),
        client: client.project_names.iter().map(|n| (n.clone(), resolve(n))).collect(),
    };
    let mut names = view();
    let mut result = scope::decide_with(client, route, &names, headers, query);
    // Only a request whose answer hangs on a name not looked up yet waits, and only for the
    // credential's first lookup (bounded); the decision is pure, so it is simply taken again.
    let pending = names.route.iter().chain(names.client.iter().map(|(_, r)| r)).any(|r| *r == Resolution::Pending);
    let refused_for_a_name = matches!(result, Err(GatewayError::ProjectNameUnresolved { .. }));
    if let (true, true, Some(l)) = (refused_for_a_name, pending, lookup) {
        l.first_lookup(projects::FIRST_WAIT).await;
        names = view();
        result = scope::decide_with(client, route, &names, headers, query);
    }
    if let Err(GatewayError::ProjectNameUnresolved { .. }) = &result {
        // The route's name when the route decides, else the client's names that did not resolve.
        let culprits: Vec<(&str, &Resolution)> = match (route_name, &names.route) {
            (Some(n), Some(r)) => vec![(&**n, r)],
            _ => names.client.iter().filter(|(_, r)| r.uid().is_none()).map(|(n, r)| (&**n, r)).collect(),
        };
        let mut missed = false;
        for (name, r) in culprits {
            metrics.project_name_refusals.with_label_values(&[name]).inc();
            missed |= *r == Resolution::NotFound;
        }
        if let (true, Some(l)) = (missed, lookup) {
            l.missed();
        }
    }
    result
}
