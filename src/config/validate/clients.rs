//! `[[clients]]` and `[auth]`: the local clients, how each is identified, and what it may do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::limits::rate;
use super::valid_name;
use super::{is_project_uid_form, project_name_problem};
use crate::config::file::{RawClient, RawConfig, RawCredential};
use crate::config::problems::Problems;
use crate::config::{Client, Projects, Rate};
use crate::pattern::AllowRule;

const DEFAULT_CREDENTIAL: &str = "default";

/// The clients that loaded, and the indexes that find them.
pub(super) struct Clients {
    /// Only the valid ones: fewer than the file's when one has a problem.
    pub(super) list: Vec<Client>,
    /// Every client by name (also the invalid ones), for routes and `[auth]`.
    pub(super) names: HashMap<String, usize>,
    pub(super) key_index: HashMap<[u8; 32], usize>,
    pub(super) cert_index: HashMap<String, usize>,
}

/// Every `[[clients]]` entry; `cred_names` maps the credentials that loaded to their index.
pub(super) fn clients(
    raw: &RawConfig,
    cred_names: &HashMap<&str, usize>,
    mtls: bool,
    default_rate: Option<Rate>,
    p: &mut Problems,
) -> Clients {
    let mut client_names: HashMap<String, usize> = HashMap::new();
    let mut clients = Vec::with_capacity(raw.clients.len());
    let mut key_index = HashMap::new();
    let mut cert_index = HashMap::new();
    for (i, c) in raw.clients.iter().enumerate() {
        let field = format!("clients[{i}]");
        if client_names.insert(c.name.clone(), i).is_some() {
            p.add(format!("{field}.name"), format!("duplicate client name {:?}", c.name));
        }
        for (k, key) in c.keys.iter().enumerate() {
            match parse_key_hash(key) {
                Ok(h) => {
                    if key_index.insert(h, i).is_some() {
                        p.add(
                            format!("{field}.keys[{k}]"),
                            "this key hash is already used (keys must be unique across clients)",
                        );
                    }
                }
                Err(m) => p.add(format!("{field}.keys[{k}]"), m),
            }
        }
        for (k, name) in c.cert_names.iter().enumerate() {
            if cert_index.insert(name.clone(), i).is_some() {
                p.add(
                    format!("{field}.cert_names[{k}]"),
                    format!("certificate name {name:?} already identifies another client"),
                );
            }
        }
        // Checked even when the client has other problems, so every problem is named at once.
        let own_rate = c.rate_limit.map(|r| rate(r, &format!("{field}.rate_limit"), p));
        if let Some(mut client) = client(c, &field, cred_names, &raw.credentials, mtls, p) {
            client.rate_limit = own_rate.unwrap_or(default_rate);
            clients.push(client);
        }
    }
    Clients { list: clients, names: client_names, key_index, cert_index }
}

/// `[auth] anonymous_client`: the client that requests without a local credential act as.
pub(super) fn anonymous_client(
    raw: &RawConfig,
    names: &HashMap<String, usize>,
    p: &mut Problems,
) -> Option<crate::config::ClientId> {
    raw.auth.anonymous_client.as_ref().and_then(|name| match names.get(name) {
        Some(&i) => Some(crate::config::ClientId(i)),
        None => {
            p.add("auth.anonymous_client", format!("no client named {name:?}"));
            None
        }
    })
}

fn parse_key_hash(text: &str) -> Result<[u8; 32], String> {
    let Some(h) = text.strip_prefix("sha256:") else {
        return Err("must be \"sha256:<64 hex>\", the hash of a local key (palette-gateway hash-key prints it); never the key itself".into());
    };
    let mut out = [0u8; 32];
    match hex::decode_to_slice(h, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err("must be \"sha256:\" followed by exactly 64 hex digits".into()),
    }
}

