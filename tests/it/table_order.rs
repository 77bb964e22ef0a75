//! Full backups from the events table come out in store order whatever the table's physical
//! order, and read the same records by COPY as by query.

use monoskope_backup_tests::{run, service_env};

#[allow(unused_imports)]
use super::incremental::*;

/// Everything a table read yields, batch after batch.
async fn read_all(mut rx: monoskope_backup::source::table::Batches) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(batch) = rx.recv().await {
        bytes.extend_from_slice(batch.expect("read").bytes());
    }
    bytes
}

/// PostgreSQL is read with binary COPY, CockroachDB (no binary `COPY TO`) with the query
/// itself: on the same table both give the same records, byte for byte, full and incremental.
#[tokio::test(flavor = "multi_thread")]
async fn the_table_reads_the_same_records_by_copy_and_by_query() {
    use monoskope_backup::archive::Record;
    use monoskope_backup::sink::table::DEFAULT_LOCK_WAIT;
    use monoskope_backup::source::table::{incremental, snapshot, Order, ReadMode};
    use prost::Message;
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (_, pool) = events_table(&pg, "read_modes").await;
    // 7 aggregates of 100 versions; metadata with escapes and non-ASCII, some NULL payloads.
    sqlx::query(
        r#"INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata, data)
           SELECT gen_random_uuid(), 'Created', ('00000000-0000-0000-0000-' || lpad((g % 7)::text, 12, '0'))::uuid, 'User', g / 7 + 1,
                  '2024-01-01T00:00:00Z'::timestamptz + g * interval '1.5 ms',
                  jsonb_build_object('x-auth-email', E'a"b\\' || g, 'component', 'ü', 'tab', E'\t'),
                  CASE WHEN g % 11 = 0 THEN NULL ELSE jsonb_build_object('n', g, 's', repeat('x', g % 50)) END
           FROM generate_series(0, 699) g"#,
    )
    .execute(&pool)
    .await
    .expect("insert");
    let read = |mode, order| {
        read_all(snapshot(
            pool.clone(),
            4,
            Some(mode),
            order,
            DEFAULT_LOCK_WAIT,
        ))
    };
    let by_copy = read(ReadMode::Copy, Order::Sorted).await;
    let by_query = read(ReadMode::Rows, Order::Sorted).await;
    // In physical order (the table's is its insertion order), put into store order.
    let physical = read(ReadMode::Copy, Order::Physical).await;
    assert!(
        by_copy == physical,
        "the sorted and the physical read differ"
    );
    assert!(by_copy == by_query, "the two reads differ");
    let mut rest = &by_copy[..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        records.push(Record::decode_length_delimited(&mut rest).expect("record"));
    }
    assert_eq!(records.len(), 700);
    let first = &records[0];
    assert_eq!(first.metadata["x-auth-email"], "a\"b\\0");
    assert_eq!(first.metadata["tab"], "\t");
    assert_eq!(first.metadata["component"], "ü");
    assert!(first.data.is_empty(), "NULL payload");
    assert_eq!(
        String::from_utf8_lossy(&records[1].data),
        r#"{"n": 1, "s": "x"}"#
    );
    assert_eq!(
        records[3].timestamp,
        Some(prost_types::Timestamp {
            seconds: 1_704_067_200,
            nanos: 4_500_000
        })
    );
    // An incremental above version 90 of every aggregate: 70 events, the same both ways.
    let mut held = monoskope_backup::engine::watermark::Watermark::default();
    for a in 0..7u128 {
        held.map.insert(
            monoskope_backup::engine::watermark::aggregate(
                "User",
                &uuid::Uuid::from_u128(a).to_string(),
            ),
            90,
        );
    }
    let held = std::sync::Arc::new(held);
    let inc_copy = read_all(incremental(
        pool.clone(),
        held.clone(),
        4,
        Some(ReadMode::Copy),
        DEFAULT_LOCK_WAIT,
    ))
    .await;
    let inc_query = read_all(incremental(
        pool.clone(),
        held,
        4,
        Some(ReadMode::Rows),
        DEFAULT_LOCK_WAIT,
    ))
    .await;
    assert!(inc_copy == inc_query, "the two incremental reads differ");
    let mut newer = 0;
    let mut rest = &inc_copy[..];
    while !rest.is_empty() {
        let r = Record::decode_length_delimited(&mut rest).expect("record");
        assert!(r.aggregate_version > 90, "{r:?}");
        newer += 1;
    }
    assert_eq!(newer, 70);
    // Metadata and data are selected without a cast when both are jsonb (Monoskope's table),
    // as text otherwise: with a json column the records are the same, both ways.
    sqlx::query("ALTER TABLE event_records ALTER COLUMN data TYPE json")
        .execute(&pool)
        .await
        .expect("alter");
    assert!(
        read(ReadMode::Copy, Order::Sorted).await == by_copy,
        "a json column reads differently"
    );
    assert!(
        read(ReadMode::Copy, Order::Physical).await == by_copy,
        "a json column reads differently in physical order"
    );
}

