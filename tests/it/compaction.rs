//! Compaction of continuous segments (`--continuous-compact`): a chain's segments become one
//! incremental, linked to its parent's bytes, and the segments go; the chain goes on from it;
//! restores to the latest instant and inside the compacted window hold exactly the stored events;
//! the catalog follows, and `catalog resync` rebuilds it with the segments' kind. A segment gone
//! from the middle of a chain is a gap restore and verify refuse.

use std::time::Duration;

use monoskope_backup_tests::fixture::{fresh_events_db, table_events, Fixture};
use monoskope_backup_tests::{run, service_env};

use crate::continuous::{
    empty_events_table, listed, restore_holds_the_whole_table,
    restore_until_holds_the_events_up_to, serve_continuous, store_rows, verify, wait_until,
};

fn events(all: &[serde_json::Value]) -> u64 {
    all.iter().map(|b| b["events"].as_u64().unwrap_or(0)).sum()
}

fn of_kind<'a>(all: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    all.iter().filter(|b| b["kind"] == kind).collect()
}

fn compactions(all: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    all.iter()
        .filter(|b| {
            b["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("compacted from"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_become_one_incremental_and_the_chain_goes_on_from_it() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let s = serve_continuous(&f, &db, &["--continuous-compact", "2s"]);
    store_rows(&pool, 0, 10, &aggregates).await;
    assert!(
        wait_until(Duration::from_secs(15), || events(&listed(&f)) == 10),
        "{:?}",
        listed(&f)
    );
    // Three more bursts, each its own segment.
    for k in 1..4 {
        store_rows(&pool, k * 10, 10, &aggregates).await;
        let want = (k + 1) * 10;
        assert!(
            wait_until(Duration::from_secs(15), || events(&listed(&f)) >= want),
            "{:?}",
            listed(&f)
        );
    }
    // Within a few seconds the segments are one incremental, and gone.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let all = listed(&f);
            compactions(&all).len() == 1 && of_kind(&all, "segment").is_empty()
        }),
        "no compaction: {:#?}",
        listed(&f)
    );
    let all = listed(&f);
    assert_eq!(events(&all), 40, "every event once: {all:#?}");
    assert_eq!(all.len(), 2, "the full backup and the compaction: {all:#?}");
    let (c, full) = (&all[0], &all[1]);
    assert_eq!(c["kind"], "incremental");
    assert_eq!(c["events"], 30);
    assert_eq!(c["parent_id"], full["id"]);
    assert_eq!(c["format_version"], "1.2", "linked to its parent's bytes");
    let note = c["note"].as_str().expect("note");
    assert!(
        note.starts_with("compacted from 3 continuous segments"),
        "{note}"
    );
    // Its manifest names what it replaced.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.dir.path().join(format!(
            "dest/backups/{}.manifest.json",
            c["id"].as_str().expect("id")
        )))
        .expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest["compacted"]["segments"], 3, "{manifest}");

    // The catalog follows: the service lists the full backup and the compaction only.
    let mut client = monoskope_backup_tests::fixture::client(&s).await;
    let in_catalog = client.list_all(true).await.expect("list");
    assert_eq!(
        in_catalog.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        vec![
            c["id"].as_str().expect("id"),
            full["id"].as_str().expect("id")
        ],
        "the catalog after compaction"
    );

    // The chain goes on from the compaction.
    store_rows(&pool, 40, 10, &aggregates).await;
    assert!(
        wait_until(Duration::from_secs(15), || events(&listed(&f)) == 50),
        "{:?}",
        listed(&f)
    );
    drop(s);
    let all = listed(&f);
    let seg = of_kind(&all, "segment");
    assert_eq!(seg.len(), 1, "{all:#?}");
    assert_eq!(seg[0]["parent_id"], c["id"]);
    assert_eq!(seg[0]["format_version"], "1.2");

    // Every backup verifies, links included.
    let v = verify(&f, "--all");
    assert_eq!(v.code, Some(0), "{v:?}");

    // Latest holds every stored event once; an instant inside the compacted window exactly the
    // events stored up to it.
    restore_holds_the_whole_table(&f, &pg, &db).await;
    restore_until_holds_the_events_up_to(&f, &pg, &pool, 24).await;

    // A catalog rebuilt from the destination knows the segment as a segment.
    let fresh = format!("sqlite://{}", f.dir.path().join("resynced.db").display());
    let r = run(
        "backup-server",
        &[
            "catalog",
            "resync",
            "--destination",
            &f.dest,
            "--catalog",
            &fresh,
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let kind: String = sqlx::query_scalar("SELECT kind FROM backups WHERE id = $1")
        .bind(seg[0]["id"].as_str().expect("id"))
        .fetch_one(&sqlx::SqlitePool::connect(&fresh).await.expect("catalog"))
        .await
        .expect("resynced segment");
    assert_eq!(kind, "segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_missing_from_the_middle_is_a_gap_nothing_is_restored_from() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let s = serve_continuous(&f, &db, &["--continuous-compact", "0"]);
    for k in 0..4 {
        store_rows(&pool, k * 6, 6, &aggregates).await;
        let want = (k + 1) * 6;
        assert!(
            wait_until(Duration::from_secs(15), || events(&listed(&f)) == want),
            "{:?}",
            listed(&f)
        );
    }
    drop(s);
    let all = listed(&f);
    let seg = of_kind(&all, "segment");
    assert_eq!(seg.len(), 3, "{all:#?}");
    // The middle segment's objects are gone.
    let gone = seg[1]["id"].as_str().expect("id").to_string();
    for entry in std::fs::read_dir(f.dir.path().join("dest/backups")).expect("dir") {
        let p = entry.expect("entry").path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&gone))
        {
            std::fs::remove_file(p).expect("remove");
        }
    }
    let into = fresh_events_db(&pg).await;
    let out = f.restore(&["latest", "--events-db", &into]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains(&gone) && out.stderr.contains("missing"),
        "{}",
        out.stderr
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'event_records'",
    )
    .fetch_one(&sqlx::PgPool::connect(&into).await.expect("pg"))
    .await
    .expect("count");
    assert_eq!(tables, 0, "nothing was restored");
    // Verify finds the segment after the gap linked to a parent that is not there.
    let v = verify(&f, "latest");
    assert_eq!(v.code, Some(7), "{v:?}");
    assert!(
        v.stdout.contains(&gone) && v.stdout.contains("not at the destination"),
        "{v:?}"
    );
    // The instants before the gap are still restorable, from the backups before it.
    let until = seg[2]["last_event_time"].as_str().expect("time");
    let out = f.restore(&["latest", "--events-db", &into, "--until", until]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(seg[2]["id"].as_str().expect("id")),
        "{out:?}"
    );
    let n: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM event_records WHERE "timestamp" <= $1::timestamptz"#,
    )
    .bind(until)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(table_events(&into).await.len() as i64, n);
    assert!(n > 6, "more than the full backup's six: {n}");
}

