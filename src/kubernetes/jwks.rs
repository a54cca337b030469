//! `jwks` mode: the JWT is verified here, against the issuer's key set (fetched at start,
//! every [`super::JWKS_REFRESH`], and again when a token names an unknown `kid`, at most once per
//! [`UNKNOWN_KID_PAUSE`]). Only RS256 and ES256 are accepted, and only with a key that is of that
//! kind (and declares that `alg`, when it declares one): `none`, HMAC (an RSA public key used as
//! an HS256 secret) and any other algorithm are refused. `iss`, `aud`, `exp` and `nbf` (with
//! [`SKEW_SECS`]) and the `kubernetes.io` claims are checked.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{StatusCode, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::time::Instant;

use super::api::{ApiClient, Unavailable};
use super::{Identity, KubeError};

/// Fewest time between two fetches caused by unknown `kid`s: tokens naming made-up keys cannot
/// make the gateway hammer the API server.
pub(super) const UNKNOWN_KID_PAUSE: Duration = Duration::from_secs(10);
/// Clock difference allowed on `exp` and `nbf`.
const SKEW_SECS: u64 = 30;

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub(super) struct Jwks {
    api: ApiClient,
    issuer: String,
    jwks_url: Option<Uri>,
    audiences: Vec<String>,
    keys: ArcSwap<Vec<Key>>,
    /// When the last fetch started; one fetch at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    pub(super) fn new(api: ApiClient, issuer: String, jwks_url: Option<Uri>, audiences: Vec<String>) -> Self {
        Jwks {
            api,
            issuer,
            jwks_url,
            audiences,
            keys: ArcSwap::from_pointee(Vec::new()),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    pub(super) async fn authenticate(&self, token: &str) -> Result<Identity, KubeError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            KubeError::Refused("the token's header is not a JWT header with an accepted alg (RS256, ES256)".into())
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(KubeError::Refused(format!("the token's alg {:?} is not accepted (RS256, ES256)", header.alg)));
        }
        let kid = header.kid.as_deref();
        let keys = match find(&self.keys.load(), kid, header.alg) {
            Found::Key => self.keys.load_full(),
            Found::WrongAlg => return Err(wrong_alg(header.alg)),
            Found::None => {
                // A key rotated in since the last fetch, or a key set never fetched yet.
                let refreshed = self.refresh_for_unknown_kid().await;
                let keys = self.keys.load_full();
                if keys.is_empty() {
                    // Without any key nothing can be judged: not the caller's fault.
                    let why = refreshed.err().map(|e| e.0);
                    return Err(KubeError::Unavailable(
                        why.unwrap_or_else(|| "the issuer's key set could not be fetched yet".into()),
                    ));
                }
                keys
            }
        };
        let key = match keys.iter().find(|k| k.kid.as_deref() == kid || kid.is_none()) {
            Some(k) if k.alg == header.alg => k,
            Some(_) => return Err(wrong_alg(header.alg)),
            None => {
                return Err(KubeError::Refused("the token is signed with a key the issuer does not publish".into()))
            }
        };
        let mut v = Validation::new(key.alg);
        v.leeway = SKEW_SECS;
        v.validate_nbf = true;
        v.set_audience(&self.audiences);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            KubeError::Refused(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "the token is not for this gateway's audience",
                    ErrorKind::InvalidIssuer => "the token is from another issuer",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token's alg does not match its key",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, iss, aud, sub)",
                    _ => "the token is malformed",
                }
                .to_string(),
            )
        })?;
        let c = data.claims;
        let Some(k) = c.kubernetes else {
            return Err(KubeError::Refused(
                "the token has no kubernetes.io claims (not a ServiceAccount token)".into(),
            ));
        };
        let identity = Identity { namespace: k.namespace, name: k.serviceaccount.name };
        // The subject must name the same ServiceAccount as the kubernetes.io claims.
        if Identity::from_username(&c.sub).as_ref() != Some(&identity) {
            return Err(KubeError::Refused("the token's sub and kubernetes.io claims disagree".into()));
        }
        Ok(identity)
    }

    async fn refresh_for_unknown_kid(&self) -> Result<(), Unavailable> {
        let last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_PAUSE) {
            return Ok(());
        }
        self.fetch(last).await
    }

    /// Fetches the key set now (the periodic refresh).
    pub(super) async fn refresh(&self) -> Result<(), Unavailable> {
        let last = self.last_fetch.lock().await;
        self.fetch(last).await
    }

    async fn fetch(&self, mut last: tokio::sync::MutexGuard<'_, Option<Instant>>) -> Result<(), Unavailable> {
        *last = Some(Instant::now());
        let url = match &self.jwks_url {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let (status, body) = self.api.get(&url).await?;
        if status != StatusCode::OK {
            return Err(Unavailable(format!("{url} answered {status}")));
        }
        let set: RawSet =
            serde_json::from_slice(&body).map_err(|e| Unavailable(format!("{url} is not a key set: {e}")))?;
        // A key that cannot be parsed or used is skipped, not a reason to drop the whole set.
        let keys: Vec<Key> = set
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|j| usable(&j))
            .collect();
        if keys.is_empty() {
            return Err(Unavailable(format!("{url} holds no RS256 or ES256 signing key")));
        }
        tracing::info!(keys = keys.len(), "Kubernetes key set fetched");
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// The `jwks_uri` of the issuer's OIDC discovery document.
    async fn discover(&self) -> Result<Uri, Unavailable> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let uri: Uri = url.parse().map_err(|_| Unavailable(format!("{url} is not a URL")))?;
        let (status, body) = self.api.get(&uri).await?;
        if status != StatusCode::OK {
            return Err(Unavailable(format!("{url} answered {status}")));
        }
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| Unavailable(format!("{url} is not a discovery document: {e}")))?;
        match doc.jwks_uri.parse::<Uri>() {
            Ok(u) if u.scheme_str() == Some("https") => Ok(u),
            _ => Err(Unavailable(format!("{url} names a jwks_uri that is not an https:// URL"))),
        }
    }
}

