//! Palette endpoints that mint, reveal, revoke or change credentials: refused to every client,
//! like `/v1/auth/**`, whatever its `allow` rules say, unless the operator opens one for a
//! client by naming it in that client's `allow_credential_endpoints`.
//!
//! Through such an endpoint a client could escape the gateway for good (mint itself a Palette
//! API key as the gateway's identity, read a cluster-admin kubeconfig) or lock the gateway's own
//! login out (revoke its tokens, change its password). The list is derived from Palette's spec
//! (`palette-api-spec.json`, 4.8): a unit test walks every spec path that looks like a
//! credential (`apiKey`, `password`, `token`, `kubeconfig`, `secret`, `cert`, `sso`, ...) and
//! checks each operation is either refused here or listed in [`REVIEWED_OPEN`] with the reason
//! it stays open.
//!
//! Matching is as broad as for `/v1/auth/**`, since this is a denylist and Palette's router may
//! read a path more loosely than the gateway: literal segments in any case, any API version in
//! place of `v1` (`/v1alpha1/apiKeys`), and with or without a trailing `/`. An opening, by
//! contrast, is an ordinary `allow` pattern, matched exactly: it opens the spelling it names.
//!
//! Reads of `/v1/apiKeys` and `/v1/apiKeys/{uid}` stay open: they answer `v1ApiKey`, whose only
//! key field, `spec.key`, the spec marks "Deprecated: API key field will be no longer
//! available"; Palette shows a key once, in the answer to the `POST` that mints it. Listing keys
//! (names, owners, expiry, state) is an ordinary audit read. A test keeps that reason checked
//! against the spec.

use http::Method;

use crate::proxy::path::CheckedPath;
use crate::proxy::pattern::AllowRule;

/// Which methods an entry refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// Every method.
    All,
    /// Every method but the reads (`GET` and `HEAD`).
    Writes,
    /// Only these (a `GET` includes `HEAD`).
    Only(&'static [&'static str]),
}

impl Methods {
    /// Whether `method` is one of these.
    pub fn covers(&self, method: &Method) -> bool {
        match self {
            Methods::All => true,
            Methods::Writes => !matches!(*method, Method::GET | Method::HEAD),
            Methods::Only(list) => {
                list.iter().any(|m| *m == method.as_str() || (*m == "GET" && *method == Method::HEAD))
            }
        }
    }
}

/// One refused endpoint: methods, a path pattern (`*` one segment, `**` the rest, the first
/// segment any API version), and why it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The methods refused.
    pub methods: Methods,
    /// The path pattern, spelled as in Palette's spec.
    pub path: &'static str,
    /// Why (said in the 403 and in the README).
    pub why: &'static str,
}

const fn entry(methods: Methods, path: &'static str, why: &'static str) -> Entry {
    Entry { methods, path, why }
}

use Methods::{All, Only, Writes};

