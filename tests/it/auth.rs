//! Authentication and authorisation of the BackupService over real gRPC: jwt mode with keys made
//! here by openssl, gateway mode against a stand-in that speaks the documented `GatewayAuth`
//! contract, every method refused without a token, and tokens kept out of the logs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monoskope_backup_api::backup::v1 as pb;
use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_tests::{
    bin, free_port, keygen, openssl, spawn_until_line_with, Devstore, Proc,
};
use pb::backup_service_client::BackupServiceClient;
use serde_json::json;
use tonic::Code;

pub(super) const ISSUER: &str = "https://m8.example.com";

pub(super) const SVC: &str = "/monoskope.backup.v1.BackupService/";

/// A gateway signing key like the chart's (RSA-2048, self-signed certificate); returns the
/// private key PEM, the certificate path and the key id (hex SHA-256 of the SPKI DER).
pub(super) fn signing_key(dir: &Path, name: &str) -> (Vec<u8>, String, String) {
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

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims as the gateway issues them for a user token.
pub(super) fn claims(sub: &str, email: &str) -> serde_json::Value {
    let t = now();
    json!({
        "iss": ISSUER, "sub": sub, "aud": ["m8api"], "exp": t + 3600, "nbf": t, "iat": t,
        "jti": uuid::Uuid::new_v4().to_string(), "name": "Some One", "email": email,
        "email_verified": true, "scope": "API", "is_api_token": false,
    })
}

pub(super) fn sign(key_pem: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).expect("rsa key"),
    )
    .expect("sign")
}

pub(super) fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Calls `method` with `token` (raw `authorization` value when `raw`), returning the status
/// code (Ok on success) and the message.
pub(super) async fn call(url: &str, method: &str, auth: Option<&str>) -> (Code, String) {
    let mut c = BackupServiceClient::connect(url.to_string())
        .await
        .expect("connect");
    pub(super) fn req<T>(m: T, auth: Option<&str>) -> tonic::Request<T> {
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

pub(super) fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

pub(super) struct Env {
    pub(super) _dir: tempfile::TempDir,
    pub(super) dir: std::path::PathBuf,
    pub(super) es: Devstore,
    pub(super) key: String,
}

pub(super) async fn env() -> Env {
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
pub(super) fn serve(e: &Env, args: &[&str], log: &Path) -> (Proc, String) {
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

/// A JWKS endpoint serving whatever `body` holds.
pub(super) async fn jwks_server(body: Arc<Mutex<String>>) -> String {
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
pub(super) fn jwks_of(dir: &Path, name: &str, kid: &str) -> String {
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
