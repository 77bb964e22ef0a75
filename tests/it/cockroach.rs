//! CockroachDB cannot run here. What can be proven against a real server: a database whose
//! `version()` names CockroachDB (a PostgreSQL whose search path puts a `version()` of ours before
//! `pg_catalog`'s) is refused by the table sink before anything is written — no table created, no
//! event touched — with one line naming the database and the ways out.

use monoskope_backup_tests::fixture::{devstore_with, Fixture};
use monoskope_backup_tests::{fresh_db, service_env};

const CRDB_VERSION: &str =
    "CockroachDB CCL v21.2.7 (x86_64-unknown-linux-gnu, built 2022/03/14 16:35:55, go1.16.6)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_cockroachdb_is_refused_before_anything_is_written() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let db = fresh_db(&pg, "crdb").await;
    let pool = sqlx::PgPool::connect(&db).await.expect("connect");
    for stmt in [
        "CREATE SCHEMA crdb".to_string(),
        format!("CREATE FUNCTION crdb.version() RETURNS text LANGUAGE sql AS $$ SELECT '{CRDB_VERSION}'::text $$"),
    ] {
        sqlx::query(&stmt).execute(&pool).await.expect("setup");
    }
    // Seen through this URL, the server is CockroachDB.
    let as_crdb = format!("{db}?options=-c%20search_path%3Dcrdb%2Cpg_catalog%2Cpublic");
    let seen: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&sqlx::PgPool::connect(&as_crdb).await.expect("connect"))
        .await
        .expect("version");
    assert_eq!(seen, CRDB_VERSION, "the stand-in answers as CockroachDB");

    let f = Fixture::new();
    let es = devstore_with(50).await;
    let id = f.backup(&es);
    let out = f.restore(&[&id, "--events-db", &as_crdb]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    for needle in [
        "CockroachDB v21.2.7",
        "nothing was written",
        "docs/COCKROACHDB.md",
        "--via-api",
    ] {
        assert!(line.contains(needle), "{needle:?} missing: {line}");
    }
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public.event_records')::text")
            .fetch_one(&pool)
            .await
            .expect("query");
    assert_eq!(table, None, "no table was created");

    // The same database seen as PostgreSQL takes the restore.
    let out = f.restore(&[&id, "--events-db", &db]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM event_records")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 50);
}
