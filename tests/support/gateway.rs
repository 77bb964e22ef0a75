//! A stand-in for Monoskope's gateway (`GatewayAuth.Check`) that decides as the real one does
//! (v0.7.1: `internal/gateway/auth_server.go` and the chart's `policies.rego`, read, not copied;
//! the rules are restated in `docs/MONOSKOPE.md` §5):
//!
//! 1. the token must verify (else `UNAUTHENTICATED "authentication failed"`);
//! 2. roles are looked up from the user's role bindings **only when the token's subject is a
//!    UUID** (a token issued with `monoctl create api-token -u NAME` for a name has none);
//! 3. the call is allowed when the user has the role `admin` in the scope `system`, or its path
//!    starts with one of the gateway's allowed paths, or one of the token's scopes is granted the
//!    path by a scoped-path rule; otherwise `PERMISSION_DENIED "authorization failed"`;
//! 4. an allowed call is answered with the tags `x-auth-id` (the subject), `x-auth-name`,
//!    `x-auth-email` and `x-auth-not-before`.
//!
//! Known differences from the real gateway: tokens are HS256 JWTs signed with a test secret
//! (the real ones are RS256, verified against the gateway's JWKS and issuer); the tenant-admin
//! rule (tenant admins changing role bindings of their tenant through `CommandHandler/Execute`)
//! is left out, since it never applies to the BackupService; client-certificate authentication is
//! left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use monoskope_backup_api::gateway::check_response::CheckResponseTag;
use monoskope_backup_api::gateway::gateway_auth_server::{GatewayAuth, GatewayAuthServer};
use monoskope_backup_api::gateway::{CheckRequest, CheckResponse};

/// The paths the real gateway lets any authenticated caller through (its policy's
/// `allowed_paths`, v0.7.1).
pub const ALLOWED_PATHS: &[&str] = &[
    "/gateway.Gateway",
    "/gateway.ClusterAuth/GetAuthToken",
    "/domain.CommandHandlerExtensions",
    "/common.ServiceInformationService/GetServiceInformation",
    "/domain.ClusterAccess/GetClusterAccess",
    "/domain.User",
    "/domain.Tenant",
    "/domain.Cluster",
];

/// The secret the stand-in signs and verifies its tokens with.
const SECRET: &[u8] = b"gateway stand-in test secret";
/// The issuer the stand-in's tokens name (the gateway's URL in Monoskope).
pub const ISSUER: &str = "https://gateway.stand-in.test";

/// A role binding of a user: role, scope and (for a tenant scope) the resource.
#[derive(Debug, Clone)]
pub struct RoleBinding {
    /// `admin`, `user`, …
    pub role: String,
    /// `system` or `tenant`.
    pub scope: String,
    /// The tenant id for a tenant scope, else empty.
    pub resource: String,
}

/// A user of the gateway's store, by id.
#[derive(Debug, Clone)]
pub struct User {
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Role bindings.
    pub roles: Vec<RoleBinding>,
}

#[derive(Default)]
struct Rules {
    users: HashMap<String, User>,
    /// (scope, path prefixes): the policy's `scoped_paths`.
    scoped: Vec<(String, Vec<String>)>,
}

/// The stand-in: its rules, and every `Check` it answered.
#[derive(Clone)]
pub struct Gateway {
    rules: Arc<Mutex<Rules>>,
    /// Every request it was asked, in order.
    pub seen: Arc<Mutex<Vec<CheckRequest>>>,
}