fn client(
    c: &RawClient,
    field: &str,
    creds: &HashMap<&str, usize>,
    declared: &BTreeMap<String, RawCredential>,
    mtls: bool,
    p: &mut Problems,
) -> Option<Client> {
    let before = p.count();
    if !valid_name(&c.name) {
        p.add(format!("{field}.name"), "must be 1-64 characters of letters, digits, '-', '_', '.'");
    }
    let cred_name = c.credential.as_deref().unwrap_or(DEFAULT_CREDENTIAL);
    let credential = creds.get(cred_name).copied();
    // A declared credential that failed to load has its own problem reported already.
    if credential.is_none() && !declared.contains_key(cred_name) {
        let hint = if c.credential.is_none() {
            " (the default; set credential = \"...\" or define [credentials.default])"
        } else {
            ""
        };
        p.add(format!("{field}.credential"), format!("no credential named {cred_name:?}{hint}"));
    }
    let mut project_names: Vec<Arc<str>> = Vec::new();
    let projects = match &c.projects {
        None => Projects::Only(Vec::new()),
        Some(list) if list.iter().any(|s| s == "*") => {
            if list.len() > 1 {
                p.add(format!("{field}.projects"), "\"*\" (any project) must be the only entry");
            }
            Projects::Any
        }
        Some(list) => {
            // 24 lowercase hex digits: a uid; anything else: a project name.
            let (uids, names): (Vec<&String>, Vec<&String>) = list.iter().partition(|e| is_project_uid_form(e));
            for (k, entry) in list.iter().enumerate() {
                if let Some(problem) = (!is_project_uid_form(entry)).then(|| project_name_problem(entry)).flatten() {
                    p.add(format!("{field}.projects[{k}]"), format!("{entry:?} is neither a project uid (24 lowercase hex digits) nor a project name: {problem}"));
                }
            }
            for name in names {
                if !project_names.iter().any(|n| **n == **name) {
                    project_names.push(Arc::from(name.as_str()));
                }
            }
            Projects::Only(uids.into_iter().cloned().collect())
        }
    };
    let allow = c.allow.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .filter_map(|(k, r)| match AllowRule::parse(r) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    p.add(format!("{field}.allow[{k}]"), e.to_string());
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let allow_credential_endpoints = c
        .allow_credential_endpoints
        .iter()
        .enumerate()
        .filter_map(|(k, r)| {
            match AllowRule::parse(r).map_err(|e| e.to_string()).and_then(|rule| {
                crate::credential_endpoints::check_opening(&rule)?;
                Ok(rule)
            }) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    p.add(format!("{field}.allow_credential_endpoints[{k}]"), e);
                    None
                }
            }
        })
        .collect::<Vec<_>>();
    if !c.cert_names.is_empty() && !mtls {
        p.add(format!("{field}.cert_names"), "needs server.tls.client_ca_file (mTLS) to be set");
    }
    if p.count() != before || credential.is_none() {
        return None;
    }
    Some(Client {
        name: Arc::from(c.name.as_str()),
        credential: credential?,
        projects,
        project_names,
        allow,
        allow_credential_endpoints,
        rate_limit: None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{base, env, problems, KEY_HASH};
    use crate::config::load_str;

    #[test]
    fn anonymous_client_must_exist() {
        let p = problems(&format!("{}[auth]\nanonymous_client = \"side\"\n", base()));
        assert_eq!(p, vec!["auth.anonymous_client: no client named \"side\"".to_string()]);
    }

    #[test]
    fn duplicate_keys_and_names() {
        let text = format!(
            "{}[[clients]]\nname = \"a\"\nkeys = [\"{KEY_HASH}\"]\n[[clients]]\nname = \"a\"\nkeys = [\"{KEY_HASH}\"]\n",
            base()
        );
        let p = problems(&text);
        assert!(p.iter().any(|l| l.starts_with("clients[1].name: duplicate")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[1].keys[0]: this key hash is already used")), "{p:?}");
    }

    #[test]
    fn projects_star_alone_and_cert_names_need_mtls() {
        let text =
            format!("{}[[clients]]\nname = \"a\"\nprojects = [\"*\", \"p1\"]\ncert_names = [\"a.internal\"]\n", base());
        let p = problems(&text);
        assert!(p.iter().any(|l| l.starts_with("clients[0].projects:")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[0].cert_names: needs server.tls.client_ca_file")), "{p:?}");
    }

    #[test]
    fn credential_endpoint_openings_are_checked_by_field() {
        let text = format!(
            "{}[[clients]]\nname = \"a\"\nallow_credential_endpoints = [\"POST /v1/apiKeys\", \"POST /v1/**\", \"* /v1/apiKeys\", \"GET /v1/packs\", \"PATCH /v1/users/password/*\", \"nonsense\"]\n",
            base()
        );
        let p = problems(&text);
        assert_eq!(p.len(), 5, "{p:?}");
        for (k, want) in
            [(1, "'**'"), (2, "one method"), (3, "names no refused"), (4, "'*' may stand only"), (5, "expected")]
        {
            let field = format!("clients[0].allow_credential_endpoints[{k}]: ");
            assert!(p.iter().any(|l| l.starts_with(&field) && l.contains(want)), "{field}{want}: {p:?}");
        }
        let ok = format!(
            "{}[[clients]]\nname = \"a\"\nallow_credential_endpoints = [\"PUT /v1/apiKeys/*/state\"]\n",
            base()
        );
        let cfg = load_str(&ok, Path::new("."), &env()).unwrap();
        assert_eq!(cfg.clients[0].allow_credential_endpoints[0].as_str(), "PUT /v1/apiKeys/*/state");
    }

    #[test]
    fn projects_mix_uids_and_names() {
        let text = format!(
            "{}[[clients]]\nname = \"a\"\nprojects = [\"Default\", \"5ca1ab1e0000000000000001\", \"team-a\", \"Default\", \"5CA1AB1E0000000000000001\"]\n",
            base()
        );
        let cfg = load_str(&text, Path::new("."), &env()).unwrap();
        let c = &cfg.clients[0];
        assert_eq!(c.projects, crate::config::Projects::Only(vec!["5ca1ab1e0000000000000001".into()]));
        // Upper-case hex is not Palette's form: it is a name, like any other text.
        let names: Vec<&str> = c.project_names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["Default", "team-a", "5CA1AB1E0000000000000001"]);
        let p = problems(&format!("{}[[clients]]\nname = \"a\"\nprojects = [\"ok\", \"\", \"tab\\there\"]\n", base()));
        assert!(p.iter().any(|l| l.starts_with("clients[0].projects[1]: ")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[0].projects[2]: ") && l.contains("control")), "{p:?}");
    }

    #[test]
    fn client_default_credential_must_exist() {
        let p = problems("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.x]\napi_key_env = \"PALETTE_API_KEY\"\n[[clients]]\nname = \"a\"\n");
        assert!(p.iter().any(|l| l.starts_with("clients[0].credential: no credential named \"default\"")), "{p:?}");
    }
}