/// The refused endpoints, one line each with why.
pub const ENTRIES: &[Entry] = &[
    // API keys: the gateway's own identity.
    entry(Only(&["POST"]), "/v1/apiKeys", "it mints a Palette API key of the gateway's user, and whoever holds one no longer needs the gateway"),
    entry(Only(&["PUT", "PATCH", "DELETE"]), "/v1/apiKeys/*", "it changes, deactivates or deletes an API key, the gateway's own included"),
    entry(Only(&["PUT"]), "/v1/apiKeys/*/state", "it revokes or re-activates an API key, the gateway's own included"),
    entry(Writes, "/v1/apiKeys/**", "it acts on API keys (only reads of /v1/apiKeys stay open)"),
    // Edge registration tokens: their reads answer the token itself (`spec.token`).
    entry(All, "/v1/edgehosts/tokens", "it lists edge registration tokens with their values, or mints one"),
    entry(All, "/v1/edgehosts/tokens/*", "it reads an edge registration token with its value, changes or deletes it"),
    entry(All, "/v1/edgehosts/tokens/*/state", "it revokes or re-activates an edge registration token"),
    entry(All, "/v1/edgehosts/tokens/**", "it acts on edge registration tokens"),
    entry(Only(&["PATCH"]), "/v1/edgehosts/*/hostPairingKey", "it replaces an edge host's pairing key"),
    // Sessions and passwords: the gateway's own login.
    entry(All, "/v1/users/auth/**", "it acts on Palette sessions (tokens/revoke revokes tokens, the gateway's own included)"),
    entry(All, "/v1/users/password/**", "it changes or resets the caller's password, which is the gateway's own login"),
    entry(All, "/v1/users/*/password/**", "it changes or resets a user's password, the gateway's login included"),
    entry(All, "/v1/system/admin/password/**", "it resets the system administrator's password"),
    entry(All, "/v1/system/admins/*/changePassword", "it changes a system administrator's password"),
    entry(All, "/v1/system/admins/*/passwordResetLink", "it mints a password-reset link for a system administrator"),
    entry(All, "/v1/system/admins/auth/**", "it sets a system administrator's password with a password token"),
    entry(All, "/v1/system/users/password/**", "it resets a system user's password"),
    // Logins: who controls the identity provider can log in as any user.
    entry(All, "/v1/tenants/*/oidc/config", "its reads answer the tenant's OIDC clientSecret and its writes point the tenant's login at another identity provider"),
    entry(Only(&["POST"]), "/v1/tenants/*/saml/config", "it points the tenant's SAML login at another identity provider"),
    entry(All, "/v1/system/config/sso", "its reads answer the system console's SSO client secrets and its writes replace its login"),
    // Private keys.
    entry(All, "/v1/tenants/*/assets/certs", "it lists or adds tenant certificates, whose answers carry the private key (spec.key)"),
    entry(All, "/v1/tenants/*/assets/certs/**", "it reads a tenant certificate with its private key (spec.key), replaces or deletes it"),
    entry(All, "/v1/system/config/domain/certificates", "it reads or replaces the system console's TLS certificate and private key (keyBase64)"),
    // Cluster credentials.
    entry(All, "/v1/spectroclusters/*/assets/adminTokenKubeconfig", "it hands out, replaces or deletes a cluster-admin token kubeconfig"),
    entry(Only(&["GET"]), "/v1/spectroclusters/*/assets/adminKubeconfig", "it hands out the cluster-admin kubeconfig (client certificate and key)"),
    entry(Only(&["PUT", "DELETE"]), "/v1/spectroclusters/*/assets/kubeconfig", "it replaces or deletes the kubeconfig Palette hands every user of the cluster"),
    entry(Only(&["PUT", "DELETE"]), "/v1/spectroclusters/*/assets/frpKubeconfig", "it replaces or deletes the proxied kubeconfig Palette hands every user of the cluster"),
    entry(Only(&["PUT", "DELETE"]), "/v1/spectroclusters/*/assets/kubeconfigclient", "it replaces or deletes the cluster's client kubeconfig"),
    // Cloud credentials.
    entry(Only(&["POST"]), "/v1/clouds/aws/account/secret/credentials", "it answers AWS credentials (\"Retrieves the Aws secret credentials\")"),
];

