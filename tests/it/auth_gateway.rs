//! Authentication through the gateway's GatewayAuth, the methods that answer without a token,
//! and `--auth none` off loopback.

use monoskope_backup_api::backup::v1 as pb;
use monoskope_backup_tests::gateway::Gateway;
use monoskope_backup_tests::{free_port, run};
use pb::backup_service_client::BackupServiceClient;
use serde_json::json;
use tonic::Code;

#[allow(unused_imports)]
use super::auth::*;

/// The gateway stand-in of `tests/support/gateway.rs` (which decides as Monoskope's gateway
/// does), with Ada, a system admin, and Bob, a user without roles.
pub(crate) struct StandIn {
    pub(crate) gw: Gateway,
    /// Ada's user id.
    pub(crate) admin_id: String,
    /// An API token of Ada's user id.
    pub(crate) admin: String,
    /// An API token of Bob's user id.
    pub(crate) user: String,
}

pub(crate) async fn start_stand_in() -> (StandIn, String) {
    let gw = Gateway::default();
    let ada = gw.create_user("ada@example.com");
    gw.bind(&ada, "admin", "system");
    let bob = gw.create_user("bob@example.com");
    let s = StandIn {
        admin: gw.api_token(&ada, &["API"]),
        user: gw.api_token(&bob, &["API"]),
        admin_id: ada,
        gw,
    };
    let addr = s.gw.start().await;
    (s, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_asks_the_gateway_and_takes_its_tags() {
    let e = env().await;
    let (gw, gw_addr) = start_stand_in().await;
    let log = e.dir.join("server.log");
    let (_p, url) = serve(&e, &["--auth", "gateway", "--gateway", &gw_addr], &log);

    let admin = format!("bearer {}", gw.admin);
    assert_eq!(call(&url, "CreateBackup", Some(&admin)).await.0, Code::Ok);
    let (code, msg) = call(&url, "Restore", Some(&format!("Bearer {}", gw.user))).await;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    let (code, msg) = call(&url, "GetStatus", Some("Bearer forged")).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("gateway auth failed"), "{msg}");

    {
        let seen = gw.gw.seen.lock().expect("lock");
        assert_eq!(seen.len(), 3, "one Check per call");
        assert_eq!(seen[0].full_method_name, format!("{SVC}CreateBackup"));
        assert_eq!(
            seen[0].access_token, gw.admin,
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
        format!("Bearer {}", gw.admin).parse().expect("ascii"),
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
    let (code, msg) = call(&url2, "GetStatus", Some(&admin)).await;
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
        gw.gw.seen.lock().expect("lock").is_empty(),
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

/// The CronJob's path in gateway mode, as `docs/MONOSKOPE.md` §5 and the README tell an operator
/// to set it up: a Monoskope user with the role admin in the scope system, and an API token
/// issued for its user id, presented by `backupctl create --wait` from the token file the chart
/// mounts. A token issued for a name, or for a user without the role, is refused with what is
/// missing; a policy that grants a scope this service's path lets a name token through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cronjobs_token_passes_monoskopes_gateway_rules() {
    let e = env().await;
    let gw = Gateway::default();
    let gw_addr = gw.start().await;
    // monoctl create user backup-cron@example.com
    // monoctl create rolebinding backup-cron@example.com --role admin --scope system
    // monoctl create api-token -u <its user id> -s API -v 8760h
    let cron = gw.create_user("backup-cron@example.com");
    gw.bind(&cron, "admin", "system");
    let good = gw.api_token(&cron, &["API"]);
    // The token the chart used to document: issued for a name, so it has no roles.
    let by_name = gw.api_token("backup-cron", &["API"]);
    // A user id without the role.
    let plain = gw.create_user("someone@example.com");
    let no_role = gw.api_token(&plain, &["API"]);
    let log = e.dir.join("server.log");
    let (_p, url) = serve(&e, &["--auth", "gateway", "--gateway", &gw_addr], &log);

    let create = |token: &str| {
        let file = e.dir.join("cron-token");
        std::fs::write(&file, token).expect("token file");
        let file = file.to_str().expect("utf8").to_string();
        run(
            "backupctl",
            &["create", "--wait"],
            &[("BACKUP_SERVER", &url), ("BACKUP_TOKEN_FILE", &file)],
        )
    };
    let out = create(&good);
    assert_eq!(out.code, Some(0), "{out:?}");
    let list = run(
        "backupctl",
        &["list", "--json"],
        &[("BACKUP_SERVER", &url), ("MONOSKOPE_TOKEN", &good)],
    );
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(
        list.stdout.contains("backup-cron@example.com"),
        "the catalog names the CronJob's user: {list:?}"
    );

    for (what, token) in [
        ("a name token", &by_name),
        ("a user without the role", &no_role),
    ] {
        let out = create(token);
        assert_ne!(out.code, Some(0), "{what}: {out:?}");
        let text = &out.stderr;
        for needle in [
            "authorization failed",
            "user id (a UUID, not a name)",
            "--role admin --scope system",
            "monoctl create api-token -u USER_ID",
        ] {
            assert!(
                text.contains(needle),
                "{what}: {needle:?} missing in {text}"
            );
        }
    }
    let (code, msg) = call(&url, "GetStatus", Some(&format!("Bearer {by_name}"))).await;
    assert_eq!(code, Code::PermissionDenied, "{msg}");

    // A narrower grant: the operator's policy gives the scope API this service's path; the name
    // token then passes without any role, and a token of another scope still does not.
    gw.grant_scope("API", SVC);
    assert_eq!(
        call(&url, "GetStatus", Some(&format!("Bearer {by_name}")))
            .await
            .0,
        Code::Ok
    );
    let scim = gw.api_token("backup-cron", &["WRITE_SCIM"]);
    assert_eq!(
        call(&url, "GetStatus", Some(&format!("Bearer {scim}")))
            .await
            .0,
        Code::PermissionDenied
    );
}
