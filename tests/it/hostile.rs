//! What an adversarial run found (issue 26), one test per class: edge values, manifests that
//! lie, conflicting options, secrets in URLs, status codes, listing, and timeouts that must
//! bound the whole operation. The seeded fault-injection rounds are in `faults.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_client::{pb, BackupClient, ClientError, ClientOptions};
use monoskope_backup_tests::{command, keygen, run, service_env, Devstore, Out, Server};

pub(super) async fn store(ds: &Devstore, events: Vec<Event>) {
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    c.store(tokio_stream::iter(events)).await.expect("store");
}

pub(super) async fn count(ds: &Devstore) -> usize {
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    let mut s = c
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut n = 0;
    while s.message().await.expect("stream").is_some() {
        n += 1;
    }
    n
}

pub(super) fn sample(n: u64, seed: u64) -> Vec<Event> {
    monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, seed).collect()
}

/// A directory destination, a key and a catalog of one test.
pub(super) struct Place {
    pub(super) dir: tempfile::TempDir,
    pub(super) key: String,
    pub(super) dest: String,
}

impl Place {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = keygen(dir.path());
        let dest = format!("file://{}", dir.path().join("dest").display());
        Self { dir, key, dest }
    }

    pub(super) fn catalog(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("catalog.db").display())
    }

    pub(super) fn manifest(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("dest/backups/{id}.manifest.json"))
    }

    /// `backup-server CMD --destination … --key-file … --catalog … EXTRA…`.
    pub(super) fn run(&self, cmd: &str, extra: &[&str]) -> Out {
        let catalog = self.catalog();
        let mut args = vec![
            cmd,
            "--destination",
            &self.dest,
            "--key-file",
            &self.key,
            "--catalog",
            &catalog,
        ];
        args.extend_from_slice(extra);
        run("backup-server", &args, &[])
    }

    pub(super) fn backup(&self, ds: &Devstore) -> String {
        let out = self.run("backup", &["--event-store", &ds.addr]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.lines().last().expect("id").to_string()
    }
}

pub(super) fn edit_manifest(path: &Path, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let before = std::fs::read(path).expect("manifest");
    let mut v: serde_json::Value = serde_json::from_slice(&before).expect("json");
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    before
}

