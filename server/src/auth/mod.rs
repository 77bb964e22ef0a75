//! Authentication and authorisation of callers: a tower layer in front of every RPC except gRPC
//! health and server reflection.
//!
//! Modes (`--auth`):
//! - `gateway`: the gateway's `GatewayAuth.Check` decides, as for Monoskope's other services;
//! - `jwt`: the gateway's tokens are verified here (see [`jwt`]);
//! - `none`: no check (loopback listeners only; refused elsewhere by `serve`).
//!
//! Rights (see [`Policy`]): `ListBackups` and `GetStatus` for any authenticated caller (or, when
//! `readers` is set, those, admins and machine identities); `CreateBackup` for admins and machine
//! identities; `Drill` (restores into a scratch store only) like `CreateBackup`; `Restore` for
//! admins only.

pub mod gateway;
pub mod jwt;
pub mod keys;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

/// Full-method-name prefixes that need no token.
pub const BYPASS: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Largest request body read for the gateway's `request` field (the service's own limit).
const MAX_BUFFERED: usize = (1 << 20) + 5;

pub use crate::identity::Identity;

/// The identity of the caller, as this layer records it in the request for the service.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No, malformed, expired or unacceptable token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the right.
    #[error("{0}")]
    PermissionDenied(String),
    /// The authority (gateway, JWKS) cannot be asked: never a pass.
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// The gRPC status.
    pub fn status(&self) -> Status {
        match self {
            AuthError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            AuthError::PermissionDenied(m) => Status::permission_denied(m.clone()),
            AuthError::Unavailable(m) => Status::unavailable(m.clone()),
        }
    }
}

/// Who may do what beyond being authenticated. Entries match a caller's subject or e-mail.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// May restore, and everything else.
    pub admins: Vec<String>,
    /// May create backups and read (e.g. the CronJob's API token user name).
    pub machines: Vec<String>,
    /// When non-empty, only these (and admins and machines) may read.
    pub readers: Vec<String>,
}

fn listed(list: &[String], id: &Identity) -> bool {
    list.iter()
        .any(|e| *e == id.id || (!id.email.is_empty() && e.eq_ignore_ascii_case(&id.email)))
}

/// What a method does, for authorisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Right {
    Read,
    Create,
    Restore,
    Admin,
}

fn right_of(method: &str) -> Right {
    match method {
        "/monoskope.backup.v1.BackupService/ListBackups"
        | "/monoskope.backup.v1.BackupService/GetStatus" => Right::Read,
        "/monoskope.backup.v1.BackupService/CreateBackup"
        | "/monoskope.backup.v1.BackupService/Drill" => Right::Create,
        "/monoskope.backup.v1.BackupService/Restore" => Right::Restore,
        _ => Right::Admin,
    }
}

impl Policy {
    /// Whether `id` may call `method`. With `strict` (jwt mode) the lists are the whole truth;
    /// without (gateway mode, where the gateway's policy already allowed the call) a list only
    /// restricts further when it is non-empty.
    pub fn authorize(&self, method: &str, id: &Identity, strict: bool) -> Result<(), AuthError> {
        let admin = listed(&self.admins, id);
        let machine = listed(&self.machines, id);
        let who = id.label();
        let deny = |what: &str| {
            Err(AuthError::PermissionDenied(format!(
                "{who} may not {what}: {}",
                match what {
                    "restore" => "restoring needs an admin (--admin)",
                    "create backups" => {
                        "creating backups needs an admin (--admin) or a machine identity (--machine-identity)"
                    }
                    "read backups" => "reading needs a listed reader (--reader)",
                    _ => "this needs an admin (--admin)",
                }
            )))
        };
        match right_of(method) {
            Right::Read => {
                if self.readers.is_empty() || admin || machine || listed(&self.readers, id) {
                    Ok(())
                } else {
                    deny("read backups")
                }
            }
            Right::Create => {
                let lists_empty = self.admins.is_empty() && self.machines.is_empty();
                if admin || machine || (!strict && lists_empty) {
                    Ok(())
                } else {
                    deny("create backups")
                }
            }
            Right::Restore | Right::Admin => {
                if admin || (!strict && self.admins.is_empty()) {
                    Ok(())
                } else if right_of(method) == Right::Restore {
                    deny("restore")
                } else {
                    deny("call this method")
                }
            }
        }
    }
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub enum Mode {
    /// No check (loopback only).
    None,
    /// The gateway's `GatewayAuth.Check`.
    Gateway(gateway::Gateway),
    /// Local verification of the gateway's JWTs.
    Jwt(Arc<jwt::JwtVerifier>),
}

impl Mode {
    /// `none`, `gateway` or `jwt`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Gateway(_) => "gateway",
            Mode::Jwt(_) => "jwt",
        }
    }
}

/// The bearer token of a request, as Monoskope's services read it.
pub fn bearer(headers: &http::HeaderMap) -> Result<String, AuthError> {
    let v = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| AuthError::Unauthenticated("Request unauthenticated with bearer".into()))?;
    let v = v
        .to_str()
        .map_err(|_| AuthError::Unauthenticated("Bad authorization string".into()))?;
    let (scheme, token) = v
        .split_once(' ')
        .ok_or_else(|| AuthError::Unauthenticated("Bad authorization string".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Unauthenticated(
            "Request unauthenticated with bearer".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Unauthenticated("empty bearer token".into()));
    }
    Ok(token.to_string())
}