/// Spec operations whose path looks like a credential but which stay open, with why
/// (`METHOD path template` as in the spec; checked against it by a test).
pub const REVIEWED_OPEN: &[(&str, &str)] = &[
    ("GET /v1/apiKeys", "lists keys' names, owners, expiry and state; spec.key is deprecated and no longer filled"),
    ("GET /v1/apiKeys/{uid}", "the same v1ApiKey as the list"),
    ("DELETE /v1/edgehosts/{uid}/cluster/associate", "'associate' only looks like 'sso'"),
    ("PATCH /v1/edgehosts/{uid}/cluster/associate", "'associate' only looks like 'sso'"),
    ("GET /v1/spectroclusters/{uid}/assets/kubeconfig", "the kubeconfig Palette hands any user who may see the cluster; every tool downloads it (narrow allow to refuse it)"),
    ("GET /v1/spectroclusters/{uid}/assets/frpKubeconfig", "the proxied variant of the same user kubeconfig"),
    ("GET /v1/spectroclusters/{uid}/assets/kubeconfigclient", "the client kubeconfig an operator uploaded for an imported cluster"),
    ("GET /v1/spectroclusters/{uid}/k8certificates", "certificate expiry dates, no key"),
    ("PUT /v1/spectroclusters/{uid}/k8certificates", "certificate renewal settings, no key"),
    ("PATCH /v1/spectroclusters/{uid}/k8certificates/renew", "renews the cluster's own certificates; hands none out"),
    ("GET /v1/spectroclusters/{uid}/oidc", "the cluster's OIDC issuer settings, no secret"),
    ("GET /v1/spectroclusters/{uid}/oidc/dashboard/url", "a URL"),
    ("GET /v1/system/authTokenSettings", "token lifetime settings; no token"),
    ("PUT /v1/system/authTokenSettings", "token lifetime settings; the gateway follows each JWT's exp"),
    ("GET /v1/tenants/{tenantUid}/authTokenSettings", "token lifetime settings; no token"),
    ("PUT /v1/tenants/{tenantUid}/authTokenSettings", "token lifetime settings; the gateway follows each JWT's exp"),
    ("PUT /v1/system/config/paymentsecrets", "billing settings Palette keeps; hands no credential out"),
    ("PUT /v1/system/config/sso/github/validate", "validates settings sent in the body; changes nothing"),
    ("PUT /v1/system/config/sso/oidc/validate", "validates settings sent in the body; changes nothing"),
    ("GET /v1/system/loginBanner", "a text shown at login"),
    ("PUT /v1/system/loginBanner", "a text shown at login"),
    ("GET /v1/tenants/{tenantUid}/loginBanner", "a text shown at login"),
    ("PUT /v1/tenants/{tenantUid}/loginBanner", "a text shown at login"),
    ("GET /v1/system/password/policy/default", "password rules, no password"),
    ("PUT /v1/system/password/policy/default", "password rules, no password"),
    ("GET /v1/tenants/{tenantUid}/password/policy", "password rules, no password"),
    ("POST /v1/tenants/{tenantUid}/password/policy", "password rules, no password"),
    ("DELETE /v1/system/passwords/blocklist", "a list of refused passwords"),
    ("PATCH /v1/system/passwords/blocklist", "a list of refused passwords"),
    ("GET /v1/system/users/email/{emailToken}/verify", "uses a token the caller already holds; mints nothing"),
    ("POST /v1/tenants/signup/{signupToken}/activate", "uses a token the caller already holds; mints nothing"),
    ("GET /v1/tenants/{tenantUid}/saml/config", "service-provider metadata, public"),
    ("GET /v1/tenants/{tenantUid}/sso/auth/providers", "which social logins are enabled"),
    ("POST /v1/tenants/{tenantUid}/sso/auth/providers", "enables social logins; an account there still needs the user's own login"),
    ("GET /v1/users/assets/sshkeys", "public SSH keys"),
    ("POST /v1/users/assets/sshkeys", "public SSH keys"),
    ("GET /v1/users/assets/sshkeys/{uid}", "public SSH keys"),
    ("PUT /v1/users/assets/sshkeys/{uid}", "public SSH keys"),
    ("DELETE /v1/users/assets/sshkeys/{uid}", "public SSH keys"),
    ("PATCH /v1/users/{uid}/status/loginMode", "the UI mode (dev or devops), not a login method"),
];

/// `v1`, `v2`, `v1alpha1`, ... in any case: the API version segment.
pub fn is_api_version(segment: &str) -> bool {
    let b = segment.as_bytes();
    b.len() >= 2 && b[0].eq_ignore_ascii_case(&b'v') && b[1].is_ascii_digit()
}

/// The entry that refuses `method` on `path`, if any.
pub fn refused(method: &Method, path: &CheckedPath) -> Option<&'static Entry> {
    // Every request is checked against the list, so two facts of the path, taken in one pass,
    // rule most entries out before the matcher runs (issue 14): its second segment picks the
    // entries that can match it at all (the index), and its segment count skips most of those.
    // Both only skip entries `path_matches` would refuse too.
    let mut segs = path.segments().filter(|s| !s.is_empty());
    let second = segs.nth(1);
    let count = if second.is_some() { 2 + segs.count() } else { path.segments().filter(|s| !s.is_empty()).count() };
    let index = &*INDEX;
    index.candidates(second).iter().find_map(|&i| {
        let (shape, e) = (&index.shapes[i], &ENTRIES[i]);
        let may = shape.may_match(count, second) && e.methods.covers(method) && path_matches(e.path, path);
        may.then_some(e)
    })
}

/// What an entry's pattern says about the paths it can match.
struct Shape {
    /// Segments before a `**` (all of them without one).
    fixed: usize,
    /// Whether it ends in `**` (any number of segments more).
    rest: bool,
    /// Its second segment, when that is a literal.
    second: Option<&'static str>,
}

