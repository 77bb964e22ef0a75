//! `backup-server import monoskope`: backups in Monoskope's own format, built here byte for byte
//! as docs/MONOSKOPE.md §8 describes (Go's ustar entries, Go's JSON, AES-CFB by `openssl`), into
//! real PostgreSQL, the embedded EventStore, our destination, and from a real S3 server.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine as _;
use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_tests::{
    fresh_db, new_bucket, run, s3_client, service_env, Devstore, Out, S3_ENV,
};
use sqlx::Row;

/// One ustar header as Go's archive/tar writes it for Monoskope (§3.1).
fn go_header(name: &str, size: usize, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000600\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[329..337].copy_from_slice(b"0000000\0");
    h[337..345].copy_from_slice(b"0000000\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A Monoskope backup tar of `entries` (entry contents), ending in two zero blocks.
fn go_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in entries.iter().enumerate() {
        out.extend_from_slice(&go_header(&i.to_string(), c.len(), 1_683_195_600));
        out.extend_from_slice(c);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Go 1.19's `json.Marshal` of Monoskope's s3Event (§5): keys in order, base64 data, RFC 3339
/// timestamps without trailing fraction zeros, `null` for no data or metadata.
fn go_json(e: &Event) -> Vec<u8> {
    let s = |v: &str| serde_json::to_string(v).expect("json");
    let ts = e.timestamp.unwrap_or_default();
    let t = chrono::DateTime::from_timestamp(ts.seconds, ts.nanos as u32).expect("time");
    let mut text = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if ts.nanos != 0 {
        let frac = format!("{:09}", ts.nanos);
        text.push('.');
        text.push_str(frac.trim_end_matches('0'));
    }
    text.push('Z');
    let data = if e.data.is_empty() {
        "null".to_string()
    } else {
        s(&base64::engine::general_purpose::STANDARD.encode(&e.data))
    };
    let md = if e.metadata.is_empty() {
        "null".to_string()
    } else {
        serde_json::to_string(&e.metadata).expect("md")
    };
    format!(
        r#"{{"EType":{},"EData":{data},"ETimestamp":{},"AType":{},"AID":{},"AVersion":{},"MD":{md}}}"#,
        s(&e.r#type),
        s(&text),
        s(&e.aggregate_type),
        s(&e.aggregate_id.to_ascii_lowercase()),
        e.aggregate_version.unwrap_or(0)
    )
    .into_bytes()
}

/// IV ‖ AES-CFB-128(key, IV, plain), made by `openssl enc` (§4.2).
fn cfb(key: &[u8], plain: &[u8]) -> Vec<u8> {
    let iv = *uuid::Uuid::new_v4().as_bytes();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let cipher = match key.len() {
        16 => "-aes-128-cfb",
        24 => "-aes-192-cfb",
        _ => "-aes-256-cfb",
    };
    let mut child = Command::new("openssl")
        .args(["enc", cipher, "-nosalt", "-K", &hex(key), "-iv", &hex(&iv)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain)
        .expect("write");
    let out = child.wait_with_output().expect("openssl");
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), plain.len(), "CFB adds no padding");
    let mut v = iv.to_vec();
    v.extend(out.stdout);
    v
}

fn sample(n: u64) -> Vec<Event> {
    let mut v: Vec<Event> =
        monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, 17).collect();
    // A delete event (no data) and one without metadata, as real stores have them.
    v[3].data.clear();
    v[4].metadata.clear();
    v
}

const KEY: &[u8] = b"thisis32bitlongpassphraseimusing";

struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_str().expect("utf8").to_string()
    }
    fn import(&self, args: &[&str], envs: &[(&str, &str)]) -> Out {
        let mut a = vec!["import", "monoskope"];
        a.extend_from_slice(args);
        run("backup-server", &a, envs)
    }
}

type R = (
    (String, String, i64),
    (
        String,
        i64,
        Option<serde_json::Value>,
        BTreeMap<String, String>,
    ),
);