/// A full backup from PostgreSQL reads the table in its physical order (no sort of the whole
/// table) and puts it into store order itself: the same 10,000 events stored in order, a few
/// dozen places out of order, and in reverse give the same archive records in the same order;
/// only the reversed table, beyond the window, is read again sorted by PostgreSQL — said in a
/// warning, nothing of the first attempt left at the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backup_is_in_store_order_whatever_the_tables_physical_order() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let mut digests = Vec::new();
    for (name, order) in [
        ("phys_in_order", "g"),
        ("phys_shuffled", "g / 40, g DESC"),
        ("phys_reversed", "g DESC"),
    ] {
        let url = table_stored_in(&pg, name, order).await;
        let mut args = vec![
            "backup".to_string(),
            "--json".into(),
            "--events-db".into(),
            url,
        ];
        args.extend(f.common());
        let out = run(
            "backup-server",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[("RUST_LOG", "warn")],
        );
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        let b: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(b["events"], 10_000, "{name}");
        let sorted_again = out
            .stderr
            .contains("the events table is not in store order");
        assert_eq!(
            sorted_again,
            name == "phys_reversed",
            "{name}: {}",
            out.stderr
        );
        if sorted_again {
            assert!(
                out.stderr
                    .contains("lies further from its place than the 2048 events (at most 16 MiB) held back to sort them"),
                "{}",
                out.stderr
            );
        }
        let backups = f.dir.path().join("dest").join("backups");
        let id = b["id"].as_str().expect("id");
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(backups.join(format!("{id}.manifest.json"))).expect("manifest"),
        )
        .expect("json");
        digests.push(
            manifest["events_sha256"]
                .as_str()
                .expect("digest")
                .to_string(),
        );
        // The records are in store order: timestamps never go back.
        let archive = backups.join(format!("{id}.mbk"));
        let out = run(
            "backup-server",
            &[
                "inspect",
                archive.to_str().expect("utf8"),
                "--key-file",
                &f.key,
            ],
            &[],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let times: Vec<String> = out
            .stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                v["timestamp"].as_str().expect("timestamp").to_string()
            })
            .collect();
        assert_eq!(times.len(), 10_000);
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{name}: out of order"
        );
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    // Three archives and their manifests and watermarks, nothing staged.
    let staged: Vec<_> = walk(&f.dir.path().join("dest"))
        .into_iter()
        .filter(|p| p.contains(".upload-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    let out = run(
        "backup-server",
        &["list", "--json", "--destination", &f.dest],
        &[],
    );
    assert_eq!(out.stdout.matches("\"id\"").count(), 3, "{}", out.stdout);
}

/// A fresh events table holding the same 10,000 events, stored in `order` of their number `g`
/// (three events to a millisecond, types whose order differs between collations, the same
/// event ids in every table); its URL.
async fn table_stored_in(pg: &str, name: &str, order: &str) -> String {
    let (url, pool) = events_table(pg, name).await;
    sqlx::query(&format!(
        r#"INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata, data)
           SELECT md5('e' || g)::uuid, 'Created', md5('a' || (g % 37))::uuid,
                  (ARRAY['User', 'user', 'Tenant', '_x'])[(g % 37) % 4 + 1], g / 37 + 1,
                  '2024-01-01T00:00:00Z'::timestamptz + (g / 3) * interval '1 ms',
                  '{{"x-auth-email": "a@b"}}', jsonb_build_object('n', g)
           FROM generate_series(0, 9999) g ORDER BY {order}"#
    ))
    .execute(&pool)
    .await
    .expect("insert");
    url
}

/// The service reads a table found out of order sorted from then on: its first backup warns
/// and reads again, the next one reads sorted at once; both hold every event. Until it
/// restores the store, which writes the table in store order: the next backup reads in
/// physical order again (and, the table put out of order once more, warns again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_reads_a_table_out_of_order_sorted_from_then_on() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let url = table_stored_in(&pg, "phys_service", "g DESC").await;
    let log = f.dir.path().join("serve.log");
    let mut cmd = std::process::Command::new(monoskope_backup_tests::bin("backup-server"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--events-db", &url])
        .args(f.common())
        .env("BACKUP_EMIT_EVENTS", "false")
        .env("RUST_LOG", "warn");
    let (_serve, line) = monoskope_backup_tests::spawn_until_line_with(
        cmd,
        "backup-server listening on ",
        std::process::Stdio::from(std::fs::File::create(&log).expect("log")),
    );
    let server = format!(
        "http://{}",
        line.trim_start_matches("backup-server listening on ")
            .trim()
    );
    let warning = "the events table is not in store order";
    for expected in [1, 1] {
        let out = run("backupctl", &["--server", &server, "create", "--wait"], &[]);
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("10000 events"), "{}", out.stdout);
        let logged = std::fs::read_to_string(&log).expect("log");
        assert_eq!(logged.matches(warning).count(), expected, "{logged}");
    }
    let out = run(
        "backupctl",
        &[
            "--server",
            &server,
            "restore",
            "latest",
            "--drop-existing",
            "--yes",
            "--wait",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let restored: Vec<i64> =
        sqlx::query_scalar(r#"SELECT aggregate_version FROM event_records ORDER BY ctid LIMIT 2"#)
            .fetch_all(&pool)
            .await
            .expect("read");
    assert_eq!(
        restored,
        [1, 1],
        "the restore wrote the oldest events first"
    );
    let mut tx = pool.begin().await.expect("begin");
    for sql in [
        "CREATE TEMP TABLE held ON COMMIT DROP AS SELECT * FROM event_records",
        "TRUNCATE event_records",
        r#"INSERT INTO event_records SELECT * FROM held ORDER BY "timestamp" DESC"#,
    ] {
        sqlx::query(sql).execute(&mut *tx).await.expect(sql);
    }
    tx.commit().await.expect("commit");
    let out = run("backupctl", &["--server", &server, "create", "--wait"], &[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("10000 events"), "{}", out.stdout);
    let logged = std::fs::read_to_string(&log).expect("log");
    assert_eq!(logged.matches(warning).count(), 2, "{logged}");
}

/// Every file under `dir`, as paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
