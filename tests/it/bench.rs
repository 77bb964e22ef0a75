//! `bench/compare`, the reader of `bench/run`'s results files: run on two of the results the
//! repository keeps (docs/BENCHMARKS.md cites them), and on a file that is not one.

use monoskope_backup_tests::service_env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compare(python: &str, old: &Path, new: &Path) -> Output {
    Command::new(python)
        .arg(root().join("bench/compare"))
        .arg(old)
        .arg(new)
        .output()
        .expect("python")
}

#[test]
fn compare_prints_each_measurement_of_two_runs_side_by_side() {
    let Some(python) = service_env("TEST_HELM_PYTHON") else {
        return;
    };
    let results = root().join("bench/results");
    let (old, new) = (
        results.join("2026-11-24-1m-session4.json"),
        results.join("2026-11-24-1m-session5b.json"),
    );
    let out = compare(&python, &old, &new);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).expect("results file")).expect("JSON")
    };
    let (o, n) = (read(&old), read(&new));
    let results = o["results"].as_object().expect("results");
    assert!(results.len() >= 10, "{results:?}");
    for (name, before) in results {
        let after = &n["results"][name];
        let (b, a) = (
            before["median_s"].as_f64().expect("median"),
            after["median_s"].as_f64().expect("median"),
        );
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no line for {name}:\n{text}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &fields[1..4],
            [
                format!("{b:.2}"),
                format!("{a:.2}"),
                format!("{:.2}", a / b)
            ],
            "{line}"
        );
    }
    for r in o["ratios"].as_array().expect("ratios") {
        let what = r["what"].as_str().expect("what");
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line for {what}:\n{text}"));
        assert!(
            line.trim_start()
                .starts_with(&format!("{:.2}", r["value"].as_f64().expect("value"))),
            "{line}"
        );
    }
}

#[test]
fn compare_refuses_a_file_that_is_not_a_results_file_in_one_line() {
    let Some(python) = service_env("TEST_HELM_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let good = root().join("bench/results/2026-11-24-1m-session5b.json");
    let text = std::fs::read_to_string(&good).expect("results file");
    for (name, content) in [
        ("truncated.json", &text[..text.len() / 2]),
        ("other.json", "{\"results\": {}}"),
    ] {
        let bad = dir.path().join(name);
        std::fs::write(&bad, content).expect("write");
        let out = compare(&python, &good, &bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(name) && err.contains("not a results file"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}
