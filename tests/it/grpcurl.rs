//! The service as operators debug it: with real grpcurl binaries — a current one (from the Go
//! module proxy) and v1.8.6 (which speaks only reflection v1alpha; the binary a PyPI package
//! ships) — `list`, `describe`, and every BackupService RPC with `-d` JSON: with the gateway's
//! bearer token, without one (UNAUTHENTICATED, readable), and a bad request (INVALID_ARGUMENT
//! naming the field). The commands are the README's (docs/REFERENCE.md, "The API").

use std::process::Command;

use super::auth::{claims, env, serve, sign, signing_key, ISSUER};
use monoskope_backup_tests::service_env;

/// `grpcurl -plaintext [-H authorization…] ARGS…`: exit code and output (stdout and stderr).
fn grpcurl(bin: &str, token: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("-plaintext");
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    cmd.args(args);
    let out = cmd.output().expect("grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn grpcurl_old_and_new_list_describe_and_call_every_rpc() {
    let (Some(new), Some(old)) = (service_env("TEST_GRPCURL"), service_env("TEST_GRPCURL_OLD"))
    else {
        return;
    };
    let e = env().await;
    let (key, cert, kid) = signing_key(&e.dir, "gw");
    let log = e.dir.join("server.log");
    let (_p, url) = serve(
        &e,
        &[
            "--auth",
            "jwt",
            "--jwt-public-key",
            &cert,
            "--jwt-issuer",
            ISSUER,
            "--admin",
            "admin@example.com",
        ],
        &log,
    );
    let addr = url.trim_start_matches("http://").to_string();
    let token = sign(
        &key,
        &kid,
        &claims("7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f", "admin@example.com"),
    );
    let svc = "monoskope.backup.v1.BackupService";
    for bin in [new.as_str(), old.as_str()] {
        let g = |token: Option<&str>, args: &[&str]| grpcurl(bin, token, args);
        // Reflection needs no token; both protocol versions answer.
        let (code, out) = g(None, &[&addr, "list"]);
        assert_eq!(code, 0, "{bin} list: {out}");
        for s in [svc, "grpc.health.v1.Health"] {
            assert!(out.lines().any(|l| l.trim() == s), "{bin} list: {out}");
        }
        let (code, out) = g(None, &[&addr, "describe", svc]);
        assert_eq!(code, 0, "{bin} describe: {out}");
        for rpc in [
            "CreateBackup",
            "ListBackups",
            "Restore",
            "GetStatus",
            "Drill",
        ] {
            assert!(
                out.contains(&format!("rpc {rpc} (")),
                "{bin} describe: {out}"
            );
        }
        // Every RPC with the admin's token.
        let call = |data: &str, method: &str| {
            g(
                Some(&token),
                &["-d", data, &addr, &format!("{svc}/{method}")],
            )
        };
        let (code, out) = call(r#"{"wait": true}"#, "CreateBackup");
        assert_eq!(code, 0, "{bin} CreateBackup: {out}");
        assert!(
            out.contains("OPERATION_STATE_SUCCEEDED"),
            "{bin} CreateBackup: {out}"
        );
        let (code, out) = call(r#"{"page_size": 5}"#, "ListBackups");
        assert_eq!(code, 0, "{bin} ListBackups: {out}");
        assert!(out.contains("\"backups\""), "{bin} ListBackups: {out}");
        let (code, out) = call("{}", "GetStatus");
        assert_eq!(code, 0, "{bin} GetStatus: {out}");
        assert!(out.contains("\"version\""), "{bin} GetStatus: {out}");
        let (code, out) = call(r#"{"backup_id": "latest"}"#, "Drill");
        assert_eq!(code, 0, "{bin} Drill: {out}");
        assert!(out.contains("\"ok\": true"), "{bin} Drill: {out}");
        // The store holds events: a restore without drop_existing is refused, readably.
        let (code, out) = call(
            r#"{"backup_id": "latest", "via_api": true, "wait": true}"#,
            "Restore",
        );
        assert_ne!(code, 0, "{bin} Restore: {out}");
        assert!(
            out.contains("Code: FailedPrecondition")
                && out.contains("the event store is not empty"),
            "{bin} Restore: {out}"
        );
        // A bad request names its field.
        let (code, out) = call(r#"{"backup_id": "nope"}"#, "Restore");
        assert_ne!(code, 0, "{bin}: {out}");
        assert!(
            out.contains("Code: InvalidArgument") && out.contains("\"nope\" is not a backup id"),
            "{bin}: {out}"
        );
        let (code, out) = call(
            r#"{"backup_id": "latest", "until": "0001-01-01T00:00:00Z", "via_api": true}"#,
            "Restore",
        );
        assert_ne!(code, 0, "{bin}: {out}");
        assert!(
            out.contains("Code: InvalidArgument") && out.contains("until"),
            "{bin}: {out}"
        );
        // Without a token: UNAUTHENTICATED, in words.
        let (code, out) = g(None, &["-d", "{}", &addr, &format!("{svc}/GetStatus")]);
        assert_ne!(code, 0, "{bin}: {out}");
        assert!(out.contains("Code: Unauthenticated"), "{bin}: {out}");
    }
}

/// The grpcurl examples of the reference ("The API") are exactly the calls the test above makes:
/// the same methods with the same request bodies, `list` and `describe`.
#[test]
fn the_reference_shows_exactly_the_grpcurl_calls_the_test_makes() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/REFERENCE.md"),
    )
    .expect("reference");
    let mut shown: Vec<(String, String)> = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("grpcurl ")) {
        let data = line
            .split_once("-d '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(d, _)| d.to_string())
            .unwrap_or_default();
        let last = line.split_whitespace().skip(2).collect::<Vec<_>>();
        let what = if line.ends_with(" list") {
            "list".to_string()
        } else if line.contains(" describe ") {
            format!("describe {}", last.last().copied().unwrap_or_default())
        } else {
            last.last().copied().unwrap_or_default().to_string()
        };
        shown.push((what, data));
    }
    let svc = "monoskope.backup.v1.BackupService";
    let tested: Vec<(String, String)> = vec![
        ("list".into(), String::new()),
        (format!("describe {svc}"), String::new()),
        (format!("{svc}/CreateBackup"), r#"{"wait": true}"#.into()),
        (format!("{svc}/ListBackups"), r#"{"page_size": 5}"#.into()),
        (format!("{svc}/GetStatus"), "{}".into()),
        (format!("{svc}/Drill"), r#"{"backup_id": "latest"}"#.into()),
        (
            format!("{svc}/Restore"),
            r#"{"backup_id": "latest", "via_api": true, "wait": true}"#.into(),
        ),
    ];
    assert_eq!(
        shown, tested,
        "docs/REFERENCE.md's grpcurl lines differ from what the test runs"
    );
}
