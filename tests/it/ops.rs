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

async fn store_sample(es: &Devstore, n: u64) {
    let mut c = EventStoreClient::connect(es.url()).await.expect("connect");
    c.store(tokio_stream::iter(
        monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, 5)
            .collect::<Vec<_>>(),
    ))
    .await
    .expect("store");
}

async fn events_of(es: &Devstore, aggregate_type: &str) -> Vec<Event> {
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
    assert_eq!(failed.code, Some(1), "{}", failed.stdout);
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

fn ts(t: &Option<prost_types::Timestamp>) -> f64 {
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
    let (gw, gw_addr) = crate::auth::start_stand_in().await;
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
    let opts = ClientOptions::new(s.url()).with_token("token-of-admin");
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
        ("x-auth-id", "6f1c3c0e-8d1e-4c5a-9b2f-0a1b2c3d4e5f"),
        ("x-auth-name", "Ada Admin"),
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
    let opts = ClientOptions::new(s2.url()).with_token("token-of-admin");
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
    assert!(gw.seen.lock().expect("lock").len() >= 2);
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

/// The last line of a failed command's standard error, checked to be one readable line: exit 1,
/// `prefix` first, no debug structures, no cause said twice in a row.
fn error_line(out: &monoskope_backup_tests::Out, prefix: &str) -> String {
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(line.starts_with(prefix), "{}", out.stderr);
    assert!(!line.contains(" { ") && !line.contains("Error("), "{line}");
    let parts: Vec<&str> = line.split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "{line}");
    line
}

#[test]
fn peers_that_cannot_be_reached_fail_in_one_line_that_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let dest = dir.path().join("dest");
    let dest_url = format!("file://{}", dest.display());
    let catalog = format!("sqlite://{}", dir.path().join("cat.db").display());
    let closed = format!("127.0.0.1:{}", free_port());
    let pg_closed = format!("postgres://postgres@{closed}/events");
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", "--destination", &dest_url, "--key-file", &key];
        args.extend_from_slice(extra);
        run("backup-server", &args, &[])
    };
    // Each waits out its client's retries (the pools' 10 and 15 s, S3's five attempts): at once.
    let (store, catalog_db, events_db, s3, server) = std::thread::scope(|s| {
        let store = s.spawn(|| backup(&["--catalog", &catalog, "--event-store", &closed]));
        let catalog_db = s.spawn(|| backup(&["--catalog", &pg_closed, "--event-store", &closed]));
        let events_db = s.spawn(|| {
            let catalog = format!("sqlite://{}", dir.path().join("cat2.db").display());
            backup(&["--catalog", &catalog, "--events-db", &pg_closed])
        });
        let s3 = s.spawn(|| {
            let endpoint = format!("http://{closed}");
            run(
                "backup-server",
                &[
                    "list",
                    "--destination",
                    "s3://b/p",
                    "--s3-endpoint",
                    &endpoint,
                ],
                &[("S3_ACCESS_KEY", "a"), ("S3_SECRET_KEY", "b")],
            )
        });
        let server = s.spawn(|| {
            let url = format!("http://{closed}");
            run("backupctl", &["status", "--server", &url], &[])
        });
        let join = |h: std::thread::ScopedJoinHandle<'_, monoskope_backup_tests::Out>| {
            h.join().expect("thread")
        };
        (
            join(store),
            join(catalog_db),
            join(events_db),
            join(s3),
            join(server),
        )
    });

    for (out, prefix, says) in [
        (
            &store,
            "backup-server: error: backup ",
            format!("EventStore {closed} Retrieve: Unavailable: "),
        ),
        (
            &catalog_db,
            "backup-server: error: ",
            "cannot connect to the catalog database: ".into(),
        ),
        (
            &events_db,
            "backup-server: error: backup ",
            "cannot connect to the events database: ".into(),
        ),
        (
            &s3,
            "backup-server: error: ",
            "destination unavailable: list s3://b/p: ".into(),
        ),
        (
            &server,
            "backupctl: error: ",
            format!("cannot connect to http://{closed}: "),
        ),
    ] {
        let line = error_line(out, prefix);
        assert!(
            line.contains(&says) && line.ends_with("Connection refused (os error 111)"),
            "{line}"
        );
    }
    // Nothing was written: no archive, watermark or manifest (a staged file neither).
    let written: Vec<_> = std::fs::read_dir(dest.join("backups"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
}

fn rules_dir() -> std::path::PathBuf {
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
    // What `/metrics` serves (the same registry the Pushgateway pushes come from).
    let exported = monoskope_backup::ops::metrics::get().text();
    for name in &used {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which the service does not export"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_restores_into_a_scratch_store_and_compares_with_archive_and_live_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    store_sample(&es, 300).await;
    let backups = dir.path().join("backups");
    let metrics_port = free_port();
    let s = Server::start(
        &[
            "--event-store",
            &es.addr,
            "--destination",
            &format!("file://{}", backups.display()),
            "--catalog",
            &format!("sqlite://{}", dir.path().join("c.db").display()),
            "--key-file",
            &key,
            "--metrics-address",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect");
    let b = c.create_backup(true, false).await.expect("backup");
    assert!(b.error.is_empty(), "{}", b.error);
    let drill_metric = || {
        let body = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
            .expect("metrics")
            .1;
        metric_value(
            &body,
            "monoskope_backup_last_drill_success_timestamp_seconds",
            &[],
        )
    };
    assert_eq!(drill_metric(), Some(0.0));

    let url = s.url();
    let envs = [("BACKUP_SERVER", url.as_str())];
    let out = run("backupctl", &["drill", "latest", "--json"], &envs);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let r: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(r["backup_id"], b.id.as_str());
    assert_eq!(r["ok"], true);
    assert_eq!(r["archive_events"], 300);
    assert_eq!(r["restored_events"], 300);
    assert_eq!(r["live_events"], 300);
    assert!(drill_metric().is_some_and(|t| t > 1.7e9));

    // An event committed late with an old timestamp: the live store no longer matches.
    let mut late: Event = monoskope_backup::devstore::sample::events(1, 1, 1_700_000_000, 99)
        .next()
        .expect("one event");
    late.aggregate_id = uuid::Uuid::new_v4().to_string();
    let mut ec = EventStoreClient::connect(es.url()).await.expect("connect");
    ec.store(tokio_stream::iter(vec![late]))
        .await
        .expect("store");
    let out = run("backupctl", &["drill", &b.id], &envs);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("the live store's 301 events"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // A damaged archive: the drill fails, and the live store is untouched.
    let archive = backups.join(format!("backups/{}.mbk", b.id));
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, bytes).expect("write");
    let out = run("backupctl", &["drill", &b.id], &envs);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("failed authentication"),
        "{}",
        out.stderr
    );
    let mut all = ec
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut n = 0;
    while all.message().await.expect("message").is_some() {
        n += 1;
    }
    assert_eq!(n, 301, "a drill never writes to the live store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_passwords_and_credentials_never_reach_the_output() {
    let Some(s3) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let es = Devstore::start(&[]);
    store_sample(&es, 100).await;
    let bucket = monoskope_backup_tests::new_bucket(&monoskope_backup_tests::s3_client(&s3)).await;
    let key_out = run("backup-server", &["keygen"], &[]);
    let key = key_out.stdout.trim().to_string();
    assert_eq!(key.len(), 44, "{key}");
    let secret = "s3-secret-Zq8mN2vX4pL7";
    let password = "db-password-Yt5kW9";
    // The events table, reached with a password in its URL (trust authentication ignores it).
    let db = monoskope_backup_tests::fresh_db(&pg, "secrets").await;
    let db_with_password = db.replacen("postgres@", &format!("postgres:{password}@"), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let envs = [
        ("BACKUP_ENCRYPTION_KEY", key.as_str()),
        ("S3_ACCESS_KEY", "test"),
        ("S3_SECRET_KEY", secret),
        ("RUST_LOG", "debug"),
    ];
    let dest = format!("s3://{bucket}/x");
    let mut outputs = Vec::new();
    let ok = run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &es.addr,
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    );
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    outputs.push(ok);
    let restored = run(
        "backup-server",
        &[
            "restore",
            "latest",
            "--events-db",
            &db_with_password,
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    );
    assert_eq!(restored.code, Some(0), "{}", restored.stderr);
    outputs.push(restored);
    // Failures too: a missing bucket, and the table refusing a second restore.
    outputs.push(run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &es.addr,
            "--destination",
            "s3://no-such-bucket-mbk/x",
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    ));
    outputs.push(run(
        "backup-server",
        &[
            "restore",
            "latest",
            "--events-db",
            &db_with_password,
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    ));
    assert_eq!(outputs[2].code, Some(1));
    assert_eq!(outputs[3].code, Some(1));
    for o in &outputs {
        let text = format!("{}{}", o.stdout, o.stderr);
        assert!(
            text.contains("DEBUG") || o.code == Some(1),
            "debug logging was on"
        );
        for s in [key.as_str(), &key[..20], secret, password] {
            assert!(!text.contains(s), "a secret reached the output:\n{text}");
        }
    }
}

/// SIGTERM during a drill ends it like a backup or a restore: here the drill waits for a live
/// store that never answers; the Drill call fails with "drill interrupted by SIGTERM" (it ran on
/// until the service's grace ran out) and the service exits.
#[tokio::test]
async fn sigterm_interrupts_a_drill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    store_sample(&es, 50).await;
    let dest = format!("file://{}", dir.path().join("backups").display());
    let catalog_path = dir.path().join("c.db");
    let catalog = format!("sqlite://{}", catalog_path.display());
    let common = [
        "--destination",
        &dest,
        "--catalog",
        &catalog,
        "--key-file",
        &key,
    ];
    let made = run(
        "backup-server",
        &[&["backup", "--event-store", &es.addr][..], &common].concat(),
        &[],
    );
    assert_eq!(made.code, Some(0), "{made:?}");
    let hung = monoskope_backup_tests::silent_peer();
    let mut s = Server::start(&[&["--event-store", &hung][..], &common].concat(), &[]);
    let mut c = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect");
    let call = tokio::spawn(async move { c.drill("latest").await });
    let db = &sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
    let drilling = monoskope_backup_tests::wait_for_async(Duration::from_secs(30), || async move {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM operation_lease WHERE kind = 'drill'")
                .fetch_one(db)
                .await
                .expect("lease");
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(drilling, Some(1), "the drill runs");
    monoskope_backup_tests::signal(s.proc.child.id(), "TERM");
    let answer = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the Drill call returns")
        .expect("join");
    match answer {
        Err(e) => assert!(
            e.to_string().contains("drill interrupted by SIGTERM"),
            "{e}"
        ),
        Ok(r) => panic!("expected the drill to be interrupted, got {r:?}"),
    }
    let mut exited = None;
    for _ in 0..600 {
        exited = s.proc.child.try_wait().expect("wait");
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.expect("serve exits").success());
}
