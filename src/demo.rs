//! `--demo`: the gateway fully offline, in front of the fake Palette, with curl commands that
//! show the credential swap, a ProjectUid route and a refused request. The fake Palette is a
//! crate of its own (`crates/fake-palette`), linked in by the default `demo` feature; a gateway
//! built without it says so when asked for `--demo`.

use std::path::Path;

#[cfg(feature = "demo")]
use anyhow::Context as _;
#[cfg(feature = "demo")]
use fake_palette::{FakePalette, FakePaletteConfig, FakeUser};

use crate::config::{self, MapEnv};

/// The demo config (also in `config/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
/// The demo's Palette API key (known only to the fake and the gateway).
pub const DEMO_PALETTE_API_KEY: &str = "demo-palette-api-key";
/// The demo login's password.
pub const DEMO_PASSWORD: &str = "demo-password";
/// The `ci` client's local key.
pub const DEMO_CI_KEY: &str = "pgw_demo-ci-key-0123456789abcdefghijklmnopqrstuv";
/// The `ops-bot` client's local key.
pub const DEMO_OPS_KEY: &str = "pgw_demo-ops-key-0123456789abcdefghijklmnopqrstu";

/// Loads the demo config with the demo secrets.
pub fn demo_config() -> Result<config::Config, config::ConfigError> {
    let env = MapEnv::new().with("PALETTE_API_KEY", DEMO_PALETTE_API_KEY).with("PALETTE_PASSWORD", DEMO_PASSWORD);
    config::load_str(DEMO_CONFIG, Path::new("config"), &env)
}

/// The fake Palette the demo config expects.
#[cfg(feature = "demo")]
pub fn demo_fake_config() -> FakePaletteConfig {
    FakePaletteConfig {
        api_keys: vec![DEMO_PALETTE_API_KEY.to_string()],
        users: vec![FakeUser { email: "ops@example.com".into(), password: DEMO_PASSWORD.into(), org: None }],
        ..FakePaletteConfig::default()
    }
}

/// Runs the demo until Ctrl-C.
#[cfg(feature = "demo")]
pub async fn run() -> anyhow::Result<()> {
    let cfg = demo_config().context("the built-in demo config is invalid")?;
    let fake_addr = format!("{}", cfg.upstream.authority).parse().context("demo upstream address")?;
    let fake = FakePalette::start_on(demo_fake_config(), fake_addr)
        .await
        .with_context(|| format!("cannot start the fake Palette on {fake_addr}"))?;
    let gateway = crate::app::RunningGateway::start(cfg).await?;
    let gw = format!("http://{}", gateway.proxy_addr);
    let admin = format!("http://{}", gateway.admin_addr);
    println!(
        "\npalette-gateway demo: gateway {gw}, admin {admin}, fake Palette {fake_url} (offline)\n\n\
         # 1. Credential swap: the client sends its local key; Palette receives the gateway's ApiKey.\n\
         curl -s -H 'ApiKey: {ci}' {gw}/v1/spectroclusters\n\n\
         # 2. A ProjectUid route: /team-a/... is forwarded as /v1/... with ProjectUid 5ca1ab1e0000000000000001.\n\
         curl -s -H 'ApiKey: {ci}' {gw}/team-a/v1/clusterprofiles\n\n\
         # 3. Refused: ci may not DELETE (403), unknown keys get 401, /v1/auth/** is the gateway's own.\n\
         curl -s -X DELETE -H 'ApiKey: {ci}' {gw}/v1/spectroclusters/abc\n\
         curl -s -H 'ApiKey: wrong' {gw}/v1/spectroclusters\n\n\
         # 4. A token credential: ops-bot's requests carry a Palette token the gateway logged in for.\n\
         curl -s -H 'Authorization: Bearer {ops}' -H 'ProjectUid: p042' {gw}/v1/users\n\n\
         # Health and readiness:\n\
         curl -s {admin}/healthz; curl -s {admin}/readyz\n\n\
         Ctrl-C to stop.",
        fake_url = fake.url(),
        ci = DEMO_CI_KEY,
        ops = DEMO_OPS_KEY,
    );
    crate::signals::wait_for_signal().await;
    gateway.shutdown().await;
    drop(fake);
    Ok(())
}

/// Without the `demo` feature there is no fake Palette to run against.
#[cfg(not(feature = "demo"))]
pub async fn run() -> anyhow::Result<()> {
    anyhow::bail!("this palette-gateway was built without the `demo` feature: --demo is not available")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid_and_keys_match() {
        let cfg = demo_config().unwrap();
        assert_eq!(cfg.client_by_key_hash(&crate::auth::hash_key(DEMO_CI_KEY)).map(|c| c.index()), Some(0));
        assert_eq!(cfg.client_by_key_hash(&crate::auth::hash_key(DEMO_OPS_KEY)).map(|c| c.index()), Some(1));
    }
}
