//! Authentication and authorisation of the BackupService over real gRPC: jwt mode with keys made
//! here by openssl, gateway mode against a stand-in that speaks the documented `GatewayAuth`
//! contract, every method refused without a token, and tokens kept out of the logs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monoskope_backup_api::backup::v1 as pb;
use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::gateway::check_response::CheckResponseTag;
use monoskope_backup_api::gateway::gateway_auth_server::{GatewayAuth, GatewayAuthServer};
use monoskope_backup_api::gateway::{CheckRequest, CheckResponse};
use monoskope_backup_tests::{
    bin, free_port, keygen, openssl, run, spawn_until_line_with, Devstore, Proc,
};
use pb::backup_service_client::BackupServiceClient;
use serde_json::json;
use tonic::Code;

const ISSUER: &str = "https://m8.example.com";
const SVC: &str = "/monoskope.backup.v1.BackupService/";

/// A gateway signing key like the chart's (RSA-2048, self-signed certificate); returns the
/// private key PEM, the certificate path and the key id (hex SHA-256 of the SPKI DER).
fn signing_key(dir: &Path, name: &str) -> (Vec<u8>, String, String) {
    let (k, c) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &k,
            "-out",
            &c,
            "-days",
            "2",
            "-subj",
            "/CN=m8-authentication",
        ],
    );
    let pubkey = openssl(dir, &["x509", "-in", &c, "-noout", "-pubkey"]);
    std::fs::write(dir.join(format!("{name}.pub")), pubkey).expect("pub");
    let der = openssl(
        dir,
        &[
            "pkey",
            "-pubin",
            "-in",
            &format!("{name}.pub"),
            "-outform",
            "DER",
        ],
    );
    std::fs::write(dir.join(format!("{name}.der")), &der).expect("der");
    let sum = Command::new("sha256sum")
        .arg(dir.join(format!("{name}.der")))
        .output()
        .expect("sha256sum");
    let kid = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    (
        std::fs::read(dir.join(&k)).expect("key"),
        dir.join(&c).to_str().expect("utf8").to_string(),
        kid,
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims as the gateway issues them for a user token.
fn claims(sub: &str, email: &str) -> serde_json::Value {
    let t = now();
    json!({
        "iss": ISSUER, "sub": sub, "aud": ["m8api"], "exp": t + 3600, "nbf": t, "iat": t,
        "jti": uuid::Uuid::new_v4().to_string(), "name": "Some One", "email": email,
        "email_verified": true, "scope": "API", "is_api_token": false,
    })
}

fn sign(key_pem: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).expect("rsa key"),
    )
    .expect("sign")
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Calls `method` with `token` (raw `authorization` value when `raw`), returning the status
/// code (Ok on success) and the message.
async fn call(url: &str, method: &str, auth: Option<&str>) -> (Code, String) {
    let mut c = BackupServiceClient::connect(url.to_string())
        .await
        .expect("connect");
    fn req<T>(m: T, auth: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        if let Some(a) = auth {
            r.metadata_mut()
                .insert("authorization", a.parse().expect("ascii"));
        }
        r
    }
    let res = match method {
        "GetStatus" => c
            .get_status(req(pb::GetStatusRequest {}, auth))
            .await
            .map(|_| ()),
        "ListBackups" => c
            .list_backups(req(pb::ListBackupsRequest::default(), auth))
            .await
            .map(|_| ()),
        "CreateBackup" => c
            .create_backup(req(
                pb::CreateBackupRequest {
                    wait: true,
                    incremental: false,
                },
                auth,
            ))
            .await
            .map(|r| {
                let b = r.into_inner().backup.expect("backup");
                assert!(b.error.is_empty(), "backup failed: {}", b.error);
            }),
        "Restore" => c
            .restore(req(
                pb::RestoreRequest {
                    backup_id: "latest".into(),
                    ..Default::default()
                },
                auth,
            ))
            .await
            .map(|_| ()),
        m => panic!("unknown method {m}"),
    };
    match res {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

struct Env {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    es: Devstore,
    key: String,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().to_path_buf();
    let es = Devstore::start(&[]);
    let mut c = EventStoreClient::connect(es.url()).await.expect("connect");
    c.store(tokio_stream::iter(
        monoskope_backup::devstore::sample::events(200, 20, 1_700_000_000, 3).collect::<Vec<_>>(),
    ))
    .await
    .expect("store");
    let key = keygen(&p);
    Env {
        key,
        dir: p,
        es,
        _dir: dir,
    }
}

/// Starts `serve` with the environment's store, destination and key plus `args`; stderr (the
/// log) goes to `log`.
fn serve(e: &Env, args: &[&str], log: &Path) -> (Proc, String) {
    let mut cmd = Command::new(bin("backup-server"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--event-store",
        &e.es.addr,
    ])
    .args([
        "--destination",
        &format!("file://{}", e.dir.join("backups").display()),
        "--catalog",
        &format!("sqlite://{}", e.dir.join("catalog.db").display()),
        "--key-file",
        &e.key,
    ])
    .args(args)
    .env("BACKUP_EMIT_EVENTS", "false")
    .env("RUST_LOG", "debug");
    let log = std::fs::File::create(log).expect("log");
    let (proc, line) = spawn_until_line_with(cmd, "backup-server listening on ", Stdio::from(log));
    let addr = line
        .trim_start_matches("backup-server listening on ")
        .trim();
    (proc, format!("http://{addr}"))
}

#[tokio::test]
async fn jwt_mode_accepts_the_gateways_tokens_and_nothing_else() {
    let e = env().await;
    let (key, cert, kid) = signing_key(&e.dir, "gw");
    let (other_key, other_cert, other_kid) = signing_key(&e.dir, "other");
    let key_file = e.dir.join("jwt.crt");
    std::fs::copy(&cert, &key_file).expect("copy");
    let log = e.dir.join("server.log");
    let (_p, url) = serve(
        &e,
        &[
            "--auth",
            "jwt",
            "--jwt-public-key",
            key_file.to_str().expect("utf8"),
            "--jwt-issuer",
            ISSUER,
            "--admin",
            "admin@example.com",
            "--machine-identity",
            "backup-cron",
        ],
        &log,
    );
    let admin = sign(
        &key,
        &kid,
        &claims("7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f", "admin@example.com"),
    );
    let user = sign(
        &key,
        &kid,
        &claims("2a9e0f3b-1111-4c5a-9b2f-0a1b2c3d4e5f", "user@example.com"),
    );
    let mut m = claims("backup-cron", "");
    m["is_api_token"] = json!(true);
    m.as_object_mut().expect("object").remove("email");
    m.as_object_mut().expect("object").remove("email_verified");
    let machine = sign(&key, &kid, &m);
    let mut issued = vec![admin.clone(), user.clone(), machine.clone()];

    // The rights: admins everything, machines create, users read.
    assert_eq!(
        call(&url, "GetStatus", Some(&bearer(&admin))).await.0,
        Code::Ok
    );
    assert_eq!(
        call(&url, "CreateBackup", Some(&bearer(&admin))).await.0,
        Code::Ok
    );
    assert_eq!(
        call(&url, "CreateBackup", Some(&bearer(&machine))).await.0,
        Code::Ok
    );
    let (code, msg) = call(&url, "Restore", Some(&bearer(&machine))).await;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert_eq!(
        call(&url, "ListBackups", Some(&bearer(&user))).await.0,
        Code::Ok
    );
    let (code, msg) = call(&url, "Restore", Some(&bearer(&user))).await;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("needs an admin"), "{msg}");
    assert_eq!(
        call(&url, "CreateBackup", Some(&bearer(&user))).await.0,
        Code::PermissionDenied
    );
    // An admin's restore passes authentication and is refused by the engine (non-empty store).
    let (code, msg) = call(&url, "Restore", Some(&bearer(&admin))).await;
    assert_eq!(code, Code::FailedPrecondition, "{msg}");

    // Identity in the catalog records.
    let mut c = BackupServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let mut r = tonic::Request::new(pb::ListBackupsRequest::default());
    r.metadata_mut()
        .insert("authorization", bearer(&admin).parse().expect("ascii"));
    let list = c.list_backups(r).await.expect("list").into_inner().backups;
    let mut who: Vec<String> = list.iter().map(|b| b.created_by.clone()).collect();
    who.sort();
    assert_eq!(who, vec!["admin@example.com", "backup-cron"]);

    // Everything that must be refused, with the status a caller can act on.
    let t = now();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f", "admin@example.com");
        f(&mut c);
        c
    };
    let expired = sign(
        &key,
        &kid,
        &with(&|c| {
            c["exp"] = json!(t - 600);
            c["nbf"] = json!(t - 7200);
            c["iat"] = json!(t - 7200);
        }),
    );
    let future = sign(
        &key,
        &kid,
        &with(&|c| {
            c["nbf"] = json!(t + 3600);
            c["iat"] = json!(t + 3600);
            c["exp"] = json!(t + 7200);
        }),
    );
    let issuer = sign(
        &key,
        &kid,
        &with(&|c| c["iss"] = json!("https://evil.example.com")),
    );
    let cluster = sign(
        &key,
        &kid,
        &with(&|c| {
            c["aud"] = json!(["k8sauth"]);
            c["scope"] = json!("NONE");
        }),
    );
    let forged = sign(&other_key, &kid, &with(&|_| {}));
    let foreign_kid = sign(&other_key, &other_kid, &with(&|_| {}));
    let payload = b64(with(&|_| {}).to_string().as_bytes());
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &with(&|_| {}),
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&cert).expect("cert")),
    )
    .expect("hs256");
    issued.extend([
        expired.clone(),
        future.clone(),
        issuer.clone(),
        cluster.clone(),
        forged.clone(),
        foreign_kid.clone(),
        hs256.clone(),
    ]);
    let cases: Vec<(&str, Option<String>, Code, &str)> = vec![
        (
            "no token",
            None,
            Code::Unauthenticated,
            "unauthenticated with bearer",
        ),
        (
            "no scheme",
            Some(admin.clone()),
            Code::Unauthenticated,
            "Bad authorization string",
        ),
        (
            "basic",
            Some(format!("Basic {admin}")),
            Code::Unauthenticated,
            "bearer",
        ),
        (
            "garbage",
            Some(bearer("not.a.jwt")),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "expired",
            Some(bearer(&expired)),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "not yet valid",
            Some(bearer(&future)),
            Code::Unauthenticated,
            "not valid yet",
        ),
        (
            "wrong issuer",
            Some(bearer(&issuer)),
            Code::Unauthenticated,
            "issuer",
        ),
        (
            "cluster token",
            Some(bearer(&cluster)),
            Code::Unauthenticated,
            "audience",
        ),
        (
            "wrong signature",
            Some(bearer(&forged)),
            Code::Unauthenticated,
            "signature",
        ),
        (
            "another key",
            Some(bearer(&foreign_kid)),
            Code::Unauthenticated,
            "key id",
        ),
        (
            "alg none",
            Some(bearer(&alg_none)),
            Code::Unauthenticated,
            "",
        ),
        (
            "HS256 with the public key",
            Some(bearer(&hs256)),
            Code::Unauthenticated,
            "RS256",
        ),
    ];
    for (what, auth, want, text) in &cases {
        for method in ["GetStatus", "Restore"] {
            let (code, msg) = call(&url, method, auth.as_deref()).await;
            assert_eq!(code, *want, "{what} on {method}: {msg}");
            assert!(
                msg.contains(text),
                "{what} on {method}: {msg:?} lacks {text:?}"
            );
        }
    }
    let mut none_scope = claims("7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f", "admin@example.com");
    none_scope["scope"] = json!("NONE");
    let none_scope = sign(&key, &kid, &none_scope);
    issued.push(none_scope.clone());
    assert_eq!(
        call(&url, "GetStatus", Some(&bearer(&none_scope))).await.0,
        Code::PermissionDenied
    );

    // The gateway's key is replaced on disk (atomically, as a Secret update is): new tokens
    // work, tokens of the old key stop working, without a restart.
    let staged = e.dir.join("jwt.crt.new");
    std::fs::copy(&other_cert, &staged).expect("copy");
    std::fs::rename(&staged, &key_file).expect("rename");
    let rotated = sign(
        &other_key,
        &other_kid,
        &claims("7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f", "admin@example.com"),
    );
    issued.push(rotated.clone());
    let mut ok = false;
    for _ in 0..100 {
        if call(&url, "GetStatus", Some(&bearer(&rotated))).await.0 == Code::Ok {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a token of the new key is still refused after 10 s");
    let (code, msg) = call(&url, "GetStatus", Some(&bearer(&admin))).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("key id"), "{msg}");

    // The log (at debug level) tells what was refused, and never holds a token.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("call refused"), "no refusals logged:\n{text}");
    for t in &issued {
        let sig = t.rsplit('.').next().expect("signature");
        assert!(!text.contains(t.as_str()), "a token is in the log");
        assert!(
            sig.is_empty() || !text.contains(sig),
            "a token's signature is in the log"
        );
    }
}

