//! Incremental backups, chains, point-in-time restores and retention, on real PostgreSQL and
//! the embedded EventStore, through the one-shot commands.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_tests::{fresh_db, run, service_env, Devstore};
use sqlx::Row;

/// A destination, a key and a catalog in a temporary directory.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) key: String,
    pub(super) dest: String,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k").to_str().expect("utf8").to_string();
        assert_eq!(
            run("backup-server", &["keygen", "--out", &key], &[]).code,
            Some(0)
        );
        let dest = format!("file://{}", dir.path().join("dest").display());
        Self { dir, key, dest }
    }

    pub(super) fn common(&self) -> Vec<String> {
        vec![
            "--destination".into(),
            self.dest.clone(),
            "--key-file".into(),
            self.key.clone(),
            "--catalog".into(),
            format!("sqlite://{}", self.dir.path().join("c.db").display()),
        ]
    }

    /// A backup with `source` (`--event-store ADDR` or `--events-db URL`); returns its JSON.
    pub(super) fn backup(
        &self,
        source: &[&str],
        incremental: bool,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut args: Vec<String> = vec!["backup".into(), "--json".into()];
        args.extend(source.iter().map(|s| s.to_string()));
        args.extend(self.common());
        args.extend(extra.iter().map(|s| s.to_string()));
        if incremental {
            args.push("--incremental".into());
        }
        let out = run(
            "backup-server",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        );
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        serde_json::from_str(&out.stdout).expect("json")
    }

    pub(super) fn restore(&self, args: &[&str]) -> monoskope_backup_tests::Out {
        let mut a: Vec<String> = vec!["restore".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend(self.common());
        run(
            "backup-server",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        )
    }

    pub(super) fn backups_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("dest/backups")
    }
}

/// One event as compared: aggregate, version, type, timestamp (µs), data (as JSON), metadata.
pub(super) type Key = (String, String, u64);
#[derive(Debug, Clone, PartialEq)]

pub(super) struct Ev {
    pub(super) event_type: String,
    pub(super) micros: i64,
    pub(super) data: serde_json::Value,
    pub(super) metadata: BTreeMap<String, String>,
}

pub(super) async fn table_rows(url: &str) -> Vec<(Key, Ev)> {
    let pool = sqlx::PgPool::connect(url).await.expect("pg");
    let rows = sqlx::query(r#"SELECT event_type, aggregate_id::text AS agg, aggregate_type, aggregate_version, (extract(epoch from "timestamp") * 1000000)::bigint AS us, metadata::text AS md, data::text AS data FROM event_records"#)
        .fetch_all(&pool)
        .await
        .expect("select");
    pool.close().await;
    rows.iter()
        .map(|r| {
            (
                (
                    r.get::<String, _>("aggregate_type"),
                    r.get::<String, _>("agg"),
                    r.get::<i64, _>("aggregate_version") as u64,
                ),
                Ev {
                    event_type: r.get("event_type"),
                    micros: r.get("us"),
                    data: serde_json::from_str(&r.get::<String, _>("data")).expect("data"),
                    metadata: serde_json::from_str(&r.get::<String, _>("md")).expect("md"),
                },
            )
        })
        .collect()
}

pub(super) async fn store_rows(url: String) -> Vec<(Key, Ev)> {
    let mut c = EventStoreClient::connect(url).await.expect("connect");
    let mut s = c
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        let ts = e.timestamp.unwrap_or_default();
        out.push((
            (
                e.aggregate_type,
                e.aggregate_id,
                e.aggregate_version.unwrap_or(0),
            ),
            Ev {
                event_type: e.r#type,
                micros: ts.seconds * 1_000_000 + (ts.nanos / 1000) as i64,
                data: serde_json::from_slice(&e.data).expect("data"),
                metadata: e.metadata,
            },
        ));
    }
    out
}

/// Committed versions per aggregate, as the writers know them.
pub(super) type Committed = Arc<Mutex<HashMap<(String, String), u64>>>;

pub(super) fn event(agg: &(String, String), v: u64, late: bool) -> Event {
    let now = chrono::Utc::now();
    // Every seventh event is committed late: its timestamp is an hour in the past.
    let t = if late {
        now - chrono::Duration::hours(1)
    } else {
        now
    };
    Event {
        r#type: format!("{}Updated", agg.0),
        timestamp: Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: (t.timestamp_subsec_micros() * 1000) as i32,
        }),
        aggregate_id: agg.1.clone(),
        aggregate_type: agg.0.clone(),
        aggregate_version: Some(v),
        data: format!(r#"{{"n": {v}, "who": "writer", "late": {late}}}"#).into_bytes(),
        metadata: [("x-auth-email".to_string(), "w@example.com".to_string())].into(),
    }
}