#[tokio::test]
async fn manifests_that_lie_fail_verify_and_restore_writes_nothing() {
    let p = Place::new();
    let src = Devstore::start(&[]);
    store(&src, sample(300, 1)).await;
    let a = p.backup(&src);
    store(&src, sample(200, 2)).await;
    let b = p.backup(&src);
    store(&src, sample(100, 3)).await;
    let c = p.backup(&src);
    assert_eq!(p.run("verify", &["--all"]).code, Some(0));
    let restore_into_fresh = |id: &str| {
        let dst = Devstore::start(&[]);
        let out = p.run("restore", &[id, "--event-store", &dst.addr, "--via-api"]);
        (out, dst)
    };

    // 1. Two manifests swapped: `verify A` must not say `ok B`, `restore A` must not restore B.
    let (ma, mb) = (p.manifest(&a), p.manifest(&b));
    let (ba, bb) = (
        std::fs::read(&ma).expect("a"),
        std::fs::read(&mb).expect("b"),
    );
    std::fs::write(&ma, &bb).expect("swap");
    std::fs::write(&mb, &ba).expect("swap");
    let v = p.run("verify", &[&a]);
    assert_eq!(v.code, Some(7), "{v:?}");
    assert!(
        v.stderr.contains(&format!(
            "the manifest at backups/{a}.manifest.json names backup {b}"
        )),
        "{v:?}"
    );
    assert!(!v.stdout.contains("ok "), "{v:?}");
    let all = p.run("verify", &["--all"]);
    assert_eq!(all.code, Some(7), "damaged: {all:?}");
    assert!(
        all.stdout.contains(&format!("FAILED  {a}"))
            && all.stdout.contains(&format!("FAILED  {b}")),
        "{all:?}"
    );
    let (r, dst) = restore_into_fresh(&a);
    assert_eq!(r.code, Some(7), "damaged: {r:?}");
    assert!(r.stderr.contains("cannot be trusted"), "{r:?}");
    assert_eq!(count(&dst).await, 0, "nothing was restored");
    std::fs::write(&ma, &ba).expect("restore a");
    std::fs::write(&mb, &bb).expect("restore b");

    // 2. Fields the archive authenticates, edited: each is a verification failure, and a
    //    restore writes nothing.
    let mc = p.manifest(&c);
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &str); 5] = [
        (
            "first_event_time",
            |v| v["first_event_time"] = "2001-01-01T00:00:00Z".into(),
            "footer's events run from",
        ),
        (
            "last_event_time",
            |v| v["last_event_time"] = "2099-01-01T00:00:00Z".into(),
            "footer's events run from",
        ),
        (
            "key_id",
            |v| v["key_id"] = "k-forged".into(),
            "data key is wrapped for",
        ),
        (
            "created_at",
            |v| v["created_at"] = "2099-01-01T00:00:00.000Z".into(),
            "archive was written at",
        ),
        (
            "kind",
            |v| {
                v["kind"] = "incremental".into();
                v["parent_id"] = "20000101T000000000Z-00000000".into();
            },
            "archive header says full but the manifest incremental",
        ),
    ];
    for (field, edit, said) in edits {
        let before = edit_manifest(&mc, edit);
        let v = p.run("verify", &[&c]);
        assert_eq!(v.code, Some(7), "damaged: {field}: {v:?}");
        assert!(
            v.stdout.contains(&format!("FAILED  {c}")) && v.stdout.contains(said),
            "{field}: {v:?}"
        );
        let (r, dst) = restore_into_fresh(&c);
        assert_eq!(r.code, Some(7), "damaged: {field}: {r:?}");
        assert_eq!(count(&dst).await, 0, "{field}: nothing was restored");
        std::fs::write(&mc, before).expect("put back");
    }
    assert_eq!(p.run("verify", &["--all"]).code, Some(0));

    // 3. The newest manifest truncated: verify --all names it, `latest` refuses rather than
    //    restore B without a word.
    let before = std::fs::read(&mc).expect("c");
    std::fs::write(&mc, &before[..before.len() / 2]).expect("truncate");
    let all = p.run("verify", &["--all"]);
    assert_eq!(all.code, Some(7), "{all:?}");
    assert!(
        all.stdout
            .contains(&format!("FAILED  {c}: its manifest cannot be trusted")),
        "{all:?}"
    );
    assert!(
        all.stderr.contains("1 of 3 backups failed verification"),
        "{all:?}"
    );
    let latest = p.run("verify", &["latest"]);
    assert_eq!(latest.code, Some(7), "{latest:?}");
    let (r, dst) = restore_into_fresh("latest");
    assert_eq!(r.code, Some(7), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("the newest backup {c} cannot be read"))
            && r.stderr
                .contains("refusing to fall back to an older backup"),
        "{r:?}"
    );
    assert_eq!(count(&dst).await, 0);
    // Named by id, the older backup still restores.
    let (r, dst) = restore_into_fresh(&b);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(count(&dst).await, 500);
}