impl Shape {
    fn of(pattern: &'static str) -> Shape {
        let segs: Vec<&'static str> = pattern[1..].split('/').collect();
        let rest = segs.last() == Some(&"**");
        let second = segs.get(1).copied().filter(|s| !matches!(*s, "*" | "**"));
        Shape { fixed: segs.len() - usize::from(rest), rest, second }
    }

    fn may_match(&self, count: usize, second: Option<&str>) -> bool {
        let count_fits = if self.rest { count >= self.fixed } else { count == self.fixed };
        count_fits && self.second.map_or(true, |lit| second.is_some_and(|s| s.eq_ignore_ascii_case(lit)))
    }
}

/// [`ENTRIES`] by their second segment: a path is tried only against the entries whose
/// literal second segment it has (in any case) and those without one, in the list's order.
struct Index {
    /// One [`Shape`] per entry of [`ENTRIES`], in its order.
    shapes: Vec<Shape>,
    /// Each literal second segment with the entries that can match a path having it.
    by_second: Vec<(&'static str, Vec<usize>)>,
    /// The entries that can match a path whose second segment is none of those.
    others: Vec<usize>,
}

impl Index {
    fn build() -> Index {
        let shapes: Vec<Shape> = ENTRIES.iter().map(|e| Shape::of(e.path)).collect();
        let others: Vec<usize> = (0..shapes.len()).filter(|&i| shapes[i].second.is_none()).collect();
        let mut by_second: Vec<(&'static str, Vec<usize>)> = Vec::new();
        for lit in shapes.iter().filter_map(|s| s.second) {
            if by_second.iter().any(|(l, _)| l.eq_ignore_ascii_case(lit)) {
                continue;
            }
            let picks =
                (0..shapes.len()).filter(|&i| shapes[i].second.map_or(true, |l| l.eq_ignore_ascii_case(lit))).collect();
            by_second.push((lit, picks));
        }
        Index { shapes, by_second, others }
    }

    fn candidates(&self, second: Option<&str>) -> &[usize] {
        let group = second.and_then(|s| self.by_second.iter().find(|(lit, _)| s.eq_ignore_ascii_case(lit)));
        group.map_or(&self.others, |(_, picks)| picks)
    }
}

static INDEX: std::sync::LazyLock<Index> = std::sync::LazyLock::new(Index::build);

/// A denylist match: the first segment any version, literals in any case, `*` one segment,
/// `**` the rest; a trailing '/' (the one empty segment a checked path can have) is ignored.
fn path_matches(pattern: &str, path: &CheckedPath) -> bool {
    let mut segs = path.segments().filter(|s| !s.is_empty());
    for (i, p) in pattern[1..].split('/').enumerate() {
        if p == "**" {
            return true;
        }
        let Some(s) = segs.next() else { return false };
        let ok = match p {
            "*" => true,
            _ if i == 0 => is_api_version(s),
            lit => s.eq_ignore_ascii_case(lit),
        };
        if !ok {
            return false;
        }
    }
    segs.next().is_none()
}

/// What to write in `allow_credential_endpoints` to open this request: its method and path,
/// with `*` where the entry has one.
pub fn opening_for(entry: &Entry, method: &Method, path: &CheckedPath) -> String {
    let segs: Vec<&str> = path.segments().filter(|s| !s.is_empty()).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    for (i, p) in entry.path[1..].split('/').enumerate() {
        match p {
            "**" => {
                out.extend(segs.iter().skip(i));
                break;
            }
            "*" => out.push("*"),
            _ => out.extend(segs.get(i)),
        }
    }
    format!("{method} /{}", out.join("/"))
}

/// Checks one `allow_credential_endpoints` entry: one method (not `*`), no `**`, `*` only
/// where the refused endpoint itself has one, and it must name a refused endpoint.
pub fn check_opening(rule: &AllowRule) -> Result<(), String> {
    let Some(method) = rule.method() else {
        return Err("name one method: \"*\" (any method) cannot open a credential endpoint".into());
    };
    if rule.has_rest() {
        return Err("'**' cannot open credential endpoints: name each one exactly (e.g. \"POST /v1/apiKeys\")".into());
    }
    let mut segs: Vec<Option<&str>> = rule.path_segments().collect();
    if segs.last() == Some(&Some("")) {
        segs.pop();
    }
    let fits = |strict: bool| ENTRIES.iter().any(|e| e.methods.covers(method) && opening_fits(e.path, &segs, strict));
    if fits(true) {
        Ok(())
    } else if fits(false) {
        Err("'*' may stand only where the refused endpoint has one (e.g. \"PUT /v1/apiKeys/*/state\"); name the rest exactly".into())
    } else {
        Err(format!(
            "{:?} names no refused credential endpoint (see \"Credential endpoints\" in the README); \
             an ordinary endpoint needs only `allow`",
            rule.as_str()
        ))
    }
}

/// Whether an opening's segments (`None` for `*`) name endpoints of `pattern`; `strict`: a `*`
/// only where the pattern has one.
fn opening_fits(pattern: &str, segs: &[Option<&str>], strict: bool) -> bool {
    let mut it = segs.iter();
    for (i, p) in pattern[1..].split('/').enumerate() {
        if p == "**" {
            return it.all(|s| !strict || s.is_some());
        }
        let Some(s) = it.next() else { return false };
        let ok = match (p, s) {
            ("*", _) => true,
            (_, None) => !strict,
            (_, Some(l)) if i == 0 => is_api_version(l),
            (lit, Some(l)) => l.eq_ignore_ascii_case(lit),
        };
        if !ok {
            return false;
        }
    }
    it.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The shape check only skips entries the matcher refuses: `refused` answers what
        /// trying every entry in order answers, on paths made of the entries' own words in
        /// any case, versions, wildcards' stand-ins, empty segments and a trailing '/'.
        #[test]
        fn the_shape_check_never_changes_the_answer(
            segs in prop::collection::vec(
                prop::sample::select(vec![
                    "v1", "V1", "v1alpha1", "v2", "apiKeys", "APIKEYS", "state", "edgehosts", "tokens",
                    "users", "password", "auth", "system", "admins", "tenants", "oidc", "config",
                    "spectroclusters", "assets", "adminKubeconfig", "clouds", "aws", "uid1", "", "x",
                ]),
                0..8,
            ),
            slash in any::<bool>(),
            m in prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        ) {
            let raw = format!("/{}{}", segs.join("/"), if slash { "/" } else { "" });
            if let Ok(p) = crate::proxy::path::check(&raw) {
                let m = method(m);
                let naive = ENTRIES.iter().find(|e| e.methods.covers(&m) && path_matches(e.path, &p));
                prop_assert_eq!(refused(&m, &p), naive, "{} {}", m, raw);
            }
        }
    }

