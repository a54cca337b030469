//! The fake Palette's session tokens: JWT-shaped strings and the server-side record of which
//! are still valid.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng as _;
use tokio::time::Instant;

/// What the server knows about one issued token.
#[derive(Debug)]
struct Issued {
    session: u64,
    email: String,
    expires: Instant,
    revoked: bool,
}

/// Every token issued, with its validity. Validity is decided here, never from the token's
/// claims.
#[derive(Debug, Default)]
pub(super) struct TokenStore {
    tokens: HashMap<String, Issued>,
    /// Issue order, for [`TokenStore::issued`].
    order: Vec<String>,
    next_session: u64,
}

impl TokenStore {
    /// Issues a token for `email` in a new session, valid from `now` for `lifetime`.
    pub(super) fn login(&mut self, now: Instant, email: &str, lifetime: Duration, exp_claim: bool) -> String {
        self.next_session += 1;
        self.issue(now, self.next_session, email.to_string(), lifetime, exp_claim)
    }

    /// Issues a new token in the session of `token` when `token` is valid at `now`.
    pub(super) fn refresh(&mut self, now: Instant, token: &str, lifetime: Duration, exp_claim: bool) -> Option<String> {
        let old = self.tokens.get(token).filter(|t| t.valid_at(now))?;
        let (session, email) = (old.session, old.email.clone());
        Some(self.issue(now, session, email, lifetime, exp_claim))
    }

    /// Whether `token` was issued here, has not expired at `now` and was not revoked.
    pub(super) fn is_valid(&self, now: Instant, token: &str) -> bool {
        self.tokens.get(token).is_some_and(|t| t.valid_at(now))
    }

    /// Revokes every token issued so far.
    pub(super) fn revoke_all(&mut self) {
        for t in self.tokens.values_mut() {
            t.revoked = true;
        }
    }

    /// Every token issued so far, oldest first.
    pub(super) fn issued(&self) -> Vec<String> {
        self.order.clone()
    }

    fn issue(&mut self, now: Instant, session: u64, email: String, lifetime: Duration, exp_claim: bool) -> String {
        let expires = now + lifetime;
        loop {
            let token = mint(&email, lifetime, exp_claim);
            // 16 random bytes of `jti` make a clash practically impossible; the loop makes
            // uniqueness a fact rather than a likelihood.
            if self.tokens.contains_key(&token) {
                continue;
            }
            self.order.push(token.clone());
            self.tokens.insert(token.clone(), Issued { session, email, expires, revoked: false });
            return token;
        }
    }
}

impl Issued {
    fn valid_at(&self, now: Instant) -> bool {
        !self.revoked && now < self.expires
    }
}

/// Builds `base64url(header).base64url(payload).base64url(signature)`, unpadded. `exp` is the
/// end of validity rounded down, so a client trusting it never holds an expired token.
fn mint(email: &str, lifetime: Duration, exp_claim: bool) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut rng = rand::thread_rng();
    let mut payload = serde_json::json!({
        "sub": email,
        "iat": now.as_secs(),
        "jti": random_hex(16),
    });
    if exp_claim {
        payload["exp"] = (now + lifetime).as_secs().into();
    }
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let signature: [u8; 32] = rng.gen();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// `n` random bytes as lowercase hex (ids for `ref`, `uid`, `AuditUid`, `jti`).
pub(super) fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n).map(|_| format!("{:02x}", rng.gen::<u8>())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(token: &str) -> serde_json::Value {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 32);
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
    }

    #[test]
    fn token_is_jwt_shaped_with_exp_claim() {
        let token = mint("a@b.c", Duration::from_secs(900), true);
        assert!(!token.contains('='));
        let p = payload(&token);
        assert_eq!(p["sub"], "a@b.c");
        let iat = p["iat"].as_u64().unwrap();
        let exp = p["exp"].as_u64().unwrap();
        assert!((899..=900).contains(&(exp - iat)), "iat {iat} exp {exp}");
        assert_eq!(p["jti"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn token_without_exp_claim() {
        let p = payload(&mint("a@b.c", Duration::from_secs(900), false));
        assert!(p.get("exp").is_none());
        assert!(p.get("iat").is_some());
    }

    #[test]
    fn validity_follows_lifetime_revocation_and_refresh() {
        let life = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut store = TokenStore::default();
        let a = store.login(t0, "a@b.c", life, true);
        let b = store.login(t0, "a@b.c", life, true);
        assert_ne!(a, b);
        assert!(store.is_valid(t0, &a) && store.is_valid(t0, &b));
        assert!(!store.is_valid(t0, "not-a-token"));

        let a2 = store.refresh(at(30), &a, life, true).unwrap();
        assert_eq!(store.tokens[&a2].session, store.tokens[&a].session);
        assert_ne!(store.tokens[&a2].session, store.tokens[&b].session);

        assert!(!store.is_valid(at(60), &a));
        assert!(store.refresh(at(60), &a, life, true).is_none());
        assert!(store.is_valid(at(60), &a2));
        assert!(!store.is_valid(at(90), &a2));

        store.revoke_all();
        assert!(!store.is_valid(at(31), &a2));
        assert_eq!(store.issued(), vec![a, b, a2]);
    }
}