async fn rows(url: &str) -> (Vec<R>, Vec<String>) {
    let pool = sqlx::PgPool::connect(url).await.expect("pg");
    let r = sqlx::query(r#"SELECT event_id::text AS id, event_type, aggregate_id::text AS agg, aggregate_type, aggregate_version AS v, (extract(epoch from "timestamp") * 1000000)::bigint AS us, metadata::text AS md, data::text AS data FROM event_records ORDER BY aggregate_type, aggregate_id, aggregate_version"#)
        .fetch_all(&pool)
        .await
        .expect("select");
    pool.close().await;
    let ids = r.iter().map(|x| x.get::<String, _>("id")).collect();
    let rows = r
        .iter()
        .map(|x| {
            let md: Option<String> = x.get("md");
            let data: Option<String> = x.get("data");
            (
                (x.get("aggregate_type"), x.get("agg"), x.get("v")),
                (
                    x.get("event_type"),
                    x.get("us"),
                    data.map(|d| serde_json::from_str(&d).expect("data")),
                    md.map(|m| serde_json::from_str(&m).expect("md"))
                        .unwrap_or_default(),
                ),
            )
        })
        .collect();
    (rows, ids)
}

fn expected(events: &[Event]) -> Vec<R> {
    let mut v: Vec<R> = events
        .iter()
        .map(|e| {
            let ts = e.timestamp.unwrap_or_default();
            (
                (
                    e.aggregate_type.clone(),
                    e.aggregate_id.clone(),
                    e.aggregate_version.unwrap_or(0) as i64,
                ),
                (
                    e.r#type.clone(),
                    ts.seconds * 1_000_000 + (ts.nanos / 1000) as i64,
                    (!e.data.is_empty()).then(|| serde_json::from_slice(&e.data).expect("data")),
                    e.metadata.clone(),
                ),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Entries Go writes for unusual values (§5.1's examples made one aggregate): offsets and
/// nanoseconds, HTML-safe escapes, U+2028, emoji, control characters, null and `{}` metadata,
/// null data; with the events they stand for (timestamps as the database keeps them).
fn exotic() -> (Vec<Vec<u8>>, Vec<Event>) {
    let id = "6f1c3c0e-8d1e-4c5a-9b2f-0a1b2c3d4e5f";
    let entries = vec![
        format!(r#"{{"EType":"X\u003c\u0026\u003e","EData":"eyJhIjogMSwgImIiOiAiXHUwMDNjw6nwn5qAIn0=","ETimestamp":"2023-05-04T12:11:12.345678001+02:00","AType":"T\u2028","AID":"{id}","AVersion":1,"MD":{{"":"","A":"é🚀","b":"\u0001\n"}}}}"#),
        format!(r#"{{"EType":"TenantDeleted","EData":null,"ETimestamp":"2023-05-04T00:41:12.5-09:30","AType":"T\u2028","AID":"{id}","AVersion":2,"MD":{{}}}}"#),
        format!(r#"{{"EType":"TenantUpdated","EData":"eyJuYW1lIjogIm0ifQ==","ETimestamp":"2023-05-04T10:11:13Z","AType":"T\u2028","AID":"{id}","AVersion":3,"MD":null}}"#),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let ev = |t: &str, data: &str, secs: i64, nanos: i32, v: u64, md: &[(&str, &str)]| Event {
        r#type: t.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: secs,
            nanos,
        }),
        aggregate_id: id.into(),
        aggregate_type: "T\u{2028}".into(),
        aggregate_version: Some(v),
        data: data.as_bytes().to_vec(),
        metadata: md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let events = vec![
        ev(
            "X<&>",
            r#"{"a": 1, "b": "\u003cé🚀"}"#,
            1_683_195_072,
            345_678_000,
            1,
            &[("", ""), ("A", "é🚀"), ("b", "\u{1}\n")],
        ),
        ev("TenantDeleted", "", 1_683_195_072, 500_000_000, 2, &[]),
        ev(
            "TenantUpdated",
            r#"{"name": "m"}"#,
            1_683_195_073,
            0,
            3,
            &[],
        ),
    ];
    (entries, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_encrypted_backups_import_exactly_with_stable_ids() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let fx = Fx::new();
    let mut events = sample(400);
    let mut entries: Vec<Vec<u8>> = events.iter().map(go_json).collect();
    let (x_entries, x_events) = exotic();
    entries.extend(x_entries);
    events.extend(x_events);
    let plain = fx.write("plain.tar", &go_tar(&entries));
    let enc = fx.write(
        "enc.tar",
        &go_tar(&entries.iter().map(|e| cfb(KEY, e)).collect::<Vec<_>>()),
    );
    let key_file = fx.write("key", KEY);

    let db1 = fresh_db(&pg, "imp").await;
    let out = fx.import(&[&plain, "--events-db", &db1], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("imported 403 events"), "{}", out.stdout);
    let (got, ids1) = rows(&db1).await;
    assert_eq!(got, expected(&events));

    // Again, replacing: the same deterministic event ids.
    let out = fx.import(&[&plain, "--events-db", &db1, "--drop-existing"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(rows(&db1).await.1, ids1);

    // Encrypted with AES-256-CFB: key from a file, or from S3_ENCRYPTION_KEY.
    let db2 = fresh_db(&pg, "imp").await;
    let out = fx.import(
        &[&enc, "--events-db", &db2, "--monoskope-key-file", &key_file],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(rows(&db2).await, (expected(&events), ids1.clone()));
    let db3 = fresh_db(&pg, "imp").await;
    let key_env = String::from_utf8(KEY.to_vec()).expect("ascii");
    let out = fx.import(
        &[&enc, "--events-db", &db3],
        &[("S3_ENCRYPTION_KEY", &key_env)],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(rows(&db3).await.1, ids1);

    // AES-128 and AES-192 keys work as well.
    for k in [&KEY[..16], &KEY[..24]] {
        let small = fx.write(
            "small.tar",
            &go_tar(&entries.iter().map(|e| cfb(k, e)).collect::<Vec<_>>()),
        );
        let kf = fx.write("k2", k);
        let db = fresh_db(&pg, "imp").await;
        let out = fx.import(
            &[&small, "--events-db", &db, "--monoskope-key-file", &kf],
            &[],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(rows(&db).await, (expected(&events), ids1.clone()));
    }

    // An empty store's backup is 1024 zero bytes: zero events, said so.
    let empty = fx.write("empty.tar", &[0u8; 1024]);
    let db4 = fresh_db(&pg, "imp").await;
    let out = fx.import(&[&empty, "--events-db", &db4], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("0 events of 0 aggregates"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("imported 0 events"), "{}", out.stdout);
    assert!(rows(&db4).await.0.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backups_and_keys_fail_clearly_and_leave_the_table_as_it_was() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let fx = Fx::new();
    let events = sample(100);
    let entries: Vec<Vec<u8>> = events.iter().map(go_json).collect();
    let good = fx.write("good.tar", &go_tar(&entries));
    let db = fresh_db(&pg, "impbad").await;
    assert_eq!(fx.import(&[&good, "--events-db", &db], &[]).code, Some(0));
    let before = rows(&db).await;

    let enc_entries: Vec<Vec<u8>> = entries.iter().map(|e| cfb(KEY, e)).collect();
    let enc = fx.write("enc.tar", &go_tar(&enc_entries));
    let wrong = fx.write("wrong", b"thisis32bitlongpassphraseimusinG");
    let long = fx.write("long", b"thisis32bitlongpassphraseimusing\n");
    let right = fx.write("right", KEY);
    let mut truncated = go_tar(&entries);
    let cut = truncated.len() / 2 + 100;
    truncated.truncate(cut);
    let truncated = fx.write("truncated.tar", &truncated);
    let mut gap = entries.clone();
    let removed = events
        .iter()
        .position(|e| e.aggregate_version == Some(2))
        .expect("a version 2");
    gap.remove(removed);
    let gap = fx.write("gap.tar", &go_tar(&gap));
    let mut dir = entries.clone();
    let mut with_dir = go_tar(&dir.drain(..5).collect::<Vec<_>>());
    with_dir.truncate(with_dir.len() - 1024);
    let mut h = go_header("5/", 0, 1_683_195_600);
    h[156] = b'5';
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    with_dir.extend_from_slice(&h);
    with_dir.resize(with_dir.len() + 1024, 0);
    let with_dir = fx.write("dir.tar", &with_dir);
    let not_event = fx.write("other.tar", &go_tar(&[br#"{"hello":"world"}"#.to_vec()]));

    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "key of 33 bytes",
            vec![&enc, "--monoskope-key-file", &long],
            "S3_ENCRYPTION_KEY must be 16, 24 or 32 bytes, got 33 (it ends with a newline)",
        ),
        (
            "wrong key",
            vec![&enc, "--monoskope-key-file", &wrong],
            "entry 0 is not valid JSON",
        ),
        ("encrypted, no key", vec![&enc], "is the backup encrypted?"),
        (
            "plain, with a key",
            vec![&good, "--monoskope-key-file", &right],
            "entry 0 is not encrypted, but a key was given",
        ),
        (
            "truncated",
            vec![&truncated],
            "the tar archive is truncated in entry",
        ),
        ("gap", vec![&gap], "--allow-gaps"),
        (
            "directory entry",
            vec![&with_dir],
            "entry 5 is not an event",
        ),
        ("not an event", vec![&not_event], "entry 0 is not an event"),
    ];
    for (what, mut args, msg) in cases {
        args.extend(["--events-db", db.as_str(), "--drop-existing"]);
        let out = fx.import(&args, &[]);
        assert_eq!(out.code, Some(1), "{what}: {}", out.stdout);
        assert!(
            out.stderr.contains(msg),
            "{what}: {:?} lacks {msg:?}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            out.stderr
        );
        assert_eq!(rows(&db).await, before, "{what}: the table changed");
    }
    let out = fx.import(&[&enc, "--monoskope-key-file", &wrong, "--dry-run"], &[]);
    assert!(
        out.stderr.contains("after decryption: wrong key?"),
        "{}",
        out.stderr
    );
    // A gap is imported as it is when asked.
    let db2 = fresh_db(&pg, "impgap").await;
    let out = fx.import(&[&gap, "--events-db", &db2, "--allow-gaps"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(rows(&db2).await.0.len(), 99);
    // A non-empty table is refused without --drop-existing.
    let out = fx.import(&[&good, "--events-db", &db], &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("holds 100 events"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_convert_api_and_s3_sources() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let Some(s3) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let fx = Fx::new();
    let events = sample(200);
    let tar = go_tar(&events.iter().map(go_json).collect::<Vec<_>>());
    let path = fx.write("m.tar", &tar);

    let out = fx.import(&[&path, "--dry-run", "--json"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json_end = out.stdout.rfind('}').expect("json") + 1;
    let s: serde_json::Value = serde_json::from_str(&out.stdout[..json_end]).expect("json");
    assert_eq!(s["events"], 200);
    assert_eq!(s["aggregates"], 20);
    let types: u64 = s["aggregate_types"]
        .as_object()
        .expect("types")
        .values()
        .map(|v| v.as_u64().expect("n"))
        .sum();
    assert_eq!(types, 200);
    let first = events
        .iter()
        .filter_map(|e| e.timestamp)
        .min_by_key(|t| (t.seconds, t.nanos));
    assert_eq!(
        s["first_event_time"].as_str(),
        monoskope_backup::cli::rfc3339(first.as_ref()).as_deref()
    );
    assert!(out.stdout.contains("nothing was written"));

    // --convert: a regular backup of ours, which then restores to the same rows and ids.
    let key = fx.dir.path().join("our.key");
    assert_eq!(
        run(
            "backup-server",
            &["keygen", "--out", key.to_str().expect("utf8")],
            &[]
        )
        .code,
        Some(0)
    );
    let dest = format!("file://{}", fx.dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", fx.dir.path().join("c.db").display());
    let ours = [
        "--destination",
        &dest,
        "--key-file",
        key.to_str().expect("utf8"),
        "--catalog",
        &catalog,
    ];
    let mut args = vec![path.as_str(), "--convert"];
    args.extend(ours);
    let out = fx.import(&args, &[("BACKUP_EMIT_EVENTS", "false")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id = out.stdout.trim().lines().last().expect("id").to_string();
    let direct = fresh_db(&pg, "impconv").await;
    assert_eq!(
        fx.import(&[&path, "--events-db", &direct], &[]).code,
        Some(0)
    );
    let restored = fresh_db(&pg, "impconv").await;
    let mut args = vec!["restore", id.as_str(), "--events-db", restored.as_str()];
    args.extend(ours);
    let out = run("backup-server", &args, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(rows(&restored).await, rows(&direct).await);
    let mut args = vec!["verify", id.as_str()];
    args.extend(&ours[..4]);
    assert_eq!(run("backup-server", &args, &[]).code, Some(0));

    // Through the API into an empty embedded EventStore.
    let es = Devstore::start(&[]);
    let out = fx.import(&[&path, "--via-api", "--event-store", &es.addr], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut c = EventStoreClient::connect(es.url()).await.expect("connect");
    let mut st = c
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut n = 0;
    while st.message().await.expect("msg").is_some() {
        n += 1;
    }
    assert_eq!(n, 200);

    // From S3, under Monoskope's object key (with colons).
    let client = s3_client(&s3);
    let bucket = new_bucket(&client).await;
    let object = format!(
        "monoskope/eventstore/2023-09-01T22:00:03Z-{}.tar",
        uuid::Uuid::new_v4()
    );
    client
        .put_object()
        .bucket(&bucket)
        .key(&object)
        .body(tar.into())
        .send()
        .await
        .expect("put");
    let src = format!("s3://{bucket}/{object}");
    let from_s3 = fresh_db(&pg, "imps3").await;
    let out = fx.import(
        &[&src, "--events-db", &from_s3, "--s3-endpoint", &s3],
        S3_ENV,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(rows(&from_s3).await, rows(&direct).await);
}