    /// Every entry is in the group of its own second segment (and, without a literal one, in
    /// every group): the index never hides an entry from a path it could match.
    #[test]
    fn the_index_lists_every_entry_where_it_can_match() {
        let index = Index::build();
        for (i, e) in ENTRIES.iter().enumerate() {
            let second = e.path[1..].split('/').nth(1).filter(|s| !matches!(*s, "*" | "**"));
            match second {
                Some(lit) => {
                    assert!(index.candidates(Some(lit)).contains(&i), "{}", e.path);
                    assert!(index.candidates(Some(&lit.to_ascii_uppercase())).contains(&i), "{}", e.path);
                }
                None => assert!(index.candidates(Some("anything")).contains(&i) && index.others.contains(&i)),
            }
        }
    }

    fn path(p: &str) -> CheckedPath {
        crate::proxy::path::check(p).unwrap()
    }

    fn method(m: &str) -> Method {
        Method::from_bytes(m.as_bytes()).unwrap()
    }

    /// A concrete path for a pattern (`*` filled, `**` given one more segment).
    fn sample(pattern: &str, rest: &str) -> String {
        pattern.replace("/**", rest).replace('*', "x1f2")
    }

    const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE"];

    #[test]
    fn every_entry_refuses_its_methods_in_every_spelling() {
        for e in ENTRIES {
            assert!(e.why.starts_with("it"), "{}: say why as \"it ...\"", e.path);
            let rests: &[&str] = if e.path.ends_with("/**") { &["", "/more", "/more/x1f2"] } else { &[""] };
            for rest in rests {
                let p = sample(e.path, rest);
                let spellings = [
                    p.clone(),
                    format!("{p}/"),
                    p.to_ascii_uppercase(),
                    p.to_ascii_lowercase(),
                    p.replacen("/v1/", "/v1alpha1/", 1),
                    p.replacen("/v1/", "/V2/", 1),
                ];
                for m in METHODS.map(method).iter().filter(|m| e.methods.covers(m)) {
                    for s in &spellings {
                        assert!(refused(m, &path(s)).is_some(), "{m} {s} ({})", e.path);
                    }
                }
            }
        }
    }

