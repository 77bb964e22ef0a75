//! The Helm chart, rendered and linted by Helm's own library (PyPI `helm-python-sdk`), every
//! manifest validated against the Kubernetes schemas (`kubernetes-validate`), its commands and
//! configuration accepted by the real binaries, its PrometheusRule equal to the promtool-tested
//! rules: `helm/tests/test_chart.py`, run here so the test command covers it.

use monoskope_backup_tests::{bin, service_env};

#[test]
fn chart_renders_validates_and_matches_the_binaries() {
    let Some(python) = service_env("TEST_HELM_PYTHON") else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(python)
        .arg(root.join("helm/tests/test_chart.py"))
        .arg(bin("backup-server"))
        .arg(bin("backupctl"))
        .output()
        .expect("python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("chart ok"), "{text}");
    assert_eq!(text.matches("manifests checked").count(), 8, "{text}");
    assert!(
        text.contains("examples/monoskope-m8.yaml: mounts, environment, CronJob token and restore Job checked"),
        "{text}"
    );
}
