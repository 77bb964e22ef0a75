//! Seeded fault injection: rounds of one-shot backups and restores against a real PostgreSQL
//! events table and a real S3 server, each through a proxy that cuts, stalls or refuses its
//! connections at a random point, with SIGTERM or SIGKILL at a random time. After each round the
//! invariants an operator relies on are checked:
//! - the events table is exactly its state before the round, or exactly the backup restored;
//! - every backup at the destination verifies (nothing half-written is listed), and each one
//!   reported complete is there;
//! - no lease or RUNNING record outlives its process (a SIGKILLed one is taken over by the next
//!   command at once);
//! - no unfinished multipart upload is left unless the command said retention removes it.
//!
//! `MBK_FAULT_ROUNDS` (default 14) and `MBK_FAULT_SEED` (default 26) set the run; a failure
//! prints the seed and the round to replay. A longer run: `MBK_FAULT_ROUNDS=200 .ci/test faults`.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use monoskope_backup_tests::proxy::{Fault, FaultProxy};
use monoskope_backup_tests::{
    command, keygen, new_bucket, output_of, run, s3_client, service_env, Out, S3_ENV,
};

/// xorshift64*: a seeded sequence, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Backup,
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    None,
    Term(u64),
    Kill(u64),
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn digest(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar(
        "SELECT coalesce(md5(string_agg(event_id::text || '/' || aggregate_type || '/' || aggregate_version::text || '/' || coalesce(data::text, ''), ',' ORDER BY event_id)), 'empty') FROM event_records",
    )
    .fetch_one(pool)
    .await
    .expect("digest")
}