#[tokio::test]
async fn out_of_range_times_are_refused_and_the_table_stays_as_it_was() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let p = Place::new();
    let src = Devstore::start(&[]);
    store(&src, sample(2_000, 5)).await;
    let id = p.backup(&src);
    let db = monoskope_backup_tests::fresh_db(&pg, "hostile").await;
    let r = p.run("restore", &[&id, "--events-db", &db]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let table_count = || async {
        let pool = sqlx::PgPool::connect(&db).await.expect("pg");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM event_records")
            .fetch_one(&pool)
            .await
            .expect("count");
        n
    };
    assert_eq!(table_count().await, 2_000);
    let server = Server::start(
        &[
            "--event-store",
            &src.addr,
            "--destination",
            &p.dest,
            "--key-file",
            &p.key,
            "--events-db",
            &db,
            "--catalog",
            &p.catalog(),
        ],
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(server.url()))
        .await
        .expect("connect");
    // Every edge of the range, and beyond: refused with the field named, never read as "no
    // until" (which, with drop_existing, once emptied a 14,001-event table).
    let edges = [
        (i64::MIN, 0),
        (-62_135_596_801, 0),
        (253_402_300_800, 0),
        (i64::MAX, 0),
        (0, -1),
        (0, 1_000_000_000),
        (0, i32::MIN),
    ];
    for (seconds, nanos) in edges {
        for id in [id.as_str(), "latest"] {
            let res = c
                .restore(pb::RestoreRequest {
                    backup_id: id.to_string(),
                    until: Some(prost_types::Timestamp { seconds, nanos }),
                    drop_existing: true,
                    wait: true,
                    ..Default::default()
                })
                .await;
            match res {
                Err(ClientError::InvalidArgument(m)) => {
                    assert!(m.starts_with("until: "), "{seconds}s {nanos}ns: {m}")
                }
                other => panic!("{seconds}s {nanos}ns: expected INVALID_ARGUMENT, got {other:?}"),
            }
            assert_eq!(table_count().await, 2_000, "{seconds}s {nanos}ns");
        }
    }
    // In range but before every event: refused too.
    match c
        .restore(pb::RestoreRequest {
            backup_id: id.clone(),
            until: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            drop_existing: true,
            wait: true,
            ..Default::default()
        })
        .await
    {
        Err(ClientError::InvalidArgument(m)) => {
            assert!(m.contains("the restore would write no event"), "{m}")
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // The second line of defence: a backup that holds no event (an empty store's) over a
    // non-empty table is refused by the sink, whatever asked for it.
    let empty = Devstore::start(&[]);
    let empty_id = p.backup(&empty);
    match c
        .restore(pb::RestoreRequest {
            backup_id: empty_id.clone(),
            drop_existing: true,
            wait: true,
            ..Default::default()
        })
        .await
    {
        Err(ClientError::Refused(m)) => assert!(
            m.contains("the restore would write no event over the 2000 events the store holds"),
            "{m}"
        ),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(table_count().await, 2_000);
    drop(server);
    // The command line: out of range is a usage error (exit 2), nothing is written.
    for bad in ["0000-12-31T23:59:59Z", "yesterday", "10000-01-01T00:00:00Z"] {
        let r = p.run(
            "restore",
            &[
                &id,
                "--events-db",
                &db,
                "--drop-existing",
                "--yes",
                "--until",
                bad,
            ],
        );
        assert_eq!(r.code, Some(2), "{bad}: {r:?}");
        assert!(r.stderr.contains("--until"), "{bad}: {r:?}");
    }
    for (flag, bad) in [
        ("--timeout", "0s"),
        ("--timeout", "100000y"),
        ("--restore-timeout", "31d"),
        ("--lock-wait-timeout", "soon"),
    ] {
        let r = p.run(
            "restore",
            &[
                &id,
                "--events-db",
                &db,
                "--drop-existing",
                "--yes",
                flag,
                bad,
            ],
        );
        assert_eq!(r.code, Some(2), "{flag} {bad}: {r:?}");
        assert!(r.stderr.contains(flag), "{flag} {bad}: {r:?}");
    }
    assert_eq!(table_count().await, 2_000);
}

#[test]
fn options_that_weaken_protection_are_usage_errors_naming_both() {
    let p = Place::new();
    let src = Devstore::start(&["--seed-sample", "50"]);
    let key = std::fs::read_to_string(&p.key).expect("key");
    let key = key.trim();
    /// Flags, environment, and the two sources the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], [&'a str; 2]);
    let cases: [Case; 4] = [
        (
            &["--key-file", &p.key],
            &[("BACKUP_ENCRYPTION_KEY", key)],
            ["--key-file", "BACKUP_ENCRYPTION_KEY"],
        ),
        (
            &["--key-file", &p.key, "--no-encryption"],
            &[],
            ["--key-file", "--no-encryption"],
        ),
        (
            &[],
            &[
                ("BACKUP_ENCRYPTION_KEY", key),
                ("BACKUP_PASSPHRASE", "a long passphrase"),
            ],
            ["BACKUP_ENCRYPTION_KEY", "BACKUP_PASSPHRASE"],
        ),
        (
            &[],
            &[
                ("BACKUP_PASSPHRASE", "a long passphrase"),
                ("BACKUP_NO_ENCRYPTION", "true"),
            ],
            [
                "BACKUP_PASSPHRASE",
                "--no-encryption (BACKUP_NO_ENCRYPTION)",
            ],
        ),
    ];
    for (flags, envs, names) in cases {
        let mut args = vec![
            "backup",
            "--event-store",
            &src.addr,
            "--destination",
            &p.dest,
            "--catalog",
        ];
        let catalog = p.catalog();
        args.push(&catalog);
        args.extend_from_slice(flags);
        let out = run("backup-server", &args, envs);
        assert_eq!(out.code, Some(2), "{flags:?} {envs:?}: {out:?}");
        assert!(
            out.stderr.contains(names[0]) && out.stderr.contains(names[1]),
            "{flags:?} {envs:?}: {out:?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            !p.dir.path().join("dest").exists(),
            "nothing written: {flags:?} {envs:?}"
        );
    }
}

#[tokio::test]
async fn damaged_backups_and_malformed_requests_get_their_documented_codes() {
    let p = Place::new();
    let src = Devstore::start(&[]);
    store(&src, sample(3_000, 7)).await;
    let id = p.backup(&src);
    // A flipped byte in the middle of the archive: the header opens, a chunk does not.
    let archive = p.dir.path().join(format!("dest/backups/{id}.mbk"));
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, bytes).expect("damage");
    let dst = Devstore::start(&[]);
    let server = Server::start(
        &[
            "--event-store",
            &dst.addr,
            "--destination",
            &p.dest,
            "--key-file",
            &p.key,
            "--catalog",
            &p.catalog(),
        ],
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(server.url()))
        .await
        .expect("connect");
    match c
        .restore(pb::RestoreRequest {
            backup_id: id.clone(),
            via_api: true,
            wait: true,
            ..Default::default()
        })
        .await
    {
        Err(ClientError::DataLoss(m)) => assert!(
            m.starts_with("restore restore-")
                && m.contains(&format!("of backup {id} failed"))
                && m.contains("nothing was written"),
            "{m}"
        ),
        other => panic!("expected DATA_LOSS, got {other:?}"),
    }
    assert_eq!(count(&dst).await, 0);
    // backupctl says so in one line, exit 1.
    let cli = run(
        "backupctl",
        &[
            "--server",
            &server.url(),
            "restore",
            &id,
            "--via-api",
            "--wait",
            "--yes",
        ],
        &[],
    );
    assert_eq!(cli.code, Some(7), "damaged: {cli:?}");
    assert!(
        cli.stderr
            .starts_with("backupctl: error: damaged backup: restore restore-"),
        "{cli:?}"
    );
    // A body that is not a RestoreRequest (field 1, the backup id, sent as a number).
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotARestoreRequest {
        #[prost(uint64, tag = "1")]
        backup_id: u64,
    }
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let res: Result<tonic::Response<pb::RestoreResponse>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(NotARestoreRequest { backup_id: 7 }),
            http::uri::PathAndQuery::from_static("/monoskope.backup.v1.BackupService/Restore"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = res.expect_err("malformed");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("malformed request"),
        "{status:?}"
    );
    assert_eq!(count(&dst).await, 0);
}

#[test]
fn listing_reads_only_the_backup_layout_and_refuses_missing_or_foreign_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = |dest: &str| {
        monoskope_backup_tests::output_within(
            command("backup-server", &["list", "--destination", dest]),
            Duration::from_secs(30),
        )
    };
    let started = Instant::now();
    let root = list("file:///");
    assert_eq!(root.code, Some(9), "{root:?}");
    assert!(
        root.stderr.contains("/ is not a backup destination"),
        "{root:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no walk of the filesystem"
    );
    let missing = list(&format!("file://{}/nope", dir.path().display()));
    assert_eq!(missing.code, Some(9), "{missing:?}");
    assert!(missing.stderr.contains("does not exist"), "{missing:?}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let new = list(&format!("file://{}", empty.display()));
    // A directory that holds nothing of ours is a wrong path, not an empty list.
    assert_eq!(new.code, Some(9), "{new:?}");
    assert!(
        new.stderr.contains("nothing of monoskope-backup at")
            && new.stderr.contains("check --destination"),
        "{new:?}"
    );
}