    #[test]
    fn the_named_endpoints_are_refused() {
        for (m, p) in [
            ("POST", "/v1/apiKeys"),
            ("PUT", "/v1/apiKeys/k1"),
            ("PATCH", "/v1/apiKeys/k1"),
            ("DELETE", "/v1/apiKeys/k1"),
            ("PUT", "/v1/apiKeys/k1/state"),
            ("POST", "/v1/apiKeys/k1/anything/new"),
            ("POST", "/v1/users/auth/tokens/revoke"),
            ("PATCH", "/v1/users/password/change"),
            ("PATCH", "/v1/users/password/reset"),
            ("PATCH", "/v1/users/u1/password/change"),
            ("PATCH", "/v1/users/u1/password/reset"),
            ("GET", "/v1/spectroclusters/c1/assets/adminTokenKubeconfig"),
            ("PUT", "/v1/spectroclusters/c1/assets/adminTokenKubeconfig"),
            ("GET", "/v1/edgehosts/tokens"),
            ("POST", "/v1/edgehosts/tokens"),
            ("GET", "/v1/edgehosts/tokens/t1"),
            ("PUT", "/v1/edgehosts/tokens/t1/state"),
            ("POST", "/V1/APIKEYS"),
            ("POST", "/v1/apikeys/"),
        ] {
            assert!(refused(&method(m), &path(p)).is_some(), "{m} {p}");
        }
    }

    #[test]
    fn reads_of_api_keys_and_neighbours_stay_open() {
        for (m, p) in [
            ("GET", "/v1/apiKeys"),
            ("HEAD", "/v1/apiKeys"),
            ("GET", "/v1/apiKeys/k1"),
            ("GET", "/v1/apiKeys/k1/state"),
            ("GET", "/v1/users"),
            ("POST", "/v1/users/u1"),
            ("PATCH", "/v1/users/u1/status/loginMode"),
            ("GET", "/v1/spectroclusters/c1/assets/kubeconfig"),
            ("POST", "/v1/apiKeysx"),
            ("POST", "/v1/edgehosts/tokensx"),
            ("GET", "/v1/edgehosts/e1"),
            ("POST", "/x1/apiKeys"),
            ("POST", "/apiKeys"),
        ] {
            assert!(refused(&method(m), &path(p)).is_none(), "{m} {p}");
        }
    }

    fn opening(text: &str) -> Result<(), String> {
        check_opening(&AllowRule::parse(text).unwrap())
    }

