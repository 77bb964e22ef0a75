//! Fixtures the end-to-end tests share: a directory destination with a key (`Fixture`), events
//! stored in and read back from an EventStore, and the events table read as events.

use std::collections::BTreeMap;
use std::path::Path;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use sqlx::Row;

use crate::{run, Devstore, Server};
use monoskope_backup_client::{BackupClient, ClientOptions};

/// Stores `events` in the EventStore `ds`.
pub async fn store(ds: &Devstore, events: Vec<Event>) {
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    c.store(tokio_stream::iter(events)).await.expect("store");
}

/// Every event of the EventStore at `url`, in its order.
pub async fn all_events(url: String) -> Vec<Event> {
    let mut c = EventStoreClient::connect(url)
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let mut s = c
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        out.push(e);
    }
    out
}

/// `n` deterministic sample events over n/10 aggregates.
pub fn sample(n: u64) -> Vec<Event> {
    monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, 11).collect()
}

/// Sorts events by (type, id, version): equal timestamps have no defined order.
pub fn canonical(mut v: Vec<Event>) -> Vec<Event> {
    v.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id, a.aggregate_version).cmp(&(
            &b.aggregate_type,
            &b.aggregate_id,
            b.aggregate_version,
        ))
    });
    v
}

/// A directory destination, a key and catalogs of one test, and the commands on them.
pub struct Fixture {
    /// The test's directory.
    pub dir: tempfile::TempDir,
    /// The key file.
    pub key: String,
    /// `file://…/dest`.
    pub dest: String,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A new directory with a key file and an empty destination.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k").to_str().expect("utf8").to_string();
        assert_eq!(
            run("backup-server", &["keygen", "--out", &key], &[]).code,
            Some(0)
        );
        let dest = format!("file://{}", dir.path().join("dest").display());
        Self { dir, key, dest }
    }

    /// The fixture's SQLite catalog.
    pub fn catalog(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("catalog.db").display())
    }

    /// Backs up `ds` with the one-shot command; returns the backup id.
    pub fn backup(&self, ds: &Devstore) -> String {
        let out = run(
            "backup-server",
            &[
                "backup",
                "--event-store",
                &ds.addr,
                "--destination",
                &self.dest,
                "--key-file",
                &self.key,
                "--catalog",
                &self.catalog(),
            ],
            &[],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.lines().last().expect("id").to_string()
    }

    /// Runs the one-shot restore with `extra` arguments to its end.
    pub fn restore(&self, extra: &[&str]) -> crate::Out {
        crate::output(self.restore_command(extra))
    }

    /// The service on `es`, this fixture's destination, key and catalog, restoring into `db`.
    pub fn serve(&self, es: &Devstore, db: &str) -> Server {
        let catalog = self.catalog();
        Server::start(
            &[
                "--event-store",
                &es.addr,
                "--destination",
                &self.dest,
                "--key-file",
                &self.key,
                "--events-db",
                db,
                "--catalog",
                &catalog,
            ],
            &[],
        )
    }

    /// The one-shot restore command with `extra` arguments (its own catalog).
    pub fn restore_command(&self, extra: &[&str]) -> std::process::Command {
        let catalog = format!("sqlite://{}", self.dir.path().join("r.db").display());
        let mut args = vec![
            "restore",
            "--destination",
            &self.dest,
            "--key-file",
            &self.key,
            "--catalog",
            &catalog,
        ];
        args.extend_from_slice(extra);
        crate::command("backup-server", &args)
    }

    /// The archive file of backup `id`.
    pub fn archive(&self, id: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join("dest/backups")
            .join(format!("{id}.mbk"))
    }
}

/// A fresh PostgreSQL database for an events table.
pub async fn fresh_events_db(pg: &str) -> String {
    crate::fresh_db(pg, "events").await
}

/// Every row of event_records as Events (the table's own read, as Monoskope's store reads it).
pub async fn table_events(url: &str) -> Vec<(String, Event)> {
    let pool = sqlx::PgPool::connect(url).await.expect("pg");
    let rows = sqlx::query(r#"SELECT event_id::text AS id, event_type, aggregate_id::text AS agg, aggregate_type, aggregate_version, (extract(epoch from "timestamp") * 1000000)::bigint AS us, metadata::text AS md, data::text AS data FROM event_records"#)
        .fetch_all(&pool)
        .await
        .expect("select");
    rows.iter()
        .map(|r| {
            let us: i64 = r.get("us");
            let md: Option<String> = r.get("md");
            let data: Option<String> = r.get("data");
            (
                r.get::<String, _>("id"),
                Event {
                    r#type: r.get::<Option<String>, _>("event_type").unwrap_or_default(),
                    timestamp: Some(prost_types::Timestamp {
                        seconds: us.div_euclid(1_000_000),
                        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
                    }),
                    aggregate_id: r.get::<Option<String>, _>("agg").unwrap_or_default(),
                    aggregate_type: r
                        .get::<Option<String>, _>("aggregate_type")
                        .unwrap_or_default(),
                    aggregate_version: Some(
                        r.get::<Option<i64>, _>("aggregate_version").unwrap_or(0) as u64,
                    ),
                    data: data.unwrap_or_default().into_bytes(),
                    metadata: md
                        .map(|m| {
                            serde_json::from_str::<BTreeMap<String, String>>(&m).expect("metadata")
                        })
                        .unwrap_or_default(),
                },
            )
        })
        .collect()
}

/// JSON with `len` pseudo-random letters: incompressible enough to make archives large.
pub fn random_json(seed: u64, len: usize) -> String {
    let mut rng = monoskope_backup::devstore::sample::Rng::new(seed + 1);
    let s: String = (0..len)
        .map(|_| char::from(b'a' + (rng.next_u64() % 26) as u8))
        .collect();
    format!("{{\"blob\": \"{s}\"}}")
}

/// `n` certificate events of ~150 KB of incompressible JSON each, so archives span several
/// 8 MiB upload parts.
pub fn large_events(n: u64, seed: u64) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            r#type: "CertificateIssued".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 0,
            }),
            aggregate_id: format!("bbbbbbbb-0000-4000-8000-{:012}", seed * 100_000 + i),
            aggregate_type: "Certificate".into(),
            aggregate_version: Some(1),
            data: random_json(seed * 100_000 + i, 150_000).into_bytes(),
            metadata: BTreeMap::new(),
        })
        .collect()
}

/// A devstore holding `n` sample events.
pub async fn devstore_with(n: u64) -> Devstore {
    let ds = Devstore::start(&["--max-message-size", "33554432"]);
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    let events: Vec<Event> =
        monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, 7).collect();
    c.store(tokio_stream::iter(events)).await.expect("store");
    ds
}

/// `backup-server serve` on the EventStore `es`, destination, catalog and key file, with `extra`
/// flags.
pub fn serve(es: &str, dest: &str, catalog: &str, key: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--event-store",
        es,
        "--destination",
        dest,
        "--catalog",
        catalog,
        "--key-file",
        key,
    ];
    args.extend_from_slice(extra);
    Server::start(&args, &[])
}

/// A client of the service `s` (no token).
pub async fn client(s: &Server) -> BackupClient {
    BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect")
}

/// The events of a local archive as `backup-server inspect` prints them.
pub fn inspect_lines(archive: &Path, key: &str) -> Vec<serde_json::Value> {
    let out = run(
        "backup-server",
        &[
            "inspect",
            "--key-file",
            key,
            archive.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}
