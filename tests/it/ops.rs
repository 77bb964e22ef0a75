//! Operations through real parts: the Pushgateway (Debian's), the metrics endpoint, the
//! in-process schedule, the events the service stores in the EventStore, configuration errors
//! naming their key, and peers that cannot be reached.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_client::{pb, BackupClient, ClientOptions};
use monoskope_backup_tests::{
    bin, free_port, http_get, keygen, metric_value, run, service_env, spawn_until_line_with,
    Devstore, Server,
};

pub(super) async fn store_sample(es: &Devstore, n: u64) {
    let mut c = EventStoreClient::connect(es.url()).await.expect("connect");
    c.store(tokio_stream::iter(
        monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, 5)
            .collect::<Vec<_>>(),
    ))
    .await
    .expect("store");
}

pub(super) async fn events_of(es: &Devstore, aggregate_type: &str) -> Vec<Event> {
    let mut c = EventStoreClient::connect(es.url()).await.expect("connect");
    let mut s = c
        .retrieve(EventFilter {
            aggregate_type: Some(aggregate_type.to_string()),
            ..Default::default()
        })
        .await
        .expect("retrieve")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("message") {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn pushgateway_keeps_the_last_success_when_a_run_fails() {
    let Some(pgw) = service_env("TEST_PUSHGATEWAY_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    store_sample(&es, 300).await;
    // A group of its own, as the downward API gives a CronJob's pod.
    let ns = format!("test-{}", uuid::Uuid::new_v4().simple());
    let dest = format!("file://{}", dir.path().join("backups").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let backup = |event_store: &str| {
        run(
            "backup-server",
            &[
                "backup",
                "--event-store",
                event_store,
                "--destination",
                &dest,
                "--catalog",
                &catalog,
                "--key-file",
                &key,
                "--pushgateway-url",
                &pgw,
            ],
            &[("POD_NAMESPACE", &ns), ("POD_NAME", "backup-cron-1")],
        )
    };
    let group = [
        ("job", "monoskope_backup"),
        ("namespace", ns.as_str()),
        ("pod", "backup-cron-1"),
    ];
    let scrape = || http_get(&format!("{pgw}/metrics")).expect("pushgateway").1;

    let ok = backup(&es.addr);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let text = scrape();
    let success = metric_value(
        &text,
        "monoskope_backup_last_success_timestamp_seconds",
        &group,
    )
    .expect("success timestamp pushed");
    assert!(success > 1.7e9, "{success}");
    assert_eq!(
        metric_value(&text, "monoskope_backup_events", &group),
        Some(300.0)
    );
    assert!(metric_value(&text, "monoskope_backup_bytes", &group).is_some_and(|b| b > 0.0));
    assert_eq!(
        metric_value(
            &text,
            "monoskope_backup_last_failure_timestamp_seconds",
            &group
        ),
        None,
        "a successful run pushes no failure time"
    );

    std::thread::sleep(Duration::from_millis(1100));
    let down = format!("127.0.0.1:{}", free_port());
    let failed = backup(&down);
    assert_eq!(failed.code, Some(3), "unreachable: {}", failed.stdout);
    let text = scrape();
    let after = metric_value(
        &text,
        "monoskope_backup_last_success_timestamp_seconds",
        &group,
    );
    assert_eq!(
        after,
        Some(success),
        "the failed run erased the last success"
    );
    let failure = metric_value(
        &text,
        "monoskope_backup_last_failure_timestamp_seconds",
        &group,
    )
    .expect("failure timestamp pushed");
    assert!(failure > success, "{failure} <= {success}");
    let completion = metric_value(
        &text,
        "monoskope_backup_last_completion_timestamp_seconds",
        &group,
    );
    assert_eq!(completion, Some(failure));

    // A Pushgateway that is down is a warning; the backup itself succeeds.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let out = run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &es.addr,
            "--destination",
            &dest,
            "--catalog",
            &catalog,
            "--key-file",
            &key,
            "--pushgateway-url",
            &nowhere,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("cannot push metrics"), "{}", out.stderr);
}

/// A proxy that holds every new connection's first answer for `delay`: each backup through it
/// takes at least that long.
pub(crate) async fn slow_proxy(target: String, delay: Duration) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let down = async {
                    tokio::time::sleep(delay).await;
                    tokio::io::copy(&mut ro, &mut wi).await
                };
                let _ = tokio::join!(tokio::io::copy(&mut ri, &mut wo), down);
            });
        }
    });
    addr.to_string()
}