    #[test]
    fn openings_name_refused_endpoints_exactly() {
        for ok in [
            "POST /v1/apiKeys",
            "POST /v1/apikeys",
            "PUT /v1/apiKeys/*",
            "PUT /v1/apiKeys/k1/state",
            "PUT /v1/apiKeys/*/state",
            "POST /v1/users/auth/tokens/revoke",
            "PATCH /v1/users/*/password/change",
            "GET /v1/spectroclusters/*/assets/adminKubeconfig",
            "HEAD /v1/spectroclusters/*/assets/adminKubeconfig",
            "GET /v1/edgehosts/tokens",
            "GET /v1/edgehosts/tokens/",
        ] {
            assert_eq!(opening(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("* /v1/apiKeys", "one method"),
            ("POST /v1/**", "'**'"),
            ("POST /v1/apiKeys/**", "'**'"),
            ("PATCH /v1/users/password/*", "'*' may stand only"),
            ("POST /v1/*", "'*' may stand only"),
            ("POST /*/apiKeys", "'*' may stand only"),
            ("GET /v1/apiKeys", "names no refused"),
            ("POST /v1/packs", "names no refused"),
            ("PUT /v1/spectroclusters/*/assets/adminKubeconfig", "names no refused"),
        ] {
            let e = opening(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn every_entry_can_be_opened_as_written() {
        for e in ENTRIES.iter().filter(|e| !e.path.ends_with("/**")) {
            let m = match e.methods {
                Methods::Only(ms) => ms[0],
                Methods::Writes => "POST",
                Methods::All => "GET",
            };
            assert_eq!(opening(&format!("{m} {}", e.path)), Ok(()), "{}", e.path);
        }
    }

    #[test]
    fn the_suggested_opening_opens_the_request() {
        for (m, p, want) in [
            ("POST", "/v1/apiKeys", "POST /v1/apiKeys"),
            ("PUT", "/v1/apiKeys/k1/state", "PUT /v1/apiKeys/*/state"),
            ("PATCH", "/v1/users/u1/password/change", "PATCH /v1/users/*/password/change"),
            ("GET", "/v1/edgehosts/tokens/", "GET /v1/edgehosts/tokens"),
        ] {
            let (m, p) = (method(m), path(p));
            let e = refused(&m, &p).unwrap();
            let text = opening_for(e, &m, &p);
            assert_eq!(text, want);
            assert_eq!(opening(&text), Ok(()));
        }
    }

    /// Palette's operations and the facts these tests need, kept in the repository
    /// (`testdata/palette-operations.json`, derived from the spec by
    /// `scripts/refresh-palette-data.py`), so a plain clone runs them.
    fn palette() -> serde_json::Value {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/palette-operations.json");
        serde_json::from_str(&std::fs::read_to_string(file).expect("testdata/palette-operations.json")).expect("JSON")
    }

    /// `(METHOD, template)` of every operation of the spec.
    fn operations() -> Vec<(String, String)> {
        palette()["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|op| (op[0].as_str().unwrap().to_owned(), op[1].as_str().unwrap().to_owned()))
            .collect()
    }

    /// Every spec operation whose path looks like a credential is refused here or reviewed as
    /// open (with a reason), and nothing reviewed as open is refused.
    #[test]
    fn every_credential_looking_spec_operation_is_decided() {
        const WORDS: [&str; 14] = [
            "apikey",
            "password",
            "token",
            "kubeconfig",
            "revoke",
            "secret",
            "credential",
            "oidc",
            "saml",
            "sso",
            "pairingkey",
            "sshkey",
            "cert",
            "login",
        ];
        let operations = operations();
        let mut seen = 0;
        for (m, template) in &operations {
            let lower = template.to_ascii_lowercase();
            if lower.starts_with("/v1/auth/") || !WORDS.iter().any(|w| lower.contains(w)) {
                continue;
            }
            let concrete = path(&template.replace(['{', '}'], ""));
            let op = format!("{m} {template}");
            let open = REVIEWED_OPEN.iter().any(|(o, _)| *o == op);
            let denied = refused(&method(m), &concrete).is_some();
            assert!(open != denied, "{op}: refused {denied}, reviewed open {open}");
            seen += 1;
        }
        assert!(seen > 80, "only {seen} operations looked at");
        for (op, _) in REVIEWED_OPEN {
            let (m, template) = op.split_once(' ').unwrap();
            assert!(operations.iter().any(|(om, ot)| om == m && ot == template), "{op} is not in the spec");
        }
    }

    /// Every entry without `**` is a path of the spec (with `{...}` as `*`).
    #[test]
    fn entries_are_spec_paths() {
        let templates: Vec<String> = operations()
            .iter()
            .map(|(_, t)| t.split('/').map(|s| if s.starts_with('{') { "*" } else { s }).collect::<Vec<_>>().join("/"))
            .collect();
        for e in ENTRIES.iter().filter(|e| !e.path.ends_with("/**")) {
            assert!(templates.iter().any(|t| t == e.path), "{} is not a spec path", e.path);
        }
    }

    /// The README's table lists every entry, with its reason.
    #[test]
    fn the_readme_lists_every_entry() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for e in ENTRIES {
            let row = format!("| `{}` | {} |", e.path, e.why);
            assert!(readme.contains(&row), "README.md lacks the row for {}: {row}", e.path);
        }
    }

    /// Why reads of `/v1/apiKeys` stay open: the key field is deprecated in the spec, and only
    /// the create answer carries a key.
    #[test]
    fn api_key_reads_reveal_no_key_per_the_spec() {
        let facts = &palette()["facts"];
        let key = facts["v1ApiKeySpec.key.description"].as_str().unwrap();
        assert!(key.starts_with("Deprecated"), "{key}");
        assert_eq!(facts["v1ApiKeyCreateResponse.apiKey"], true);
        for p in ["/v1/apiKeys", "/v1/apiKeys/{uid}"] {
            let schema = facts["api_key_read_200_schemas"][format!("GET {p}")].as_str().unwrap();
            assert!(schema.ends_with("v1ApiKeys") || schema.ends_with("v1ApiKey"), "{p}: {schema}");
        }
    }
}
