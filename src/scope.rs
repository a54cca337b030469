//! Project scope: the `ProjectUid` a request carries upstream. A route's project replaces
//! whatever the client sent (header in any case, or `?ProjectUid=` in any case or encoding);
//! without one, the client's own request passes only for a project it is allowed.

use std::borrow::Cow;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use percent_encoding::percent_decode_str;

use crate::config::{Client, Route};
use crate::error::GatewayError;

/// `ProjectUid` (header names are case-insensitive; `ProjectUID` is the same header).
pub const PROJECT_UID: &str = "projectuid";
static PROJECT_UID_HEADER: HeaderName = HeaderName::from_static(PROJECT_UID);

/// The scope decided for a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Scope {
    /// The project, when the request is project-scoped.
    pub project: Option<HeaderValue>,
    /// The query to forward (route-scoped requests lose any `ProjectUid` parameter).
    pub query: Option<String>,
}

/// Decides the scope and rewrites `headers` to carry exactly it.
pub fn apply(
    client: &Client,
    route: Option<&Route>,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Result<Scope, GatewayError> {
    if let Some(project) = route.and_then(|r| r.project_uid.clone()) {
        headers.remove(&PROJECT_UID_HEADER);
        headers.insert(PROJECT_UID_HEADER.clone(), project.clone());
        let query = query.map(strip_project_params).filter(|q| !q.is_empty());
        return Ok(Scope { project: Some(project), query });
    }
    let mut asked: Option<String> = None;
    let mut note = |value: &str| -> Result<(), GatewayError> {
        if value.is_empty() {
            return Err(GatewayError::BadRequest("ProjectUid is empty".into()));
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
    if let Some(q) = query {
        for (name, value) in pairs(q) {
            if name.eq_ignore_ascii_case(PROJECT_UID) {
                note(&value)?;
            }
        }
    }
    let project = match asked {
        None => None,
        Some(uid) if client.projects.allows(&uid) => Some(
            HeaderValue::from_str(&uid)
                .map_err(|_| GatewayError::BadRequest("ProjectUid is not a valid header value".into()))?,
        ),
        Some(uid) => return Err(GatewayError::ProjectForbidden { client: client.name.to_string(), project: uid }),
    };
    if let Some(p) = &project {
        // One spelling, one value: what was checked is what Palette sees.
        headers.remove(&PROJECT_UID_HEADER);
        headers.insert(PROJECT_UID_HEADER.clone(), p.clone());
    }
    Ok(Scope { project, query: query.map(str::to_string) })
}

/// Decoded `name=value` pairs the way Go's `url.ParseQuery` reads them (`+` is a space).
fn pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
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

fn strip_project_params(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !decode(name).eq_ignore_ascii_case(PROJECT_UID)
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
        Client { name: Arc::from("ci"), credential: 0, projects, allow: None, rate_limit: None }
    }

    fn route(project: &str) -> Route {
        Route {
            name: Arc::from("r"),
            path_prefix: "/x".into(),
            strip_prefix: false,
            project_uid: Some(HeaderValue::from_str(project).unwrap()),
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
        let mut h = headers(&[("ProjectUID", "evil"), ("projectuid", "evil2")]);
        let s = apply(
            &client(Projects::Only(vec![])),
            Some(&route("p001")),
            &mut h,
            Some("a=1&projectUid=evil&Project%55id=e&b=2"),
        )
        .unwrap();
        assert_eq!(s.project.unwrap(), "p001");
        assert_eq!(s.query.as_deref(), Some("a=1&b=2"));
        assert_eq!(h.get_all(PROJECT_UID).iter().collect::<Vec<_>>(), vec!["p001"]);
    }

    #[test]
    fn client_project_must_be_listed() {
        let c = client(Projects::Only(vec!["p1".into()]));
        let mut h = headers(&[("ProjectUid", "p1")]);
        assert_eq!(apply(&c, None, &mut h, None).unwrap().project.unwrap(), "p1");
        let mut h = headers(&[("projectuid", "p2")]);
        assert!(matches!(apply(&c, None, &mut h, None), Err(GatewayError::ProjectForbidden { .. })));
        let mut h = HeaderMap::new();
        assert!(matches!(apply(&c, None, &mut h, Some("PROJECTUID=p2")), Err(GatewayError::ProjectForbidden { .. })));
        assert!(matches!(apply(&c, None, &mut h, Some("Project%55id=p2")), Err(GatewayError::ProjectForbidden { .. })));
        assert!(apply(&c, None, &mut HeaderMap::new(), Some("ProjectUid=p1")).is_ok());
    }

    #[test]
    fn conflicting_or_empty_values_are_bad_requests() {
        let c = client(Projects::Any);
        let mut h = headers(&[("ProjectUid", "p1")]);
        assert!(matches!(apply(&c, None, &mut h, Some("projectuid=p2")), Err(GatewayError::BadRequest(_))));
        let mut h = headers(&[("ProjectUid", "p1"), ("ProjectUID", "p2")]);
        assert!(matches!(apply(&c, None, &mut h, None), Err(GatewayError::BadRequest(_))));
        let mut h = headers(&[("ProjectUid", "")]);
        assert!(matches!(apply(&c, None, &mut h, None), Err(GatewayError::BadRequest(_))));
    }

    #[test]
    fn no_project_means_tenant_scope() {
        let c = client(Projects::Only(vec![]));
        let s = apply(&c, None, &mut HeaderMap::new(), Some("limit=5")).unwrap();
        assert_eq!(s, Scope { project: None, query: Some("limit=5".into()) });
    }

    #[test]
    fn any_project_with_star() {
        let mut h = headers(&[("ProjectUid", "whatever")]);
        assert!(apply(&client(Projects::Any), None, &mut h, None).is_ok());
    }
}