/// Writers storing events until `stop`, each owning its aggregates (versions gapless).
pub(super) fn start_writers(
    sink: WriterSink,
    committed: Committed,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..3)
        .map(|w| {
            let (sink, committed, stop) = (sink.clone(), committed.clone(), stop.clone());
            tokio::spawn(async move {
                let aggs: Vec<(String, String)> = (0..20)
                    .map(|_| {
                        (
                            ["User", "Tenant", "Cluster"][w].to_string(),
                            uuid::Uuid::new_v4().to_string(),
                        )
                    })
                    .collect();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let agg = &aggs[(n % 20) as usize];
                    let v = n / 20 + 1;
                    sink.put(event(agg, v, n % 7 == 3)).await;
                    committed.lock().expect("lock").insert(agg.clone(), v);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

#[derive(Clone)]
pub(super) enum WriterSink {
    Table(sqlx::PgPool),
    Api(String),
}

impl WriterSink {
    pub(super) async fn put(&self, e: Event) {
        match self {
            WriterSink::Table(pool) => {
                let ts = e.timestamp.unwrap_or_default();
                let t = chrono::DateTime::from_timestamp(ts.seconds, ts.nanos as u32).expect("t");
                sqlx::query(r#"INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata, data) VALUES ($1::uuid, $2, $3::uuid, $4, $5, $6, $7::jsonb, $8::jsonb)"#)
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&e.r#type)
                    .bind(&e.aggregate_id)
                    .bind(&e.aggregate_type)
                    .bind(e.aggregate_version.unwrap_or(0) as i64)
                    .bind(t)
                    .bind(serde_json::to_string(&e.metadata).expect("md"))
                    .bind(String::from_utf8(e.data).expect("utf8"))
                    .execute(pool)
                    .await
                    .expect("insert");
            }
            WriterSink::Api(url) => {
                let mut c = EventStoreClient::connect(url.clone())
                    .await
                    .expect("connect");
                c.store(tokio_stream::iter(vec![e])).await.expect("store");
            }
        }
    }
}

pub(super) fn snapshot(c: &Committed) -> HashMap<(String, String), u64> {
    c.lock().expect("lock").clone()
}

/// One full and three incrementals while writers write; the last one restores to exactly the
/// events committed before its snapshot, each once.
/// A fresh database with an empty events table: its URL and a pool.
pub(super) async fn events_table(pg: &str, name: &str) -> (String, sqlx::PgPool) {
    let url = fresh_db(pg, name).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("pg");
    sqlx::query(monoskope_backup::sink::table::CREATE_TABLE)
        .execute(&pool)
        .await
        .expect("create");
    (url, pool)
}

pub(super) async fn chain_under_writers(api: bool) {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let es = Devstore::start(&[]);
    let (src_db, pool) = events_table(&pg, "inc_src").await;
    let (sink, source): (WriterSink, Vec<String>) = if api {
        (
            WriterSink::Api(es.url()),
            vec!["--event-store".into(), es.addr.clone()],
        )
    } else {
        (
            WriterSink::Table(pool.clone()),
            vec!["--events-db".into(), src_db.clone()],
        )
    };
    let committed: Committed = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(sink, committed.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    let mut bounds = Vec::new();
    for i in 0..4 {
        let lower = snapshot(&committed);
        let src: Vec<String> = source.clone();
        let fx = &f;
        let out = tokio::task::block_in_place(|| {
            fx.backup(
                &src.iter().map(String::as_str).collect::<Vec<_>>(),
                i > 0,
                &[],
            )
        });
        let upper = snapshot(&committed);
        assert_eq!(
            out["kind"],
            if i == 0 { "full" } else { "incremental" },
            "{out}"
        );
        if i > 0 {
            assert_eq!(out["parent_id"], ids[i - 1], "{out}");
            assert!(out["note"].is_null(), "{out}");
        }
        ids.push(out["id"].as_str().expect("id").to_string());
        bounds.push((lower, upper));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let all: Vec<(Key, Ev)> = if api {
        store_rows(es.url()).await
    } else {
        table_rows(&src_db).await
    };
    let source_rows: HashMap<Key, Ev> = all.into_iter().collect();

    // Restore the last incremental (its whole chain) into an empty table.
    let dst = fresh_db(&pg, "inc_dst").await;
    let last = ids.last().expect("last").clone();
    let out = f.restore(&[&last, "--events-db", &dst]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let restored = table_rows(&dst).await;
    let mut per_agg: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for (k, row) in &restored {
        let want = source_rows
            .get(k)
            .unwrap_or_else(|| panic!("{k:?} not in the source"));
        assert_eq!(row, want, "{k:?} differs");
        per_agg
            .entry((k.0.clone(), k.1.clone()))
            .or_default()
            .push(k.2);
    }
    let (lower, upper) = bounds.last().expect("bounds");
    for (agg, low) in lower {
        let mut vs = per_agg.remove(agg).unwrap_or_default();
        vs.sort_unstable();
        let n = vs.len() as u64;
        assert_eq!(
            vs,
            (1..=n).collect::<Vec<_>>(),
            "{agg:?}: not each version once"
        );
        assert!(
            n >= *low && n <= upper.get(agg).copied().unwrap_or(0),
            "{agg:?}: {n} versions, committed before the snapshot {low}, before its end {:?}",
            upper.get(agg)
        );
    }
    for (agg, vs) in per_agg {
        // Aggregates born during the last backup.
        assert!(
            upper.contains_key(&agg) && vs.len() as u64 <= upper[&agg],
            "{agg:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incrementals_from_the_table_under_writers_restore_every_event_once() {
    chain_under_writers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incrementals_from_the_api_under_writers_restore_every_event_once() {
    chain_under_writers(true).await;
}

pub(super) fn sample(n: u64, start: i64, seed: u64) -> Vec<Event> {
    monoskope_backup::devstore::sample::events(n, (n / 10).max(1), start, seed).collect()
}

pub(super) async fn store(es: &Devstore, events: Vec<Event>) {
    let mut c = EventStoreClient::connect(es.url()).await.expect("connect");
    c.store(tokio_stream::iter(events)).await.expect("store");
}

/// A devstore and a chain: full (batch 1), incremental (batch 2), incremental (batch 3), each
/// batch a day later than the one before.
pub(super) async fn three_links(f: &Fixture) -> (Devstore, Vec<String>) {
    let es = Devstore::start(&[]);
    let mut ids = Vec::new();
    for (i, start) in [1_700_000_000i64, 1_700_086_400, 1_700_172_800]
        .iter()
        .enumerate()
    {
        store(&es, sample(200, *start, 40 + i as u64)).await;
        let out = f.backup(&["--event-store", &es.addr], i > 0, &[]);
        ids.push(out["id"].as_str().expect("id").to_string());
    }
    (es, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_damaged_middle_link_fails_before_touching_the_store() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let (_es, ids) = three_links(&f).await;
    // The target table already holds other events; the restore would replace them.
    let dst = fresh_db(&pg, "inc_broken").await;
    let other = Devstore::start(&[]);
    store(&other, sample(30, 1_600_000_000, 9)).await;
    let other_id = f.backup(&["--event-store", &other.addr], false, &[])["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(f.restore(&[&other_id, "--events-db", &dst]).code, Some(0));
    let before = table_rows(&dst).await;
    assert_eq!(before.len(), 30);

    let manifest = f.backups_dir().join(format!("{}.manifest.json", ids[1]));
    let saved = std::fs::read(&manifest).expect("manifest");
    std::fs::remove_file(&manifest).expect("rm");
    let out = f.restore(&[&ids[2], "--events-db", &dst, "--drop-existing", "--yes"]);
    assert_eq!(
        out.code,
        Some(7),
        "a broken chain is a damaged backup: {out:?}"
    );
    assert!(
        out.stderr.contains(&format!("link {}", ids[1])),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("missing"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert_eq!(table_rows(&dst).await, before);

    std::fs::write(&manifest, saved).expect("put back");
    let archive = f.backups_dir().join(format!("{}.mbk", ids[1]));
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&archive, bytes).expect("write");
    let out = f.restore(&[&ids[2], "--events-db", &dst, "--drop-existing", "--yes"]);
    assert_eq!(out.code, Some(7), "damaged: {out:?}");
    assert!(
        out.stderr
            .contains(&format!("backup {} (link 2 of 3 of the chain)", ids[1])),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was written"), "{}", out.stderr);
    assert_eq!(table_rows(&dst).await, before);

    // verify --all names the damaged link and the chain that depends on it.
    let mut a = vec!["verify".to_string(), "--all".into()];
    a.extend(f.common().into_iter().take(4));
    let out = run(
        "backup-server",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(out.code, Some(7), "damaged: {out:?}");
    let cannot = format!(
        "FAILED  {}: it cannot be restored: link {} of its chain failed verification",
        ids[2], ids[1]
    );
    // (Newest first; the other store's backup, newest of all, is whole.)
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(lines[0].starts_with(&format!("ok      {other_id} (")));
    assert_eq!(lines[1], cannot, "{}", out.stdout);
    assert!(
        lines[2].starts_with(&format!("FAILED  {}: chunk ", ids[1])),
        "{}",
        out.stdout
    );
    assert!(
        lines[3].starts_with(&format!("ok      {} (", ids[0])),
        "{}",
        out.stdout
    );
    // verify of the newest backup alone reads its whole chain, full backup first: what a
    // restore of it would read.
    a[1] = ids[2].clone();
    let out = run(
        "backup-server",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(out.code, Some(7), "damaged: {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with(&format!("ok      {} (", ids[0])));
    assert!(lines[1].starts_with(&format!("FAILED  {}: chunk ", ids[1])));
    assert_eq!(lines[2], cannot);
    assert_eq!(
        out.stderr.trim().lines().last(),
        Some("backup-server: error: 2 of 3 backups failed verification"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restores_of_a_chain_equal_filtering_the_history() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let (es, ids) = three_links(&f).await;
    let history = store_rows(es.url()).await;
    let mut times: Vec<i64> = history.iter().map(|(_, r)| r.micros).collect();
    times.sort_unstable();
    // In batch 1, at the end of batch 1, in batch 2, in batch 3, after everything.
    let cuts = [
        times[50],
        times[199],
        times[300],
        times[550],
        times[599] + 1_000_000,
    ];
    for cut in cuts {
        let until = chrono::DateTime::from_timestamp_micros(cut)
            .expect("t")
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let dst = fresh_db(&pg, "inc_pitr").await;
        let out = f.restore(&["latest", "--until", &until, "--events-db", &dst]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let mut got: Vec<(Key, Ev)> = table_rows(&dst).await;
        let mut want: Vec<(Key, Ev)> = history
            .iter()
            .filter(|(_, r)| r.micros <= cut)
            .cloned()
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got.len(), want.len(), "until {until}");
        assert_eq!(got, want, "until {until}");
    }
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_whole_chains_and_never_orphans_an_incremental() {
    let f = Fixture::new();
    let es = Devstore::start(&[]);
    let mut ids = Vec::new();
    for (i, inc) in [false, true, true, false, true].iter().enumerate() {
        store(
            &es,
            sample(20, 1_700_000_000 + i as i64 * 1000, 70 + i as u64),
        )
        .await;
        let out = f.backup(
            &["--event-store", &es.addr],
            *inc,
            &["--retention-count", "2"],
        );
        ids.push(out["id"].as_str().expect("id").to_string());
    }
    let left: Vec<String> = std::fs::read_dir(f.backups_dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".manifest.json"))
        .map(|n| n.trim_end_matches(".manifest.json").to_string())
        .collect();
    let mut left = left;
    left.sort();
    // The newest two restore points are the second chain; the first chain went whole, with its
    // watermarks.
    assert_eq!(left, vec![ids[3].clone(), ids[4].clone()]);
    let files = std::fs::read_dir(f.backups_dir()).expect("dir").count();
    assert_eq!(
        files, 8,
        "archive, key file, watermark and manifest of each of the two"
    );
    let mut a = vec!["verify".to_string(), "--all".into()];
    a.extend(f.common().into_iter().take(4));
    let out = run(
        "backup-server",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_falls_back_to_full_and_says_why() {
    let f = Fixture::new();
    let es = Devstore::start(&[]);
    store(&es, sample(50, 1_700_000_000, 1)).await;
    // No parent yet.
    let out = f.backup(&["--event-store", &es.addr], true, &[]);
    assert_eq!(out["kind"], "full");
    assert!(
        out["note"]
            .as_str()
            .is_some_and(|n| n.contains("no complete backup to build on")),
        "{out}"
    );
    // A store that went backwards (replaced by an older, smaller history).
    let other = Devstore::start(&[]);
    store(
        &other,
        sample(50, 1_700_000_000, 1).into_iter().take(10).collect(),
    )
    .await;
    let out = f.backup(&["--event-store", &other.addr], true, &[]);
    assert_eq!(out["kind"], "full", "{out}");
    assert!(
        out["note"]
            .as_str()
            .is_some_and(|n| n.contains("no longer matches the chain")),
        "{out}"
    );
    // And a normal incremental after it holds only the new events.
    store(
        &other,
        sample(50, 1_700_000_000, 1)
            .into_iter()
            .skip(10)
            .take(5)
            .collect(),
    )
    .await;
    let out = f.backup(&["--event-store", &other.addr], true, &[]);
    assert_eq!(out["kind"], "incremental", "{out}");
    assert_eq!(out["events"], 5, "{out}");
    // The chain holds one incremental: with fullEvery 1 the next one is full.
    let out = f.backup(
        &["--event-store", &other.addr],
        true,
        &["--full-every", "1"],
    );
    assert_eq!(out["kind"], "full", "{out}");
    assert!(
        out["note"]
            .as_str()
            .is_some_and(|n| n.contains("fullEvery is 1")),
        "{out}"
    );
}

/// From the events table, an incremental cannot hold rows without a version, an aggregate id
/// or an aggregate type (new versions are found by aggregate, which never matches a NULL): the
/// backup becomes full, says why, and holds every row.
/// Inserts version `v` of the `User` aggregate whose id is the uuid of `agg`.
pub(super) async fn insert_user_event(pool: &sqlx::PgPool, agg: u128, v: i64) {
    sqlx::query(r#"INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata, data) VALUES (gen_random_uuid(), 'Created', $1, 'User', $2, now(), '{}', '{}')"#)
        .bind(uuid::Uuid::from_u128(agg))
        .bind(v)
        .execute(pool)
        .await
        .expect("insert");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_from_the_table_falls_back_to_full_on_rows_without_an_aggregate() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    for (column, why) in [
        ("aggregate_version", "without a version"),
        ("aggregate_type", "without an aggregate type"),
        ("aggregate_id", "without an aggregate id"),
    ] {
        let f = Fixture::new();
        let (db, pool) = events_table(&pg, "inc_null").await;
        for agg in 1..=2 {
            for v in 1..=10 {
                insert_user_event(&pool, agg, v).await;
            }
        }
        let source = ["--events-db", db.as_str()];
        let full = tokio::task::block_in_place(|| f.backup(&source, false, &[]));
        assert_eq!(full["events"], 20, "{full}");
        // The next version of the first aggregate, with one column NULL.
        let id = "'00000000-0000-0000-0000-000000000001'";
        let (id, ty, v) = match column {
            "aggregate_version" => (id, "'User'", "NULL"),
            "aggregate_type" => (id, "NULL", "11"),
            _ => ("NULL", "'User'", "11"),
        };
        sqlx::query(&format!(
            r#"INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata, data) VALUES (gen_random_uuid(), 'Created', {id}, {ty}, {v}, now(), '{{}}', '{{}}')"#
        ))
        .execute(&pool)
        .await
        .expect("insert the odd row");
        let out = tokio::task::block_in_place(|| f.backup(&source, true, &[]));
        assert_eq!(out["kind"], "full", "{column}: {out}");
        assert!(
            out["note"].as_str().is_some_and(|n| n.contains(why)),
            "{column}: {out}"
        );
        assert_eq!(out["events"], 21, "{column}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_from_the_table_falls_back_to_full_when_the_store_went_back() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    // What became of the store after the full backup: the SQL, what the note must say, and
    // the events the backup then holds (all of them: it is a full one).
    for (change, why, events) in [
        (
            "DELETE FROM event_records WHERE aggregate_id = '00000000-0000-0000-0000-000000000002'",
            "1 aggregates the chain holds are gone from the store",
            20,
        ),
        (
            "DELETE FROM event_records WHERE aggregate_id = '00000000-0000-0000-0000-000000000002' AND aggregate_version > 4",
            "aggregate User 00000000-0000-0000-0000-000000000002 is at version 4, the chain holds 10",
            24,
        ),
    ] {
        let f = Fixture::new();
        let (db, pool) = events_table(&pg, "inc_back").await;
        for agg in 1..=3 {
            for v in 1..=10 {
                insert_user_event(&pool, agg, v).await;
            }
        }
        let source = ["--events-db", db.as_str()];
        let full = tokio::task::block_in_place(|| f.backup(&source, false, &[]));
        assert_eq!(full["events"], 30, "{full}");
        sqlx::query(change).execute(&pool).await.expect("change");
        // A new aggregate: an incremental would have something to hold, and the store has as
        // many aggregates as the chain again.
        insert_user_event(&pool, 4, 1).await;
        let out = tokio::task::block_in_place(|| f.backup(&source, true, &[]));
        assert_eq!(out["kind"], "full", "{change}: {out}");
        assert!(
            out["note"].as_str().is_some_and(|n| n.contains(why)),
            "{change}: {out}"
        );
        assert_eq!(out["events"], events + 1, "{change}: {out}");
    }
}
