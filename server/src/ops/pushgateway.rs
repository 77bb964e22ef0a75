//! Pushes each run's metrics to a Prometheus Pushgateway (`prometheusPushgatewayUrl`,
//! `--pushgateway-url`), grouped by job `monoskope_backup` and, when the Kubernetes downward-API
//! variables `POD_NAMESPACE` and `POD_NAME` are set, by namespace and pod. Pushes use POST, which
//! replaces only the pushed metric names in the group: a failed run never erases the last
//! success timestamp. A Pushgateway that cannot be reached is a warning, never a failed run.

use std::time::Duration;

use super::http::HttpClient;
use super::metrics::{self, Op};

/// The Pushgateway job label.
pub const JOB: &str = "monoskope_backup";

/// A Pushgateway.
#[derive(Debug, Clone)]
pub struct Pushgateway {
    url: String,
    client: HttpClient,
}

fn segment(v: &str) -> String {
    // Label values go into the path; the Pushgateway's base64 form covers any value.
    use base64::Engine as _;
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        v.to_string()
    } else {
        base64::engine::general_purpose::URL_SAFE.encode(v)
    }
}

impl Pushgateway {
    /// A client for the Pushgateway at `url` (`http://HOST:PORT`).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "prometheusPushgatewayUrl: {url:?} is not an http:// or https:// URL"
        );
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            client: HttpClient::new(Duration::from_secs(10))?,
        })
    }

    /// The group's URL.
    pub fn group_url(&self) -> String {
        let mut u = format!("{}/metrics/job/{JOB}", self.url);
        for (label, var) in [("namespace", "POD_NAMESPACE"), ("pod", "POD_NAME")] {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    let s = segment(&v);
                    let suffix = if s == v { "" } else { "@base64" };
                    u.push_str(&format!("/{label}{suffix}/{s}"));
                }
            }
        }
        u
    }

    /// Pushes what a run of `op` set; warns (and returns false) when that fails.
    pub async fn push(&self, op: Op, ok: bool) -> bool {
        let families = metrics::get().run_families(op, ok);
        let mut body = Vec::new();
        if let Err(e) =
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut body)
        {
            tracing::warn!(error = %e, "cannot encode metrics for the Pushgateway");
            return false;
        }
        let url = self.group_url();
        let shown = crate::redact::url(&url);
        match self
            .client
            .send(
                http::Method::POST,
                &url,
                Some("text/plain; version=0.0.4"),
                body,
            )
            .await
        {
            Ok(a) if a.status.is_success() => {
                tracing::info!(url = %shown, "metrics pushed to the Pushgateway");
                true
            }
            Ok(a) => {
                tracing::warn!(url = %shown, status = %a.status, answer = %String::from_utf8_lossy(&a.body).trim(), "the Pushgateway refused the metrics");
                false
            }
            Err(e) => {
                tracing::warn!(url = %shown, error = %monoskope_backup_client::error_line(e.as_ref()), "cannot push metrics to the Pushgateway");
                false
            }
        }
    }
}
