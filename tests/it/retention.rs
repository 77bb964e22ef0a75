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
        serde_json::json!([ids[0], ids[1]]),
        "oldest first"
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
