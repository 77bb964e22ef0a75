//! `--auth jwt`: verifies the gateway's tokens locally, as the gateway's own `Check` does, but
//! stricter where that is safe: RS256 only, the key id must be the gateway's current key, the
//! signature, the issuer, `exp` (required), `nbf` and `iat` with 60 s leeway, and the `m8api`
//! audience (cluster tokens, audience `k8sauth`, are refused).

use monoskope_backup_client::error_line;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use super::keys::{self, VerifyingKey};
use super::{AuthError, Identity};
use crate::ops::http::HttpClient;

/// Leeway on every time claim, as the gateway checks them.
pub const LEEWAY_SECS: u64 = 60;
/// Audience of user and API tokens.
pub const AUDIENCE: &str = "m8api";

/// Where the gateway's public key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A file (certificate, public key or JWK), re-read when it changes.
    File(PathBuf),
    /// A JWKS URL (the gateway's `/keys`), fetched periodically and on an unknown key id.
    Jwks(String),
}

/// The claims we read.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    is_api_token: bool,
    #[serde(default)]
    iat: Option<u64>,
}

struct FileState {
    key: Option<VerifyingKey>,
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
}

/// A verifier of the gateway's JWTs.
pub struct JwtVerifier {
    source: KeySource,
    issuer: String,
    file: Mutex<FileState>,
    jwks: RwLock<(Vec<VerifyingKey>, Option<Instant>)>,
    http: Option<HttpClient>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("source", &self.source)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// How often a key file's modification time is looked at.
const FILE_CHECK: Duration = Duration::from_secs(1);
/// Least time between two JWKS fetches triggered by unknown key ids.
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(10);

impl JwtVerifier {
    /// A verifier; loads the key file now (failing start-up on a bad file) or fetches the JWKS
    /// (a JWKS endpoint that is down only warns: it is fetched again on the first call).
    pub async fn new(source: KeySource, issuer: String) -> anyhow::Result<Self> {
        let http = match &source {
            KeySource::Jwks(_) => Some(HttpClient::new(Duration::from_secs(10))?),
            KeySource::File(_) => None,
        };
        let v = Self {
            source,
            issuer,
            file: Mutex::new(FileState {
                key: None,
                stamp: None,
                checked: None,
            }),
            jwks: RwLock::new((Vec::new(), None)),
            http,
        };
        match &v.source {
            KeySource::File(p) => {
                let key = load_file(p)?;
                tracing::info!(kid = %key.kid, file = %p.display(), "gateway public key loaded");
                let mut st = v.file.lock().unwrap_or_else(|e| e.into_inner());
                st.stamp = stamp(p);
                st.key = Some(key);
                st.checked = Some(Instant::now());
            }
            KeySource::Jwks(url) => {
                if let Err(e) = v.refresh_jwks().await {
                    tracing::warn!(url = %crate::redact::url(url), error = %error_line(e.as_ref()), "cannot fetch the gateway's JWKS yet; calls fail with UNAVAILABLE until it answers");
                }
            }
        }
        Ok(v)
    }

    /// Fetches the JWKS now.
    pub async fn refresh_jwks(&self) -> anyhow::Result<usize> {
        let (KeySource::Jwks(url), Some(http)) = (&self.source, &self.http) else {
            return Ok(0);
        };
        {
            self.jwks.write().await.1 = Some(Instant::now());
        }
        let a = http
            .send(http::Method::GET, url, None, Vec::new())
            .await
            .with_context(|| format!("GET {}", crate::redact::url(url)))?;
        if !a.status.is_success() {
            anyhow::bail!("GET {}: HTTP {}", crate::redact::url(url), a.status);
        }
        let set: serde_json::Value = serde_json::from_slice(&a.body)
            .with_context(|| format!("{}: not JSON", crate::redact::url(url)))?;
        let mut found = Vec::new();
        for k in set
            .get("keys")
            .and_then(|k| k.as_array())
            .with_context(|| format!("{}: no \"keys\" array", crate::redact::url(url)))?
        {
            match keys::from_jwk(k) {
                Ok(key) => found.push(key),
                Err(e) => {
                    tracing::warn!(url = %crate::redact::url(url), error = %error_line(e.as_ref()), "JWKS key skipped")
                }
            }
        }
        if found.is_empty() {
            anyhow::bail!("{}: no RSA key in the key set", crate::redact::url(url));
        }
        let n = found.len();
        let kids: Vec<String> = found.iter().map(|k| k.kid.clone()).collect();
        self.jwks.write().await.0 = found;
        tracing::info!(url = %crate::redact::url(url), ?kids, "gateway JWKS loaded");
        Ok(n)
    }

