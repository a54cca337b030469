//! Project scope: the `ProjectUid` a request carries upstream. A route's project replaces
//! whatever the client sent (header in any case, or `?ProjectUid=` in any case or encoding);
//! without one, the client's own request passes only for a project it is allowed. The header
//! itself is set by `forward::request_headers`, after every removal, so nothing the client
//! sends can take the decided project away.
//!
//! Project names (a route's `project`, a client's `projects` names) come resolved, in
//! [`Names`]; a name without a uid matches nothing (fail closed): a route's unresolved name
//! refuses the request, naming the project, and a client's never allows a `ProjectUid`.

use std::borrow::Cow;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use percent_encoding::percent_decode_str;

use crate::config::{Client, Route};
use crate::error::{GatewayError, UnresolvedProject};
use crate::projects::Resolution;

/// `ProjectUid` (header names are case-insensitive; `ProjectUID` is the same header).
pub const PROJECT_UID: &str = "projectuid";
pub(crate) static PROJECT_UID_HEADER: HeaderName = HeaderName::from_static(PROJECT_UID);

/// The scope decided for a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Scope {
    /// The project, when the request is project-scoped.
    pub project: Option<HeaderValue>,
    /// The query to forward (route-scoped requests lose any `ProjectUid` parameter).
    pub query: Option<String>,
}

/// What the project names a request involves resolved to, for the requesting client's
/// credential: the route's `project` and the client's `projects` names. A name left out (or
/// the whole view left empty) resolves to nothing.
#[derive(Debug, Default)]
pub struct Names {
    /// The route's `project` name's resolution.
    pub route: Option<Resolution>,
    /// Each of the client's `projects` names with its resolution.
    pub client: Vec<(std::sync::Arc<str>, Resolution)>,
}