#[tokio::test]
async fn seeded_faults_and_kills_never_lose_or_forge_anything() {
    let (Some(pg), Some(endpoint)) = (service_env("TEST_PG_URL"), service_env("TEST_S3_ENDPOINT"))
    else {
        return;
    };
    let rounds = env_u64("MBK_FAULT_ROUNDS", 14);
    let seed = env_u64("MBK_FAULT_SEED", 26);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3).await;
    let dest = format!("s3://{bucket}/f");
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let db = monoskope_backup_tests::fresh_db(&pg, "faults").await;
    let pool = sqlx::PgPool::connect(&db).await.expect("pg");
    let g = run(
        "backup-server",
        &["generate", "--events", "3000", "--events-db", &db],
        &[],
    );
    assert_eq!(g.code, Some(0), "{g:?}");
    let pg_addr = db
        .split_once('@')
        .and_then(|(_, r)| r.split_once('/'))
        .map(|(hp, _)| hp.to_string())
        .expect("host:port");
    let s3_proxy = FaultProxy::start(endpoint.trim_start_matches("http://"));
    let pg_proxy = FaultProxy::start(&pg_addr);
    let db_through = db.replacen(&pg_addr, &pg_proxy.addr, 1);
    let s3_through = format!("http://{}", s3_proxy.addr);
    // What each backup holds: the table's digest when it was taken.
    let mut holds: HashMap<String, String> = HashMap::new();
    let mut reported: Vec<String> = Vec::new();
    let direct = |cmd: &str, extra: &[&str]| {
        let mut args = vec![
            cmd,
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
            "--key-file",
            &key,
        ];
        args.extend_from_slice(extra);
        run("backup-server", &args, S3_ENV)
    };
    let listed = |out: &Out| -> Vec<String> {
        serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout)
            .expect("list json")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };

    for round in 0..rounds {
        let ctx = format!("seed {seed}, round {round}");
        // New events each round, so backups differ and a restore is seen.
        sqlx::query(&format!(
            r#"INSERT INTO event_records SELECT gen_random_uuid(), 'FaultRoundPassed', a, 'FaultRound', v, now() + (v || ' ms')::interval, NULL, jsonb_build_object('round', {round}, 'v', v) FROM (SELECT gen_random_uuid() AS a) x, generate_series(1, 40) v"#
        ))
        .execute(&pool)
        .await
        .expect("append");
        let before = digest(&pool).await;
        let op = if holds.is_empty() || rng.below(10) < 6 {
            Op::Backup
        } else {
            Op::Restore
        };
        let after = rng.below(512 * 1024);
        let fault = match rng.below(5) {
            0 | 1 => Fault::None,
            2 => Fault::CutAfter(after),
            3 => Fault::StallAfter(after),
            _ => Fault::Refuse,
        };
        let on_s3 = rng.below(2) == 0;
        s3_proxy.set(if on_s3 { fault } else { Fault::None });
        pg_proxy.set(if on_s3 { Fault::None } else { fault });
        let sig = match rng.below(6) {
            0..=2 => Sig::None,
            3 | 4 => Sig::Term(200 + rng.below(2800)),
            _ => Sig::Kill(100 + rng.below(2900)),
        };
        eprintln!(
            "[faults] {ctx}: {op:?}, {fault:?} on {}, {sig:?}",
            if on_s3 { "S3" } else { "PostgreSQL" }
        );
        let mut args = vec![
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3_through,
            "--key-file",
            &key,
            "--catalog",
            &catalog,
            "--events-db",
            &db_through,
            "--timeout",
            "6s",
            "--restore-timeout",
            "6s",
            "--lock-wait-timeout",
            "5s",
        ];
        let mut cmd_args = match op {
            Op::Backup => vec!["backup"],
            Op::Restore => vec!["restore", "latest", "--drop-existing", "--yes"],
        };
        cmd_args.append(&mut args);
        let mut cmd = command("backup-server", &cmd_args);
        for (k, v) in S3_ENV {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let waiting = tokio::spawn(output_of(child, Duration::from_secs(90)));
        match sig {
            Sig::None => {}
            Sig::Term(ms) | Sig::Kill(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let name = if matches!(sig, Sig::Term(_)) {
                    "TERM"
                } else {
                    "KILL"
                };
                // The process may have ended already.
                let _ = std::process::Command::new("kill")
                    .args([format!("-{name}"), pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let out = waiting.await.expect("join");
        s3_proxy.set(Fault::None);
        pg_proxy.set(Fault::None);
        // The process is gone; so are its connections (a stalled one held by the proxy would
        // keep PostgreSQL's side of a restore's transaction, and its lock, open).
        s3_proxy.release_stalled();
        pg_proxy.release_stalled();
        // Every command ends: by itself, at its timeout, or within the grace after SIGTERM.
        assert!(
            out.code.is_some() || matches!(sig, Sig::Kill(_)),
            "{ctx}: did not end: {out:?}"
        );
        let killed = out.code.is_none();
        let signalled = sig != Sig::None;
        if !killed && out.code != Some(0) {
            // Failed (interrupted, cut off) or a peer that stopped answering.
            assert!(matches!(out.code, Some(1) | Some(3)), "{ctx}: {out:?}");
            assert_eq!(
                out.stderr
                    .lines()
                    .filter(|l| l.starts_with("backup-server: error: "))
                    .count(),
                1,
                "{ctx}: one error line: {out:?}"
            );
        }

        // The table: exactly before, or exactly the backup restored.
        let now = digest(&pool).await;
        let list = direct("list", &["--json"]);
        // Nothing ever completed there: `list` says so (exit 9), which is an empty list here.
        let nothing =
            list.code == Some(9) && list.stderr.contains("nothing of monoskope-backup at");
        assert!(list.code == Some(0) || nothing, "{ctx}: {list:?}");
        let ids = if nothing { Vec::new() } else { listed(&list) };
        match op {
            Op::Backup => {
                assert_eq!(now, before, "{ctx}: a backup changed the table");
                for id in &ids {
                    holds.entry(id.clone()).or_insert_with(|| before.clone());
                }
                if out.code == Some(0) {
                    let id = out.stdout.lines().last().expect("id").to_string();
                    assert!(ids.contains(&id), "{ctx}: reported {id} is not listed");
                    reported.push(id);
                }
            }
            Op::Restore => {
                let latest = ids.first().expect("a backup to restore");
                let restored = holds.get(latest).expect("known backup");
                if out.code == Some(0) {
                    assert_eq!(
                        &now, restored,
                        "{ctx}: restored table differs from {latest}"
                    );
                } else if signalled {
                    assert!(
                        now == before || &now == restored,
                        "{ctx}: table is neither before nor {latest}: {out:?}"
                    );
                } else {
                    assert_eq!(
                        now, before,
                        "{ctx}: a failed restore changed the table: {out:?}"
                    );
                }
            }
        }
        // Every listed backup verifies; every one reported complete is still listed (until
        // retention, which keeps 7).
        if !ids.is_empty() {
            let v = direct("verify", &["--all"]);
            assert_eq!(v.code, Some(0), "{ctx}: {v:?}");
        }
        for id in reported.iter().rev().take(7) {
            assert!(ids.contains(id) || ids.len() >= 7, "{ctx}: {id} vanished");
        }
        // No lease or RUNNING record outlives its process. A SIGKILLed process cannot say so:
        // the next command takes its lease over at once (it is on this host and gone).
        let catalog_pool = sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
        let running: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM backups WHERE state = 'running') + (SELECT count(*) FROM restores WHERE state = 'running')",
        )
        .fetch_one(&catalog_pool)
        .await
        .expect("running");
        let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_lease")
            .fetch_one(&catalog_pool)
            .await
            .expect("leases");
        catalog_pool.close().await;
        if !killed {
            assert_eq!((running, leases), (0, 0), "{ctx}: {out:?}");
            let uploads = s3
                .list_multipart_uploads()
                .bucket(&bucket)
                .send()
                .await
                .expect("uploads")
                .uploads()
                .len();
            assert!(
                uploads == 0 || out.stderr.contains("retention removes"),
                "{ctx}: {uploads} unfinished uploads left without a word: {out:?}"
            );
        } else {
            assert!(running <= 1 && leases <= 1, "{ctx}");
        }
        // What retention removes once a day old is removed now, so the next round starts clean.
        let left = s3
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .expect("uploads");
        for u in left.uploads() {
            s3.abort_multipart_upload()
                .bucket(&bucket)
                .key(u.key().unwrap_or_default())
                .upload_id(u.upload_id().unwrap_or_default())
                .send()
                .await
                .expect("abort");
        }
    }
    // After the last round, a clean backup and restore still work.
    let b = run(
        "backup-server",
        &[
            "backup",
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
            "--key-file",
            &key,
            "--catalog",
            &catalog,
            "--events-db",
            &db,
        ],
        S3_ENV,
    );
    assert_eq!(b.code, Some(0), "{b:?}");
    let catalog_pool = sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM backups WHERE state = 'running'")
        .fetch_one(&catalog_pool)
        .await
        .expect("running");
    assert_eq!(
        running, 0,
        "a killed run's record was marked FAILED by the next command"
    );
}