    /// Refreshes the JWKS every `every` until the process ends.
    pub fn spawn_refresh(self: &std::sync::Arc<Self>, every: Duration) {
        if !matches!(self.source, KeySource::Jwks(_)) {
            return;
        }
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = me.refresh_jwks().await {
                    tracing::warn!(error = %error_line(e.as_ref()), "JWKS refresh failed; keeping the keys already loaded");
                }
            }
        });
    }

    fn file_key(&self, p: &std::path::Path) -> Result<VerifyingKey, AuthError> {
        let mut st = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.is_none_or(|c| c.elapsed() >= FILE_CHECK) {
            st.checked = Some(Instant::now());
            let now = stamp(p);
            if now != st.stamp {
                match load_file(p) {
                    Ok(k) => {
                        tracing::info!(kid = %k.kid, file = %p.display(), "gateway public key changed on disk; reloaded");
                        st.key = Some(k);
                        st.stamp = now;
                    }
                    // A file being rewritten may be half there: keep the old key, look again.
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %error_line(e.as_ref()), "cannot reload the gateway public key; keeping the previous one")
                    }
                }
            }
        }
        st.key
            .clone()
            .ok_or_else(|| AuthError::Unavailable("no gateway public key loaded".into()))
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<VerifyingKey, AuthError> {
        let pick = |keys: &[VerifyingKey]| -> Option<VerifyingKey> {
            match kid {
                Some(k) => keys.iter().find(|x| x.kid == k).cloned(),
                None if keys.len() == 1 => keys.first().cloned(),
                None => None,
            }
        };
        let unknown = |have: Vec<String>| {
            AuthError::Unauthenticated(match kid {
                Some(k) => format!("token key id {k} is not the gateway's current key ({}): it was signed by another or a replaced key; log in again", have.join(", ")),
                None => "token has no key id (kid)".into(),
            })
        };
        match &self.source {
            KeySource::File(p) => {
                let k = self.file_key(p)?;
                pick(std::slice::from_ref(&k)).ok_or_else(|| unknown(vec![k.kid]))
            }
            KeySource::Jwks(_) => {
                let (have, fetched) = {
                    let g = self.jwks.read().await;
                    if let Some(k) = pick(&g.0) {
                        return Ok(k);
                    }
                    (g.0.clone(), g.1)
                };
                // An unknown key id may be a rotation: fetch again, but not on every bad token.
                if fetched.is_none_or(|t| t.elapsed() >= JWKS_MIN_INTERVAL) {
                    if let Err(e) = self.refresh_jwks().await {
                        if have.is_empty() {
                            return Err(AuthError::Unavailable(format!(
                                "the gateway's JWKS is unavailable: {}",
                                error_line(e.as_ref())
                            )));
                        }
                        tracing::warn!(error = %error_line(e.as_ref()), "JWKS refresh failed");
                    }
                    let g = self.jwks.read().await;
                    if let Some(k) = pick(&g.0) {
                        return Ok(k);
                    }
                    return Err(unknown(g.0.iter().map(|k| k.kid.clone()).collect()));
                }
                if have.is_empty() {
                    return Err(AuthError::Unavailable(
                        "the gateway's JWKS has not been fetched yet".into(),
                    ));
                }
                Err(unknown(have.iter().map(|k| k.kid.clone()).collect()))
            }
        }
    }

    /// Verifies `token` and returns its identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Unauthenticated(format!("malformed token: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Unauthenticated(format!(
                "token algorithm {:?} is not accepted: the gateway signs RS256",
                header.alg
            )));
        }
        let key = self.key_for(header.kid.as_deref()).await?;
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[AUDIENCE]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            AuthError::Unauthenticated(match e.kind() {
                K::ExpiredSignature => "token expired".into(),
                K::ImmatureSignature => "token is not valid yet (nbf in the future)".into(),
                K::InvalidIssuer => format!("token issuer is not {:?}", self.issuer),
                K::InvalidAudience => format!(
                    "token audience is not {AUDIENCE:?} (a cluster token cannot call this service)"
                ),
                K::InvalidSignature => "token signature is invalid".into(),
                K::MissingRequiredClaim(c) => format!("token has no {c:?} claim"),
                K::InvalidAlgorithm => "token algorithm is not RS256".into(),
                _ => format!("invalid token: {e}"),
            })
        })?;
        let c = data.claims;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if c.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
            return Err(AuthError::Unauthenticated(
                "token issued in the future (iat)".into(),
            ));
        }
        let scopes: Vec<&str> = c.scope.split_whitespace().collect();
        if !scopes.contains(&"API") {
            return Err(AuthError::PermissionDenied(format!(
                "token scope {:?} does not grant API access",
                c.scope
            )));
        }
        Ok(Identity {
            id: c.sub,
            name: c.name.unwrap_or_default(),
            email: c.email.unwrap_or_default(),
            machine: c.is_api_token,
        })
    }
}

fn stamp(p: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load_file(p: &std::path::Path) -> anyhow::Result<VerifyingKey> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read the gateway public key {}", p.display()))?;
    keys::parse(&text).with_context(|| format!("{}", p.display()))
}