/// [`decide_with`] with no name resolved: a route's `project` name refuses the request and a
/// client's names allow nothing.
pub fn decide(
    client: &Client,
    route: Option<&Route>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Scope, GatewayError> {
    decide_with(client, route, &Names::default(), headers, query)
}

/// Decides the scope from the client's request, before any header is removed: a client cannot
/// hide its `ProjectUid` from this check (by naming it in `Connection`, say). The headers are
/// not changed here; [`crate::proxy::hygiene::request_headers`] removes every client `ProjectUid` and
/// sets [`Scope::project`] after all removals.
///
/// An empty value (`ProjectUID: ""`, which Palette's TypeScript SDK sends when no project is
/// set, or `?ProjectUid=`) asks for no project: alone it means tenant scope, and beside a
/// non-empty value it is ignored, so the non-empty one is checked as if it were alone.
///
/// A route's `project` name sets its resolved uid (or refuses the request, naming the project);
/// a client's `ProjectUid` passes when it is one of the client's uids or the uid one of its
/// names resolved to.
pub fn decide_with(
    client: &Client,
    route: Option<&Route>,
    names: &Names,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Scope, GatewayError> {
    if let Some(project) = route.and_then(|r| r.project_uid.clone()) {
        let query = query.map(strip_project_params).filter(|q| !q.is_empty());
        return Ok(Scope { project: Some(project), query });
    }
    if let Some((route, name)) = route.and_then(|r| r.project_name.as_ref().map(|n| (r, n))) {
        let resolution = names.route.clone().unwrap_or(Resolution::Pending);
        let Resolution::Uid(project) = resolution else {
            return Err(route_unresolved(client, &route.name, name, &resolution));
        };
        let query = query.map(strip_project_params).filter(|q| !q.is_empty());
        return Ok(Scope { project: Some(project), query });
    }
    let mut asked: Option<String> = None;
    let mut note = |value: &str| -> Result<(), GatewayError> {
        if value.is_empty() {
            return Ok(());
        }
        match &asked {
            Some(prev) if prev != value => {
                Err(GatewayError::BadRequest("conflicting ProjectUid values in the request".into()))
            }
            Some(_) => Ok(()),
            None => {
                asked = Some(value.to_string());
                Ok(())
            }
        }
    };
    for v in headers.get_all(&PROJECT_UID_HEADER) {
        let text = v.to_str().map_err(|_| GatewayError::BadRequest("ProjectUid header is not valid text".into()))?;
        note(text.trim())?;
    }
    let mut empty_param = false;
    if let Some(q) = query {
        for (name, value) in pairs(q) {
            if name.eq_ignore_ascii_case(PROJECT_UID) {
                empty_param |= value.is_empty();
                note(&value)?;
            }
        }
    }
    let project = match asked {
        None => None,
        Some(uid)
            if client.projects.allows(&uid)
                || names.client.iter().any(|(_, r)| r.uid().is_some_and(|v| v == uid.as_str())) =>
        {
            Some(
                HeaderValue::from_str(&uid)
                    .map_err(|_| GatewayError::BadRequest("ProjectUid is not a valid header value".into()))?,
            )
        }
        Some(uid) => return Err(client_forbidden(client, names, uid)),
    };
    // An empty `ProjectUid=` is dropped: Palette sees the decided scope and nothing that could
    // read as another (the non-empty parameters, if any, all name the checked project).
    let query = match query {
        Some(q) if empty_param => Some(strip_empty_project_params(q)).filter(|q| !q.is_empty()),
        other => other.map(str::to_string),
    };
    Ok(Scope { project, query })
}

/// A route's `project` name without a uid: 404 when Palette has no such project, 403 when
/// several share the name, 503 while the lookup is pending or failing.
fn route_unresolved(client: &Client, route: &str, name: &str, r: &Resolution) -> GatewayError {
    let kind = match r {
        Resolution::NotFound => UnresolvedProject::NotFound,
        Resolution::Ambiguous(_) => UnresolvedProject::Ambiguous,
        Resolution::Uid(_) | Resolution::Pending | Resolution::Failed(_) => UnresolvedProject::Unavailable,
    };
    GatewayError::ProjectNameUnresolved {
        message: format!(
            "route {route} sets project {name:?}, which does not resolve for client {}: {}",
            client.name,
            r.reason()
        ),
        kind,
    }
}

/// A `ProjectUid` outside the client's projects; when some of its names did not resolve, the
/// answer names them (they may be why).
fn client_forbidden(client: &Client, names: &Names, uid: String) -> GatewayError {
    let unresolved: Vec<String> = client
        .project_names
        .iter()
        .filter_map(|n| {
            let r = names.client.iter().find(|(m, _)| m == n).map_or(Resolution::Pending, |(_, r)| r.clone());
            r.uid().is_none().then(|| format!("{n:?} ({})", r.reason()))
        })
        .collect();
    if unresolved.is_empty() {
        return GatewayError::ProjectForbidden { client: client.name.to_string(), project: uid };
    }
    GatewayError::ProjectNameUnresolved {
        message: format!(
            "client {} may not use project {uid}; these of its project names do not resolve: {}",
            client.name,
            unresolved.join(", ")
        ),
        kind: UnresolvedProject::NotAllowed,
    }
}

/// Decoded `name=value` pairs the way Go's `url.ParseQuery` reads them (`+` is a space), and
/// also split at `;`, which Go before 1.17 (and other routers) read as a separator: the check
/// sees `a=1;ProjectUid=p9` as naming a project, however Palette's server splits it.
fn pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split(['&', ';']).filter(|p| !p.is_empty()).map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(n), decode(v))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if s.contains('+') {
        Cow::Owned(percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(s).decode_utf8_lossy()
    }
}

fn strip_empty_project_params(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            !(decode(name).eq_ignore_ascii_case(PROJECT_UID) && decode(value).is_empty())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Drops every `&`-pair that names `ProjectUid`, also after a `;` (`a=1;ProjectUid=p9` goes
/// whole: a server that splits at `;` would read a project from it).
fn strip_project_params(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            !pair.split(';').any(|piece| {
                let name = piece.split_once('=').map_or(piece, |(n, _)| n);
                decode(name).eq_ignore_ascii_case(PROJECT_UID)
            })
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Projects;
    use std::sync::Arc;

    fn client(projects: Projects) -> Client {
        Client {
            name: Arc::from("ci"),
            credential: 0,
            projects,
            project_names: Vec::new(),
            allow: None,
            allow_credential_endpoints: Vec::new(),
            rate_limit: None,
        }
    }

    fn route(project: &str) -> Route {
        Route {
            name: Arc::from("r"),
            path_prefix: "/x".into(),
            strip_prefix: false,
            project_uid: Some(HeaderValue::from_str(project).unwrap()),
            project_name: None,
            methods: None,
            clients: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn route_project_replaces_header_and_query() {
        let h = headers(&[("ProjectUID", "evil"), ("projectuid", "evil2")]);
        let s = decide(
            &client(Projects::Only(vec![])),
            Some(&route("5ca1ab1e0000000000000001")),
            &h,
            Some("a=1&projectUid=evil&Project%55id=e&b=2"),
        )
        .unwrap();
        assert_eq!(s.project.unwrap(), "5ca1ab1e0000000000000001");
        assert_eq!(s.query.as_deref(), Some("a=1&b=2"));
    }

    #[test]
    fn a_project_after_a_semicolon_is_seen() {
        let c = client(Projects::Only(vec!["p1".into()]));
        let h = HeaderMap::new();
        let forbidden = |q| matches!(decide(&c, None, &h, Some(q)), Err(GatewayError::ProjectForbidden { .. }));
        assert!(forbidden("a=1;ProjectUid=p2"));
        assert!(forbidden("a=1;%50rojectUid=p2&b=2"));
        let conflict = decide(&c, None, &headers(&[("ProjectUid", "p1")]), Some("x;projectuid=p2"));
        assert!(matches!(conflict, Err(GatewayError::BadRequest(_))));
        let s = decide(&c, None, &h, Some("a=1;ProjectUid=p1")).unwrap();
        assert_eq!(s.project.unwrap(), "p1");
        // Under a route's project, a pair hiding one after ';' goes whole.
        let s = decide(&c, Some(&route("5ca1ab1e0000000000000001")), &h, Some("a=1;ProjectUid=evil&b=2")).unwrap();
        assert_eq!(s.query.as_deref(), Some("b=2"));
    }

    #[test]
    fn client_project_must_be_listed() {
        let c = client(Projects::Only(vec!["p1".into()]));
        let h = headers(&[("ProjectUid", "p1")]);
        assert_eq!(decide(&c, None, &h, None).unwrap().project.unwrap(), "p1");
        let h = headers(&[("projectuid", "p2")]);
        assert!(matches!(decide(&c, None, &h, None), Err(GatewayError::ProjectForbidden { .. })));
        let h = HeaderMap::new();
        assert!(matches!(decide(&c, None, &h, Some("PROJECTUID=p2")), Err(GatewayError::ProjectForbidden { .. })));
        assert!(matches!(decide(&c, None, &h, Some("Project%55id=p2")), Err(GatewayError::ProjectForbidden { .. })));
        assert!(decide(&c, None, &h, Some("ProjectUid=p1")).is_ok());
    }

    #[test]
    fn the_check_sees_a_project_the_client_names_in_connection() {
        // `Connection: ProjectUid` is for the removal step; the project is checked all the same.
        let c = client(Projects::Only(vec!["p1".into()]));
        let h = headers(&[("connection", "keep-alive, ProjectUid"), ("ProjectUid", "p2")]);
        assert!(matches!(decide(&c, None, &h, None), Err(GatewayError::ProjectForbidden { .. })));
    }

    #[test]
    fn conflicting_values_are_bad_requests() {
        let c = client(Projects::Any);
        let h = headers(&[("ProjectUid", "p1")]);
        assert!(matches!(decide(&c, None, &h, Some("projectuid=p2")), Err(GatewayError::BadRequest(_))));
        let h = headers(&[("ProjectUid", "p1"), ("ProjectUID", "p2")]);
        assert!(matches!(decide(&c, None, &h, None), Err(GatewayError::BadRequest(_))));
    }

    #[test]
    fn empty_values_ask_for_no_project() {
        // Palette's TypeScript SDK sends `ProjectUID: ""` when no project is set.
        let c = client(Projects::Only(vec!["p1".into()]));
        for (h, q) in [
            (headers(&[("ProjectUID", "")]), None),
            (headers(&[("ProjectUid", "  ")]), None),
            (HeaderMap::new(), Some("ProjectUid=")),
            (headers(&[("ProjectUID", "")]), Some("ProjectUid=&projectuid")),
        ] {
            let s = decide(&c, None, &h, q).unwrap();
            assert_eq!(s, Scope { project: None, query: None }, "{h:?} {q:?}");
        }
        let s = decide(&c, None, &HeaderMap::new(), Some("limit=5&ProjectUid=&offset=2")).unwrap();
        assert_eq!(s, Scope { project: None, query: Some("limit=5&offset=2".into()) });
    }

    #[test]
    fn an_empty_value_beside_another_changes_nothing() {
        let c = client(Projects::Only(vec!["p1".into()]));
        let forbidden = |h: &HeaderMap, q| matches!(decide(&c, None, h, q), Err(GatewayError::ProjectForbidden { .. }));
        assert!(forbidden(&headers(&[("ProjectUID", "")]), Some("ProjectUid=p2")));
        assert!(forbidden(&headers(&[("ProjectUID", ""), ("projectuid", "p2")]), None));
        assert!(forbidden(&headers(&[("ProjectUID", "p2")]), Some("ProjectUid=")));
        let s =
            decide(&c, None, &headers(&[("ProjectUID", ""), ("ProjectUid", "p1")]), Some("ProjectUid=&a=1")).unwrap();
        assert_eq!(s, Scope { project: Some(HeaderValue::from_static("p1")), query: Some("a=1".into()) });
        let s = decide(&c, None, &HeaderMap::new(), Some("ProjectUid=&ProjectUid=p1")).unwrap();
        assert_eq!(s, Scope { project: Some(HeaderValue::from_static("p1")), query: Some("ProjectUid=p1".into()) });
    }

    #[test]
    fn no_project_means_tenant_scope() {
        let c = client(Projects::Only(vec![]));
        let s = decide(&c, None, &HeaderMap::new(), Some("limit=5")).unwrap();
        assert_eq!(s, Scope { project: None, query: Some("limit=5".into()) });
    }

    #[test]
    fn any_project_with_star() {
        let h = headers(&[("ProjectUid", "whatever")]);
        assert!(decide(&client(Projects::Any), None, &h, None).is_ok());
    }

    const A: &str = "5ca1ab1e00000000000000a1";
    const B: &str = "5ca1ab1e00000000000000b2";

    fn named_route(name: &str) -> Route {
        Route { project_uid: None, project_name: Some(Arc::from(name)), ..route("unused") }
    }

    fn named_client(uids: &[&str], names: &[&str]) -> Client {
        let mut c = client(Projects::Only(uids.iter().map(|u| u.to_string()).collect()));
        c.project_names = names.iter().map(|n| Arc::from(*n)).collect();
        c
    }

    fn uid(v: &str) -> Resolution {
        Resolution::Uid(HeaderValue::from_str(v).unwrap())
    }

    fn status(e: &GatewayError) -> u16 {
        e.status_and_code().0.as_u16()
    }

    #[test]
    fn a_route_by_name_sets_the_resolved_uid_and_drops_the_clients_project() {
        let names = Names { route: Some(uid(A)), client: Vec::new() };
        let h = headers(&[("ProjectUid", B)]);
        let s =
            decide_with(&client(Projects::Any), Some(&named_route("Default")), &names, &h, Some("ProjectUid=x&a=1"))
                .unwrap();
        assert_eq!(s, Scope { project: Some(HeaderValue::from_static(A)), query: Some("a=1".into()) });
    }

    #[test]
    fn a_route_name_that_does_not_resolve_refuses_naming_the_project() {
        let c = client(Projects::Any);
        let r = named_route("team-x");
        let refuse = |res: Option<Resolution>| {
            decide_with(&c, Some(&r), &Names { route: res, client: Vec::new() }, &HeaderMap::new(), None).unwrap_err()
        };
        for (res, want) in [
            (Some(Resolution::NotFound), 404),
            (Some(Resolution::Ambiguous(2)), 403),
            (Some(Resolution::Pending), 503),
            (Some(Resolution::Failed("Palette answered 500".into())), 503),
            (None, 503),
        ] {
            let e = refuse(res.clone());
            assert_eq!(status(&e), want, "{res:?}");
            assert!(e.to_string().contains("\"team-x\"") && e.to_string().contains("route r"), "{e}");
        }
        // Without a resolution (the fuzz target's entry), a route's name never passes.
        assert!(decide(&c, Some(&r), &HeaderMap::new(), None).is_err());
    }

    #[test]
    fn a_client_may_use_its_uids_and_the_uids_its_names_resolve_to() {
        let c = named_client(&[B], &["Default", "team-b"]);
        let names = Names {
            route: None,
            client: vec![(Arc::from("Default"), uid(A)), (Arc::from("team-b"), Resolution::NotFound)],
        };
        let ask = |v: &str| decide_with(&c, None, &names, &headers(&[("ProjectUid", v)]), None);
        assert_eq!(ask(A).unwrap().project.unwrap(), A, "the uid of a listed name");
        assert_eq!(ask(B).unwrap().project.unwrap(), B, "a listed uid");
        // Another project, the names themselves, or a name's uid in another case: refused, and
        // the answer names the name that did not resolve.
        for other in ["5ca1ab1e00000000000000c3", "Default", "team-b", &A.to_uppercase()] {
            let e = ask(other).unwrap_err();
            assert_eq!(status(&e), 403, "{other}");
            assert!(e.to_string().contains("\"team-b\""), "{e}");
        }
    }

    #[test]
    fn a_clients_unresolved_or_ambiguous_names_allow_nothing() {
        let c = named_client(&[], &["Default"]);
        for res in [Resolution::Pending, Resolution::NotFound, Resolution::Ambiguous(2), Resolution::Failed("x".into())]
        {
            let names = Names { route: None, client: vec![(Arc::from("Default"), res.clone())] };
            for v in [A, B, "Default", ""] {
                let got = decide_with(&c, None, &names, &headers(&[("ProjectUid", v)]), None);
                match v {
                    "" => assert_eq!(got.unwrap().project, None, "tenant scope stays allowed"),
                    _ => assert!(got.is_err(), "{res:?} allowed {v}"),
                }
            }
        }
        // All names resolved and the uid is another: the plain refusal.
        let names = Names { route: None, client: vec![(Arc::from("Default"), uid(A))] };
        let e = decide_with(&c, None, &names, &headers(&[("ProjectUid", B)]), None).unwrap_err();
        assert!(matches!(e, GatewayError::ProjectForbidden { .. }), "{e:?}");
    }
}