/// A gateway stand-in: `GatewayAuth.Check` as the contract describes it.
#[derive(Clone, Default)]
pub(crate) struct StandIn {
    pub(crate) seen: Arc<Mutex<Vec<CheckRequest>>>,
}

#[tonic::async_trait]
impl GatewayAuth for StandIn {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let r = request.into_inner();
        self.seen.lock().expect("lock").push(r.clone());
        let tag = |k: &str, v: &str| CheckResponseTag {
            key: k.into(),
            value: v.into(),
        };
        match r.access_token.as_str() {
            "token-of-admin" => Ok(tonic::Response::new(CheckResponse {
                tags: vec![
                    tag("x-auth-id", "6f1c3c0e-8d1e-4c5a-9b2f-0a1b2c3d4e5f"),
                    tag("x-auth-name", "Ada Admin"),
                    tag("x-auth-email", "ada@example.com"),
                    tag("x-auth-not-before", "2026-11-24T08:00:00Z"),
                ],
            })),
            "token-of-user" => Err(tonic::Status::permission_denied("authorization failed")),
            _ => Err(tonic::Status::unauthenticated("authentication failed")),
        }
    }
}

pub(crate) async fn start_stand_in() -> (StandIn, String) {
    let s = StandIn::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let svc = GatewayAuthServer::new(s.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    (s, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_asks_the_gateway_and_takes_its_tags() {
    let e = env().await;
    let (gw, gw_addr) = start_stand_in().await;
    let log = e.dir.join("server.log");
    let (_p, url) = serve(&e, &["--auth", "gateway", "--gateway", &gw_addr], &log);

    assert_eq!(
        call(&url, "CreateBackup", Some("bearer token-of-admin"))
            .await
            .0,
        Code::Ok
    );
    let (code, msg) = call(&url, "Restore", Some("Bearer token-of-user")).await;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    let (code, msg) = call(&url, "GetStatus", Some("Bearer forged")).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("gateway auth failed"), "{msg}");

    {
        let seen = gw.seen.lock().expect("lock");
        assert_eq!(seen.len(), 3, "one Check per call");
        assert_eq!(seen[0].full_method_name, format!("{SVC}CreateBackup"));
        assert_eq!(
            seen[0].access_token, "token-of-admin",
            "the raw token, without the scheme"
        );
        let body: serde_json::Value = serde_json::from_slice(&seen[0].request).expect("json");
        assert_eq!(body, json!({"wait": true}), "the request as protobuf-JSON");
        assert_eq!(seen[1].full_method_name, format!("{SVC}Restore"));
        let body: serde_json::Value = serde_json::from_slice(&seen[1].request).expect("json");
        assert_eq!(body, json!({"backupId": "latest"}));
    }

    // The gateway's tags are the caller's identity in the catalog.
    let mut c = BackupServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let mut r = tonic::Request::new(pb::ListBackupsRequest::default());
    r.metadata_mut().insert(
        "authorization",
        "Bearer token-of-admin".parse().expect("ascii"),
    );
    let list = c.list_backups(r).await.expect("list").into_inner().backups;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].created_by, "ada@example.com");

    // A gateway that cannot be reached is UNAVAILABLE, never a pass.
    let down = format!("127.0.0.1:{}", free_port());
    let (_p2, url2) = serve(
        &e,
        &["--auth", "gateway", "--gateway", &down],
        &e.dir.join("down.log"),
    );
    let (code, msg) = call(&url2, "GetStatus", Some("Bearer token-of-admin")).await;
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(msg.contains(&down), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_method_but_health_and_reflection_answers_without_a_token() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let e = env().await;
    let (gw, gw_addr) = start_stand_in().await;
    let (_p, url) = serve(
        &e,
        &["--auth", "gateway", "--gateway", &gw_addr],
        &e.dir.join("s.log"),
    );
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let reflect = |m: MessageRequest| {
        let mut c = ServerReflectionClient::new(channel.clone());
        async move {
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            };
            let mut s = c
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .expect("reflection needs no token")
                .into_inner();
            s.message()
                .await
                .expect("answer")
                .expect("one")
                .message_response
        }
    };
    let services = match reflect(MessageRequest::ListServices(String::new())).await {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let mut called = 0;
    for svc in &services {
        let files = match reflect(MessageRequest::FileContainingSymbol(svc.clone())).await {
            Some(MessageResponse::FileDescriptorResponse(f)) => f.file_descriptor_proto,
            other => panic!("{other:?}"),
        };
        let (pkg_svc, methods): (String, Vec<String>) = files
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("descriptor"))
            .find_map(|f| {
                f.service.iter().find_map(|s| {
                    let full = format!("{}.{}", f.package(), s.name());
                    (full == *svc).then(|| {
                        (
                            full.clone(),
                            s.method.iter().map(|m| m.name().to_string()).collect(),
                        )
                    })
                })
            })
            .expect("the service's descriptor");
        if svc.starts_with("grpc.") {
            continue; // health and reflection are open by design (checked below)
        }
        assert!(!methods.is_empty());
        for m in methods {
            let path = format!("/{pkg_svc}/{m}");
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.expect("ready");
            let res: Result<tonic::Response<()>, tonic::Status> = grpc
                .unary(
                    tonic::Request::new(()),
                    path.parse().expect("path"),
                    tonic_prost::ProstCodec::<(), ()>::default(),
                )
                .await;
            let code = res.err().map(|s| s.code());
            assert_eq!(
                code,
                Some(Code::Unauthenticated),
                "{path} answered without a token"
            );
            called += 1;
        }
    }
    assert_eq!(
        called, 5,
        "the five BackupService methods were found and called"
    );
    assert!(
        gw.seen.lock().expect("lock").is_empty(),
        "no token, no Check"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "monoskope.backup.v1.BackupService".into(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(h.into_inner().status, 1, "SERVING");
}

#[test]
fn auth_none_is_refused_off_loopback_and_jwt_needs_its_settings() {
    let out = run(
        "backup-server",
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--auth",
            "none",
            "--destination",
            "file:///tmp/x",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("only allowed on loopback"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let out = run(
        "backup-server",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "jwt",
            "--jwt-issuer",
            ISSUER,
            "--destination",
            "file:///tmp/x",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("--jwt-public-key PATH or --jwks-url URL"),
        "{}",
        out.stderr
    );
    let out = run(
        "backup-server",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "gateway",
            "--destination",
            "file:///tmp/x",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("--gateway HOST:PORT"), "{}", out.stderr);
}

/// A JWKS endpoint serving whatever `body` holds.
async fn jwks_server(body: Arc<Mutex<String>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.lock().expect("lock").clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=86400, must-revalidate\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/keys")
}

/// The gateway's JWKS for the key `name` made by [`signing_key`]: exactly one RSA key.
fn jwks_of(dir: &Path, name: &str, kid: &str) -> String {
    let out = openssl(
        dir,
        &[
            "rsa",
            "-pubin",
            "-in",
            &format!("{name}.pub"),
            "-noout",
            "-modulus",
        ],
    );
    let hex = String::from_utf8_lossy(&out)
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": "AQAB"}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_mode_with_the_gateways_jwks_follows_a_key_change() {
    let e = env().await;
    let (key, _, kid) = signing_key(&e.dir, "gw");
    let (new_key, _, new_kid) = signing_key(&e.dir, "gw2");
    let body = Arc::new(Mutex::new(jwks_of(&e.dir, "gw", &kid)));
    let url_keys = jwks_server(body.clone()).await;
    let args = |jwks: &str| -> Vec<String> {
        [
            "--auth",
            "jwt",
            "--jwks-url",
            jwks,
            "--jwks-refresh",
            "1s",
            "--jwt-issuer",
            ISSUER,
            "--admin",
            "admin@example.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&url_keys);
    let (_p, url) = serve(
        &e,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &e.dir.join("j.log"),
    );
    let sub = "7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f";
    let old = sign(&key, &kid, &claims(sub, "admin@example.com"));
    let (code, msg) = call(&url, "GetStatus", Some(&bearer(&old))).await;
    assert_eq!(code, Code::Ok, "{msg}");
    let new = sign(&new_key, &new_kid, &claims(sub, "admin@example.com"));
    assert_eq!(
        call(&url, "GetStatus", Some(&bearer(&new))).await.0,
        Code::Unauthenticated
    );

    // The gateway's key changes: the JWKS serves the new one, the service follows.
    *body.lock().expect("lock") = jwks_of(&e.dir, "gw2", &new_kid);
    let mut ok = false;
    for _ in 0..100 {
        if call(&url, "GetStatus", Some(&bearer(&new))).await.0 == Code::Ok {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a token of the new key is still refused after 10 s");
    assert_eq!(
        call(&url, "GetStatus", Some(&bearer(&old))).await.0,
        Code::Unauthenticated
    );

    // A JWKS endpoint that never answered: UNAVAILABLE, not a pass.
    let down = format!("http://127.0.0.1:{}/keys", free_port());
    let a = args(&down);
    let (_p2, url2) = serve(
        &e,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &e.dir.join("j2.log"),
    );
    let (code, msg) = call(&url2, "GetStatus", Some(&bearer(&old))).await;
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(msg.contains("JWKS"), "{msg}");
}
