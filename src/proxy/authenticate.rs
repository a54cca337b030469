//! Step 4, local authentication, as a whole: a bearer shaped like a JWT goes to Kubernetes auth
//! when `[auth.kubernetes]` is set (the only path that awaits); everything else is the local
//! key / client certificate / anonymous decision of [`super::auth`], unchanged and as cheap.
//! Without `[auth.kubernetes]` a JWT is just an unknown local key (401), as it always was.
//! Every decision is counted in `palette_gateway_auth_total{method,result}`.

use std::net::IpAddr;

use http::{header, HeaderMap};

use super::auth::{self, PeerIdentity, PresentedKey, API_KEY};
use super::ConnInfo;
use crate::config::ClientId;
use crate::error::GatewayError;
use crate::kubernetes::{looks_like_jwt, KubeError, Kubernetes};
use crate::metrics::{AuthMethod, AuthResult, Metrics};
use crate::runtime::Runtime;

/// Which client is calling, and the local key it presented (a ServiceAccount token is one
/// too): hygiene removes it under any other name.
pub(crate) async fn identify(
    rt: &Runtime,
    metrics: &Metrics,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Result<(ClientId, Option<PresentedKey>), GatewayError> {
    let peer = &*conn.identity;
    if let Some(kube) = &rt.kubernetes {
        if let Some((token, presented)) = kubernetes_token(headers) {
            // Boxed: the TokenReview call's state would otherwise sit in every request's future.
            let result = Box::pin(by_token(rt, kube, token, peer, conn.peer.ip())).await;
            metrics.count_auth(AuthMethod::Kubernetes, result_label(&result));
            return result.map(|client| (client, Some(presented)));
        }
    }
    let result = auth::identify_presented(&rt.config, &rt.key_cache, headers, peer);
    let method = if headers.contains_key(&API_KEY) || headers.contains_key(header::AUTHORIZATION) {
        AuthMethod::LocalKey
    } else if !peer.cert_names.is_empty() {
        AuthMethod::Mtls
    } else {
        AuthMethod::Anonymous
    };
    metrics.count_auth(method, result_label(&result));
    result
}

/// The bearer of `Authorization`, when it is the request's only credential header and is shaped
/// like a JWT. Anything else (also a malformed or repeated header) is left to the local-key path,
/// which refuses it with its usual message.
fn kubernetes_token(headers: &HeaderMap) -> Option<(&str, PresentedKey)> {
    if headers.contains_key(&API_KEY) {
        return None;
    }
    match auth::presented_key(headers) {
        Ok(Some((token, presented))) if looks_like_jwt(token) => Some((token, presented)),
        _ => None,
    }
}

async fn by_token(
    rt: &Runtime,
    kube: &Kubernetes,
    token: &str,
    peer: &PeerIdentity,
    addr: IpAddr,
) -> Result<ClientId, GatewayError> {
    let identity = kube.authenticate(token, addr).await.map_err(|e| match e {
        KubeError::Refused(why) => {
            GatewayError::UnknownCredential(format!("the Kubernetes ServiceAccount token was refused: {why}"))
        }
        KubeError::Unavailable(why) => {
            // The details (URLs, the API server's words) go to the log, not to the caller.
            tracing::warn!(error = %why, "cannot check a Kubernetes ServiceAccount token");
            GatewayError::IdentityUnavailable(
                "the Kubernetes API server could not be reached or did not answer in time; retry shortly".into(),
            )
        }
    })?;
    let Some(client) = rt.config.client_by_service_account(&identity.namespace, &identity.name) else {
        return Err(GatewayError::UnknownCredential(format!(
            "ServiceAccount {identity} is not a client of this gateway (no service_accounts entry names it)"
        )));
    };
    if auth::cert_client(&rt.config, peer)?.is_some_and(|c| c != client) {
        return Err(GatewayError::UnknownCredential(
            "the ServiceAccount token and the client certificate identify different clients".into(),
        ));
    }
    tracing::debug!(service_account = %identity, "ServiceAccount token accepted");
    Ok(client)
}

fn result_label<T>(result: &Result<T, GatewayError>) -> AuthResult {
    match result {
        Ok(_) => AuthResult::Ok,
        Err(GatewayError::IdentityUnavailable(_)) => AuthResult::Unavailable,
        Err(_) => AuthResult::Refused,
    }
}
