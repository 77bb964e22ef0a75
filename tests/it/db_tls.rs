//! The events database and the catalog reached as Monoskope's EventStore reaches CockroachDB:
//! TLS with a client certificate and no password (`sslmode=verify-full`, `sslrootcert`,
//! `sslcert`, `sslkey`), against a PostgreSQL that accepts nothing else (`hostssl … cert`).
//! The right certificate works end to end; a missing one, one from another CA, and a key file
//! that others can read are refused in one line, with nothing written.

use monoskope_backup_tests::{keygen, run, service_env};

/// `postgres://USER@127.0.0.1:PORT/DB?…` with the client certificate `client` (`None`: none).
fn url(port: &str, certs: &str, db: &str, client: Option<(&str, &str)>) -> String {
    let mut u = format!(
        "postgres://postgres@127.0.0.1:{port}/{db}?sslmode=verify-full&sslrootcert={certs}/ca.crt"
    );
    if let Some((crt, key)) = client {
        u.push_str(&format!("&sslcert={crt}&sslkey={key}"));
    }
    u
}

#[tokio::test]
async fn client_certificates_reach_the_events_database_and_the_catalog() {
    let (Some(port), Some(certs)) = (
        service_env("TEST_PG_TLS_PORT"),
        service_env("TEST_PG_TLS_CERTS"),
    ) else {
        return;
    };
    let crt = format!("{certs}/client-postgres.crt");
    let key = format!("{certs}/client-postgres.key");
    let admin = url(&port, &certs, "postgres", Some((&crt, &key)));
    let pool = sqlx::PgPool::connect(&admin).await.expect("admin over TLS");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (events, restored, catalog) = (
        format!("tls_events_{tag}"),
        format!("tls_restored_{tag}"),
        format!("tls_catalog_{tag}"),
    );
    for db in [&events, &restored, &catalog] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&pool)
            .await
            .expect("create database");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bkey = keygen(dir.path());
    let dest = format!("file://{}", dir.path().join("dest").display());
    let good = |db: &str| url(&port, &certs, db, Some((&crt, &key)));

    // The right certificate: load, back up (catalog on the same server), restore elsewhere.
    let g = run(
        "backup-server",
        &["generate", "--events", "500", "--events-db", &good(&events)],
        &[],
    );
    assert_eq!(g.code, Some(0), "{g:?}");
    let b = run(
        "backup-server",
        &[
            "backup",
            "--events-db",
            &good(&events),
            "--catalog",
            &good(&catalog),
            "--destination",
            &dest,
            "--key-file",
            &bkey,
        ],
        &[],
    );
    assert_eq!(b.code, Some(0), "{b:?}");
    let r = run(
        "backup-server",
        &[
            "restore",
            "latest",
            "--events-db",
            &good(&restored),
            "--catalog",
            &good(&catalog),
            "--destination",
            &dest,
            "--key-file",
            &bkey,
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(": 500 events"), "{r:?}");

    // Refused in one line, nothing written: no certificate, a certificate of another CA, a key
    // that others can read.
    let open_key = dir.path().join("open.key");
    std::fs::copy(&key, &open_key).expect("copy key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let foreign = (
        format!("{certs}/client-foreign.crt"),
        format!("{certs}/client-foreign.key"),
    );
    let open = open_key.to_str().expect("utf8").to_string();
    let cases = [
        (
            "no certificate",
            url(&port, &certs, &restored, None),
            "certificate",
            3,
        ),
        (
            "a certificate of another CA",
            url(&port, &certs, &restored, Some((&foreign.0, &foreign.1))),
            "UnknownCA",
            3,
        ),
        (
            "a key others can read",
            url(&port, &certs, &restored, Some((&crt, &open))),
            "is readable or writable by others than its owner (mode 0644)",
            1,
        ),
    ];
    for (what, bad, says, code) in cases {
        let out = run(
            "backup-server",
            &[
                "restore",
                "latest",
                "--drop-existing",
                "--yes",
                "--events-db",
                &bad,
                "--catalog",
                &format!("sqlite://{}", dir.path().join("c.db").display()),
                "--destination",
                &dest,
                "--key-file",
                &bkey,
            ],
            &[],
        );
        assert_eq!(out.code, Some(code), "{what}: {out:?}");
        let last = out
            .stderr
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(
            last.starts_with("backup-server: error: ") && last.contains("events database"),
            "{what}: {out:?}"
        );
        assert!(last.contains(says), "{what}: {last}");
    }
    let restored_pool = sqlx::PgPool::connect(&good(&restored)).await.expect("pg");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM event_records")
        .fetch_one(&restored_pool)
        .await
        .expect("count");
    assert_eq!(n, 500, "the refused restores wrote nothing");
    restored_pool.close().await;
    for db in [&events, &restored, &catalog] {
        let _ = sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
}