/// Compaction every second under a steady write load, the service SIGKILLed again and again (in
/// the middle of compactions and of the deletions after them): once it has caught up, the
/// destination holds every event exactly once — a compaction's leftover segments are deleted by
/// the next one — every backup verifies, and a restore holds the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_compactions_nothing_is_lost_or_doubled() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..7).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let serve = || serve_continuous(&f, &db, &["--continuous-compact", "1s"]);
    let mut s = serve();
    let writer = {
        let pool = pool.clone();
        let aggregates = aggregates.clone();
        tokio::spawn(async move {
            for k in 0..40 {
                store_rows(&pool, k * 10, 10, &aggregates).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    for pause in [1500u64, 900, 1300, 700] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        drop(s); // SIGKILL
        s = serve();
    }
    writer.await.expect("writer");
    assert!(
        wait_until(Duration::from_secs(40), || {
            let all = listed(&f);
            events(&all) == 400 && of_kind(&all, "segment").len() <= 1
        }),
        "after the last restart: {:#?}",
        listed(&f)
    );
    drop(s);
    let all = listed(&f);
    assert!(!compactions(&all).is_empty(), "compactions ran: {all:#?}");
    let v = verify(&f, "--all");
    assert_eq!(v.code, Some(0), "{v:?}");
    restore_holds_the_whole_table(&f, &pg, &db).await;
}