impl Default for Gateway {
    fn default() -> Self {
        let rules = Rules {
            users: HashMap::new(),
            // The policy's one scoped rule in v0.7.1.
            scoped: vec![(
                "WRITE_SCIM".into(),
                vec![
                    "/scim/".into(),
                    "/eventsourcing.CommandHandler/Execute".into(),
                    "/domain.User/".into(),
                ],
            )],
        };
        Self {
            rules: Arc::new(Mutex::new(rules)),
            seen: Arc::default(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    exp: i64,
    nbf: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    /// Space-separated scopes, as the gateway writes them.
    #[serde(default)]
    scope: String,
}

impl Gateway {
    /// Adds a user (`monoctl create user EMAIL`) and returns its id.
    pub fn create_user(&self, email: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let name = email.split('@').next().unwrap_or(email).to_string();
        self.rules.lock().expect("rules").users.insert(
            id.clone(),
            User {
                name,
                email: email.into(),
                roles: Vec::new(),
            },
        );
        id
    }

    /// Binds a role (`monoctl create rolebinding EMAIL --role ROLE --scope SCOPE`).
    pub fn bind(&self, user_id: &str, role: &str, scope: &str) {
        let mut rules = self.rules.lock().expect("rules");
        let u = rules.users.get_mut(user_id).expect("known user");
        u.roles.push(RoleBinding {
            role: role.into(),
            scope: scope.into(),
            resource: String::new(),
        });
    }

    /// Adds a scoped-path rule to the policy (a policy the operator replaced).
    pub fn grant_scope(&self, scope: &str, path_prefix: &str) {
        self.rules
            .lock()
            .expect("rules")
            .scoped
            .push((scope.into(), vec![path_prefix.into()]));
    }

    /// An API token as `monoctl create api-token -u USER -s SCOPES` issues it: USER is a user
    /// id (a UUID: the subject, with that user's name and e-mail) or any name.
    pub fn api_token(&self, user: &str, scopes: &[&str]) -> String {
        let (name, email) = match self.rules.lock().expect("rules").users.get(user) {
            Some(u) => (u.name.clone(), u.email.clone()),
            None => (user.to_string(), String::new()),
        };
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.into(),
            iss: ISSUER.into(),
            exp: now + 3600,
            nbf: now - 60,
            name,
            email,
            scope: scopes.join(" "),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    fn decide(&self, r: &CheckRequest) -> Result<CheckResponse, tonic::Status> {
        let denied = || tonic::Status::unauthenticated("authentication failed");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(
            &r.access_token,
            &jsonwebtoken::DecodingKey::from_secret(SECRET),
            &v,
        )
        .map_err(|_| denied())?
        .claims;
        let rules = self.rules.lock().expect("rules");
        // Roles only for a subject that is a user id.
        let roles: Vec<RoleBinding> = match uuid::Uuid::parse_str(&claims.sub) {
            Ok(_) => rules
                .users
                .get(&claims.sub)
                .map(|u| u.roles.clone())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let path = r.full_method_name.as_str();
        let system_admin = roles
            .iter()
            .any(|b| b.scope == "system" && b.role == "admin");
        let allowed_path = ALLOWED_PATHS.iter().any(|p| path.starts_with(p));
        let scoped = claims.scope.split(' ').any(|s| {
            rules
                .scoped
                .iter()
                .any(|(scope, paths)| scope == s && paths.iter().any(|p| path.starts_with(p)))
        });
        if !(system_admin || allowed_path || scoped) {
            return Err(tonic::Status::permission_denied("authorization failed"));
        }
        let tag = |k: &str, v: String| CheckResponseTag {
            key: k.into(),
            value: v,
        };
        let not_before = chrono::DateTime::from_timestamp(claims.nbf, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Ok(CheckResponse {
            tags: vec![
                tag("x-auth-id", claims.sub),
                tag("x-auth-name", claims.name),
                tag("x-auth-email", claims.email),
                tag("x-auth-not-before", not_before),
            ],
        })
    }

    /// Serves the stand-in on a loopback port; returns its address (`HOST:PORT`).
    pub async fn start(&self) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let svc = GatewayAuthServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
        });
        addr
    }
}

#[tonic::async_trait]
impl GatewayAuth for Gateway {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let r = request.into_inner();
        self.seen.lock().expect("lock").push(r.clone());
        self.decide(&r).map(tonic::Response::new)
    }
}