pub(super) fn ts(t: &Option<prost_types::Timestamp>) -> f64 {
    t.as_ref()
        .map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_schedule_runs_without_overlap_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    store_sample(&es, 500).await;
    let slow = slow_proxy(es.addr.clone(), Duration::from_millis(2500)).await;
    let metrics_port = free_port();
    let log_path = dir.path().join("serve.log");
    let mut cmd = Command::new(bin("backup-server"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--event-store",
        &slow,
        "--destination",
        &format!("file://{}", dir.path().join("backups").display()),
        "--catalog",
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        "--key-file",
        &key,
        "--schedule",
        "*/2 * * * * *",
        "--metrics-address",
        &format!("127.0.0.1:{metrics_port}"),
        "--retention-count",
        "0",
    ])
    .env("BACKUP_EMIT_EVENTS", "false")
    .env("RUST_LOG", "info");
    let (mut proc, line) = spawn_until_line_with(
        cmd,
        "backup-server listening on ",
        std::fs::File::create(&log_path).expect("log").into(),
    );
    let url = format!(
        "http://{}",
        line.trim_start_matches("backup-server listening on ")
            .trim()
    );
    let mut client = BackupClient::connect(&ClientOptions::new(url))
        .await
        .expect("connect");
    let mut done = Vec::new();
    for _ in 0..300 {
        done = client.list_all(false).await.expect("list");
        if done.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done.len() >= 2, "fewer than two scheduled backups in 30 s");
    let all = client.list_all(true).await.expect("list");
    let mut spans: Vec<(f64, f64)> = all
        .iter()
        .filter(|b| b.state != pb::OperationState::Running as i32)
        .map(|b| (ts(&b.created_at), ts(&b.completed_at)))
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "backups overlap: {spans:?}");
    }
    for (start, end) in &spans {
        assert!(
            end - start >= 2.4,
            "a backup through the slow proxy took {}",
            end - start
        );
    }
    for b in &all {
        assert_eq!(b.created_by, "scheduler");
    }
    let (code, body) =
        http_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).expect("metrics");
    assert_eq!(code, 200);
    let ok = metric_value(
        &body,
        "monoskope_backup_operations_total",
        &[("operation", "backup"), ("result", "success")],
    )
    .expect("operations counter");
    assert!(ok >= 2.0, "{body}");
    assert!(metric_value(
        &body,
        "monoskope_backup_last_success_timestamp_seconds",
        &[]
    )
    .is_some_and(|t| t > 1.7e9));
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{metrics_port}/healthz"))
            .expect("healthz")
            .0,
        200
    );

    monoskope_backup_tests::signal(proc.child.id(), "TERM");
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = proc.child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("serve did not exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("skipped"),
        "no tick was skipped while a 2.5 s backup ran:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_store_events_with_the_callers_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let src = Devstore::start(&[]);
    store_sample(&src, 120).await;
    let dest = format!("file://{}", dir.path().join("backups").display());
    let (gw, gw_addr) = crate::auth_gateway::start_stand_in().await;
    let common = |es: &str, catalog: &str| -> Vec<String> {
        [
            "--event-store",
            es,
            "--destination",
            &dest,
            "--key-file",
            &key,
            "--catalog",
            catalog,
            "--auth",
            "gateway",
            "--gateway",
            &gw_addr,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let c1 = format!("sqlite://{}", dir.path().join("c1.db").display());
    let args = common(&src.addr, &c1);
    let s = Server::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("BACKUP_EMIT_EVENTS", "true")],
    );
    let opts = ClientOptions::new(s.url()).with_token(gw.admin.clone());
    let mut c = BackupClient::connect(&opts).await.expect("connect");
    let b = c.create_backup(true, false).await.expect("backup");
    assert!(b.error.is_empty(), "{}", b.error);

    let evs = events_of(&src, "Backup").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = &evs[0];
    assert_eq!(e.r#type, "BackupCompleted");
    assert_eq!(e.aggregate_version, Some(1));
    assert_eq!(
        e.aggregate_id,
        monoskope_backup::ops::events::aggregate_id(&b.id)
    );
    let want: BTreeMap<String, String> = [
        ("component_name", "monoskope-backup"),
        ("component_version", env!("CARGO_PKG_VERSION")),
        ("x-auth-id", gw.admin_id.as_str()),
        ("x-auth-name", "ada"),
        ("x-auth-email", "ada@example.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(e.metadata, want);
    let data: serde_json::Value = serde_json::from_slice(&e.data).expect("json");
    assert_eq!(data["backupId"], b.id.as_str());
    assert_eq!(data["kind"], "full");
    assert_eq!(data["eventCount"], 120);
    assert_eq!(data["bytes"], b.bytes);
    assert_eq!(data["location"], b.location.as_str());
    drop(s);

    // A restore through the API into an empty store adds RestoreCompleted after the history.
    let empty = Devstore::start(&[]);
    let c2 = format!("sqlite://{}", dir.path().join("c2.db").display());
    let args = common(&empty.addr, &c2);
    let s2 = Server::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("BACKUP_EMIT_EVENTS", "true")],
    );
    let opts = ClientOptions::new(s2.url()).with_token(gw.admin.clone());
    let mut c = BackupClient::connect(&opts).await.expect("connect");
    let r = c
        .restore(pb::RestoreRequest {
            backup_id: b.id.clone(),
            via_api: true,
            wait: true,
            ..Default::default()
        })
        .await
        .expect("restore");
    assert!(r.error.is_empty(), "{}", r.error);
    assert_eq!(r.event_count, 120);
    let evs = events_of(&empty, "Restore").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].r#type, "RestoreCompleted");
    assert_eq!(
        evs[0].metadata.get("x-auth-email").map(String::as_str),
        Some("ada@example.com")
    );
    let data: serde_json::Value = serde_json::from_slice(&evs[0].data).expect("json");
    assert_eq!(data["backupId"], b.id.as_str());
    assert_eq!(data["restoreId"], r.id.as_str());
    assert_eq!(data["eventCount"], 120);
    assert_eq!(data["sink"], "eventstore-api");
    assert!(
        events_of(&empty, "Backup").await.is_empty(),
        "the archive held no Backup events"
    );
    assert!(gw.gw.seen.lock().expect("lock").len() >= 2);
}

