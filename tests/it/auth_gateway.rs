//! Authentication through the gateway's GatewayAuth, the methods that answer without a token,
//! and `--auth none` off loopback.

use std::sync::{Arc, Mutex};

use monoskope_backup_api::backup::v1 as pb;
use monoskope_backup_api::gateway::check_response::CheckResponseTag;
use monoskope_backup_api::gateway::gateway_auth_server::{GatewayAuth, GatewayAuthServer};
use monoskope_backup_api::gateway::{CheckRequest, CheckResponse};
use monoskope_backup_tests::{free_port, run};
use pb::backup_service_client::BackupServiceClient;
use serde_json::json;
use tonic::Code;

#[allow(unused_imports)]
use super::auth::*;

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