enum Found {
    Key,
    WrongAlg,
    None,
}

fn find(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Found {
    match keys.iter().find(|k| kid.is_none() || k.kid.as_deref() == kid) {
        Some(k) if k.alg == alg => Found::Key,
        Some(_) => Found::WrongAlg,
        None => Found::None,
    }
}

fn wrong_alg(alg: Algorithm) -> KubeError {
    KubeError::Refused(format!("the token's alg {alg:?} is not the one of the key it names"))
}

/// A signing key we accept, with the one algorithm it may verify: RSA → RS256, EC P-256 → ES256;
/// a declared `alg` other than that, an encryption key, or any other kind of key is left out.
fn usable(j: &Jwk) -> Option<Key> {
    if matches!(j.common.public_key_use, Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))) {
        return None;
    }
    let alg = match &j.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    let declared_ok = match j.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !declared_ok {
        return None;
    }
    let key = DecodingKey::from_jwk(j).ok()?;
    Some(Key { kid: j.common.key_id.clone(), alg, key })
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaims>,
}

#[derive(Deserialize)]
struct KubeClaims {
    namespace: String,
    serviceaccount: Named,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(v: serde_json::Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    fn ec_xy() -> (String, String) {
        use base64::Engine;
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        let b = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        (b(&raw[1..33]), b(&raw[33..65]))
    }

    #[test]
    fn only_signing_keys_of_their_own_algorithm_are_used() {
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let (x, y) = ec_xy();
        let ok = [
            (
                serde_json::json!({"kty": "RSA", "kid": "a", "n": n, "e": "AQAB", "alg": "RS256", "use": "sig"}),
                Algorithm::RS256,
            ),
            (serde_json::json!({"kty": "RSA", "kid": "b", "n": n, "e": "AQAB"}), Algorithm::RS256),
            (
                serde_json::json!({"kty": "EC", "kid": "c", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}),
                Algorithm::ES256,
            ),
        ];
        for (key, alg) in ok {
            let k = usable(&jwk(key.clone())).unwrap_or_else(|| panic!("{key}"));
            assert_eq!(k.alg, alg);
        }
        let refused = [
            // An RSA key declared for HMAC or another hash, or for encryption.
            serde_json::json!({"kty": "RSA", "kid": "d", "n": n, "e": "AQAB", "alg": "HS256"}),
            serde_json::json!({"kty": "RSA", "kid": "e", "n": n, "e": "AQAB", "alg": "RS384"}),
            serde_json::json!({"kty": "RSA", "kid": "f", "n": n, "e": "AQAB", "use": "enc"}),
            // An EC key declared RS256; an HMAC secret published as a key.
            serde_json::json!({"kty": "EC", "kid": "g", "crv": "P-256", "x": x, "y": y, "alg": "RS256"}),
            serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"}),
        ];
        for key in refused {
            assert!(usable(&jwk(key.clone())).is_none(), "{key}");
        }
    }
}