#[test]
fn each_bad_configuration_key_names_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("backup:\n  schedule: \"every night\"\n", "backup.schedule"),
        ("backup:\n  schedule: \"0 22 * * 9\"\n", "backup.schedule"),
        ("backup:\n  retentionCount: -1\n", "backup.retentionCount"),
        ("backup:\n  timeout: soon\n", "backup.timeout"),
        (
            "backup:\n  restore:\n    timeout: -5m\n",
            "backup.restore.timeout",
        ),
        (
            "backup:\n  lockWaitTimeout: forever\n",
            "backup.lockWaitTimeout",
        ),
        (
            "backup:\n  alerting:\n    alertAfter: x\n",
            "backup.alerting.alertAfter",
        ),
        (
            "backup:\n  alerting:\n    secondsSinceLastSuccessfulBackup: -3\n",
            "backup.alerting.secondsSinceLastSuccessfulBackup",
        ),
        (
            "backup:\n  prometheusPushgatewayUrl: pushgateway:9091\n",
            "backup.prometheusPushgatewayUrl",
        ),
        (
            "backup:\n  destination:\n    s3:\n      bucket: b\n      disableSsl: true\n",
            "backup.destination.s3",
        ),
        ("auth:\n  mode: open\n", "auth.mode"),
        ("auth:\n  admins: admin@example.com\n", "auth.admins"),
        ("metrics:\n  adress: 127.0.0.1:9000\n", "metrics"),
        (
            "eventStore:\n  emitEvents: maybe\n",
            "eventStore.emitEvents",
        ),
    ];
    for (i, (yaml, path)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&f, yaml).expect("write");
        let out = run(
            "backup-server",
            &["serve", "--config", f.to_str().expect("utf8")],
            &[],
        );
        // A bad configuration is a usage error: exit 2.
        assert_eq!(out.code, Some(2), "{yaml}");
        assert!(
            out.stderr.contains(&format!("{path}:")) || out.stderr.contains(&format!("{path} ")),
            "{yaml:?} -> {}",
            out.stderr
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
}

pub(super) fn rules_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/monoskope-backup/files")
}

#[test]
fn alert_rules_pass_promtool_and_fire_when_they_should() {
    let Some(promtool) = service_env("PROMTOOL") else {
        return;
    };
    let dir = rules_dir();
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts_test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_metric_the_alert_rules_use_is_exported() {
    let rules = std::fs::read_to_string(rules_dir().join("alerts.yaml")).expect("rules");
    let mut used: Vec<String> = Vec::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find("monoskope_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            if !used.contains(&name) {
                used.push(name);
            }
        }
    }
    assert!(used.len() >= 3, "{used:?}");
    // What `/metrics` serves (the same registry the Pushgateway pushes come from). A labelled
    // metric appears once it has a series: the copy lag, once a copy destination is configured.
    monoskope_backup::ops::metrics::get().set_copy("file:///a-copy", 0.0, None);
    let exported = monoskope_backup::ops::metrics::get().text();
    for name in &used {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which the service does not export"
        );
    }
}