/// The authentication layer's shared state.
#[derive(Debug)]
pub struct Authenticator {
    /// How tokens are checked.
    pub mode: Mode,
    /// Who may do what.
    pub policy: Policy,
}

impl Authenticator {
    /// Authenticates and authorises one request; returns it (body restored) with the caller's
    /// [`Identity`] in its extensions.
    async fn admit(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Request<Body>, (String, AuthError)> {
        let method = req.uri().path().to_string();
        let (strict, token) = match &self.mode {
            Mode::None => return Ok(req),
            Mode::Gateway(_) => (false, bearer(req.headers())),
            Mode::Jwt(_) => (true, bearer(req.headers())),
        };
        let token = token.map_err(|e| ("-".to_string(), e))?;
        let (req, id) = match &self.mode {
            Mode::Gateway(g) => {
                let (parts, body) = req.into_parts();
                let bytes = http_body_util::Limited::new(body, MAX_BUFFERED)
                    .collect()
                    .await
                    .map_err(|e| {
                        (
                            "-".to_string(),
                            AuthError::Unauthenticated(format!("cannot read the request: {e}")),
                        )
                    })?
                    .to_bytes();
                // One uncompressed gRPC frame: flag 0, 4-byte length, message.
                let json = match bytes.first() {
                    Some(0) if bytes.len() >= 5 => gateway::request_json(&method, &bytes[5..]),
                    _ => Vec::new(),
                };
                let id = g
                    .check(&method, &token, json)
                    .await
                    .map_err(|e| ("-".to_string(), e))?;
                let req =
                    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
                (req, id)
            }
            Mode::Jwt(v) => {
                let id = v.verify(&token).await.map_err(|e| ("-".to_string(), e))?;
                (req, id)
            }
            Mode::None => return Ok(req),
        };
        self.policy
            .authorize(&method, &id, strict)
            .map_err(|e| (id.label(), e))?;
        let mut req = req;
        req.extensions_mut().insert(Caller(id));
        Ok(req)
    }
}

/// The tower layer.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer over `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The tower service the layer wraps around the router.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            let method = req.uri().path().to_string();
            let started = std::time::Instant::now();
            let res = if BYPASS.iter().any(|p| method.starts_with(p)) {
                inner.call(req).await
            } else {
                match auth.admit(req).await {
                    Ok(req) => inner.call(req).await,
                    Err((who, e)) => {
                        // The reason, never the token.
                        tracing::warn!(method, caller = who, code = ?e.status().code(), reason = %e, "call refused");
                        Ok(e.status().into_http())
                    }
                }
            };
            if let Ok(r) = &res {
                crate::ops::metrics::record_rpc(&method, r.headers(), started.elapsed());
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str, email: &str) -> Identity {
        Identity {
            id: id.into(),
            email: email.into(),
            ..Default::default()
        }
    }

    #[test]
    fn policy_rights() {
        let p = Policy {
            admins: vec!["admin@example.com".into()],
            machines: vec!["backup-cron".into()],
            readers: vec![],
        };
        let svc = "/monoskope.backup.v1.BackupService/";
        let admin = who("u1", "Admin@Example.com");
        let cron = who("backup-cron", "");
        let user = who("u2", "user@example.com");
        for m in ["ListBackups", "GetStatus", "CreateBackup", "Restore"] {
            assert!(
                p.authorize(&format!("{svc}{m}"), &admin, true).is_ok(),
                "{m}"
            );
        }
        assert!(p
            .authorize(&format!("{svc}CreateBackup"), &cron, true)
            .is_ok());
        assert!(p.authorize(&format!("{svc}Restore"), &cron, true).is_err());
        assert!(p.authorize(&format!("{svc}GetStatus"), &user, true).is_ok());
        assert!(p
            .authorize(&format!("{svc}CreateBackup"), &user, true)
            .is_err());
        let e = p
            .authorize(&format!("{svc}Restore"), &user, true)
            .expect_err("user restores");
        assert!(matches!(e, AuthError::PermissionDenied(_)));
        // Gateway mode with no lists: the gateway's policy is the whole truth.
        let open = Policy::default();
        assert!(open
            .authorize(&format!("{svc}Restore"), &user, false)
            .is_ok());
        assert!(open
            .authorize(&format!("{svc}Restore"), &user, true)
            .is_err());
        let readers = Policy {
            readers: vec!["ops@example.com".into()],
            ..p.clone()
        };
        assert!(readers
            .authorize(&format!("{svc}GetStatus"), &user, true)
            .is_err());
        assert!(readers
            .authorize(&format!("{svc}GetStatus"), &cron, true)
            .is_ok());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert!(bearer(&h)
            .expect_err("missing")
            .to_string()
            .contains("unauthenticated with bearer"));
        h.insert("authorization", "Bearer abc".parse().expect("value"));
        assert_eq!(bearer(&h).expect("ok"), "abc");
        h.insert("authorization", "bearer abc".parse().expect("value"));
        assert_eq!(bearer(&h).expect("ok"), "abc");
        h.insert("authorization", "abc".parse().expect("value"));
        assert_eq!(
            bearer(&h).expect_err("no space").to_string(),
            "Bad authorization string"
        );
        h.insert("authorization", "Basic abc".parse().expect("value"));
        assert!(bearer(&h).is_err());
    }
}
