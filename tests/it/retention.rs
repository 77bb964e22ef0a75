//! `backup-server retention plan`: what retention would keep (and why) and delete, changing
//! nothing; the retention after the next backup runs exactly that plan.

use monoskope_backup_tests::fixture::{store, Fixture};
use monoskope_backup_tests::{run, Devstore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_plan_shows_what_retention_then_does() {
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    let mut ids = Vec::new();
    for seed in 1..=3u64 {
        store(
            &src,
            monoskope_backup::devstore::sample::events(
                20,
                2,
                1_700_000_000 + seed as i64 * 1000,
                seed,
            )
            .collect(),
        )
        .await;
        ids.push(f.backup(&src));
    }
    let catalog = f.catalog();
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(f.dir.path().join("dest/backups"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let out = run(
        "backup-server",
        &[
            "retention",
            "plan",
            "--json",
            "--retention-count",
            "1",
            "--destination",
            &f.dest,
            "--catalog",
            &catalog,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(plan["keep"].as_array().map(Vec::len), Some(1), "{plan}");
    assert_eq!(plan["keep"][0]["id"], ids[2].as_str());
    let reasons = plan["keep"][0]["reasons"].to_string();
    assert!(
        reasons.contains("last 1 (#1)") && reasons.contains("the newest backup"),
        "{reasons}"
    );
    assert_eq!(
        plan["delete_backups"],
        serde_json::json!([ids[1], ids[0]]),
        "newest first"
    );
    assert_eq!(listing(), before, "a plan changes nothing");
    // The text form says the same.
    let out = run(
        "backup-server",
        &[
            "retention",
            "plan",
            "--keep-daily",
            "1",
            "--retention-count",
            "0",
            "--destination",
            &f.dest,
            "--catalog",
            &catalog,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("policy: keep last 0, daily 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("keep    {}", ids[2])),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("daily "), "{}", out.stdout);
    assert_eq!(out.stdout.matches("delete  ").count(), 2, "{}", out.stdout);
    // The next backup's retention deletes exactly what the plan said (with the new backup kept).
    store(
        &src,
        monoskope_backup::devstore::sample::events(5, 1, 1_800_000_000, 77).collect(),
    )
    .await;
    let out = run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &src.addr,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &catalog,
            "--retention-count",
            "1",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let left = listing();
    for id in &ids {
        assert!(
            !left.iter().any(|n| n.starts_with(id.as_str())),
            "{id} should be gone: {left:?}"
        );
    }
    assert_eq!(
        left.len(),
        4,
        "the new backup's archive, key file, watermark and manifest: {left:?}"
    );
}

/// Retention cut off midway (one object cannot be deleted): every backup still listed restores
/// whole — an incremental is deleted before what it builds on, so no listed backup has lost its
/// chain — and the next run, the obstacle gone, deletes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cut_off_midway_leaves_only_whole_backups_and_converges() {
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    let catalog = f.catalog();
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--event-store",
            &src.addr,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &catalog,
        ];
        args.extend_from_slice(extra);
        let out = run("backup-server", &args, &[]);
        assert_eq!(out.code, Some(0), "{out:?}");
        out.stdout.lines().last().expect("id").to_string()
    };
    let more = |seed: u64| {
        monoskope_backup::devstore::sample::events(20, 2, 1_700_000_000 + seed as i64 * 1000, seed)
            .collect::<Vec<_>>()
    };
    // Chain A: a full and two incrementals.
    store(&src, more(1)).await;
    let a0 = backup(&[]);
    store(&src, more(2)).await;
    let a1 = backup(&["--incremental"]);
    store(&src, more(3)).await;
    let _a2 = backup(&["--incremental"]);
    // The middle incremental's watermark cannot be deleted (a directory is in its place).
    let watermark = f.dir.path().join(format!("dest/backups/{a1}.watermark"));
    std::fs::remove_file(&watermark).expect("watermark");
    std::fs::create_dir_all(watermark.join("in-the-way")).expect("obstacle");
    // A new full with keep-last 1: retention deletes chain A and is cut off at a1.
    store(&src, more(4)).await;
    let catalog2 = catalog.clone();
    let args = [
        "backup",
        "--event-store",
        &src.addr,
        "--destination",
        &f.dest,
        "--key-file",
        &f.key,
        "--catalog",
        &catalog2,
        "--retention-count",
        "1",
    ];
    let out = run("backup-server", &args, &[]);
    assert!(
        out.stderr.contains("retention"),
        "the failed retention is reported: {out:?}"
    );
    // Every listed backup verifies with its chain.
    let listed = listed_ids(&f, &catalog);
    assert!(
        listed.contains(&a0),
        "the full of chain A is still there: {listed:?}"
    );
    assert!(!listed.contains(&a1), "{listed:?}");
    for id in &listed {
        let restored = Devstore::start(&[]);
        let out = f.restore(&[id, "--event-store", &restored.addr, "--via-api"]);
        assert_eq!(
            out.code,
            Some(0),
            "listed backup {id} does not restore: {out:?}"
        );
    }
    // The obstacle gone, the next run converges: only the newest backup is left.
    std::fs::remove_dir_all(&watermark).expect("clear");
    store(&src, more(5)).await;
    let out = run("backup-server", &args, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let newest = out.stdout.lines().last().expect("id").to_string();
    let listed = listed_ids(&f, &catalog);
    assert_eq!(listed, vec![newest]);
}

/// The ids `backup-server list --json` shows at the fixture's destination.
fn listed_ids(f: &Fixture, catalog: &str) -> Vec<String> {
    let list = run(
        "backup-server",
        &[
            "list",
            "--json",
            "--destination",
            &f.dest,
            "--catalog",
            catalog,
        ],
        &[],
    );
    serde_json::from_str::<serde_json::Value>(&list.stdout)
        .expect("json")
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}
