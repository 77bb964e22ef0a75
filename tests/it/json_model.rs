//! One JSON model: every `--json` of both CLIs that shows a backup, a restore or a restore plan
//! prints the shape `docs/schema/*.schema.json` documents — checked here against the schemas —
//! and the same backup reads the same through `backupctl` (the service) and `backup-server`
//! (the destination).

use monoskope_backup_tests::fixture::{fresh_events_db, sample, store, Fixture};
use monoskope_backup_tests::schema::{check, load};
use monoskope_backup_tests::{run, service_env, Devstore, Out};
use serde_json::Value;

fn json(out: &Out) -> Value {
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_follows_the_documented_schema() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (backup, restore, plan) = (load("backup"), load("restore"), load("restore-plan"));
    let mut wrong = Vec::new();
    let mut expect = |what: &str, schema: &Value, v: &Value| {
        for p in check(schema, v) {
            wrong.push(format!("{what}: {p}"));
        }
    };
    let f = Fixture::new();
    let es = Devstore::start(&[]);
    store(&es, sample(80)).await;
    let common = ["--destination", &f.dest, "--key-file", &f.key];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let server = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run("backup-server", &a, &[])
    };

    // backup-server: backup, list, restore --dry-run, restore.
    let b = json(&server(with(&[
        "backup",
        "--json",
        "--event-store",
        &es.addr,
    ])));
    expect("backup-server backup --json", &backup, &b);
    let listed = json(&server(with(&["list", "--json"])));
    for x in listed.as_array().expect("array") {
        expect("backup-server list --json", &backup, x);
    }
    let db = fresh_events_db(&pg).await;
    let p = json(&server(with(&[
        "restore",
        "latest",
        "--dry-run",
        "--json",
        "--events-db",
        &db,
    ])));
    expect("backup-server restore --dry-run --json", &plan, &p);
    let r = json(&server(with(&[
        "restore",
        "latest",
        "--json",
        "--events-db",
        &db,
    ])));
    expect("backup-server restore --json", &restore, &r);

    // backupctl against the service on the same destination.
    let catalog = f.catalog();
    let s = monoskope_backup_tests::fixture::serve(&es.addr, &f.dest, &catalog, &f.key, &[]);
    let url = s.url();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        run("backupctl", &all, &[])
    };
    let c = json(&ctl(&["create", "--wait", "--json"]));
    expect("backupctl create --wait --json", &backup, &c);
    let l = json(&ctl(&["list", "--json", "--all"]));
    for x in l.as_array().expect("array") {
        expect("backupctl list --json", &backup, x);
    }
    let st = json(&ctl(&["status", "--json"]));
    expect(
        "backupctl status --json: last_success",
        &backup,
        &st["last_success"],
    );
    drop(s);
    let db2 = fresh_events_db(&pg).await;
    let s = monoskope_backup_tests::fixture::serve(
        &es.addr,
        &f.dest,
        &catalog,
        &f.key,
        &["--events-db", &db2],
    );
    let url = s.url();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        run("backupctl", &all, &[])
    };
    let p = json(&ctl(&["restore", "latest", "--dry-run", "--json"]));
    expect("backupctl restore --dry-run --json", &plan, &p);
    let r = json(&ctl(&["restore", "latest", "--wait", "--yes", "--json"]));
    expect("backupctl restore --wait --json", &restore, &r);
    let st = json(&ctl(&["status", "--json"]));
    expect(
        "backupctl status --json: last_restore",
        &restore,
        &st["last_restore"],
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The same backup, through the service and from the destination.
    let first = b["id"].as_str().expect("id");
    let from_service = l
        .as_array()
        .expect("array")
        .iter()
        .find(|x| x["id"] == first)
        .expect("listed by the service")
        .clone();
    let from_destination = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|x| x["id"] == first)
        .expect("listed at the destination")
        .clone();
    for field in [
        "id",
        "kind",
        "state",
        "parent_id",
        "created_at",
        "completed_at",
        "events",
        "bytes",
        "first_event_time",
        "last_event_time",
        "sha256",
        "key_id",
        "key_kind",
        "format_version",
        "location",
        "locked_until",
        "note",
        "error",
    ] {
        assert_eq!(
            from_service[field], from_destination[field],
            "{field}: backupctl {} vs backup-server {}",
            from_service[field], from_destination[field]
        );
    }
}
