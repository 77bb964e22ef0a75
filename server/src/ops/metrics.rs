//! Prometheus metrics of the process (`/metrics` on `--metrics-address`), and the families one
//! run pushes to a Pushgateway.
//!
//! Every gauge describes the last run, so the same names work scraped from `serve` and pushed by
//! a one-shot `backup`. Names are part of the interface (alert rules in `deploy/` use them).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Backup or restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A backup.
    Backup,
    /// A restore.
    Restore,
}

impl Op {
    fn prefix(self) -> &'static str {
        match self {
            Op::Backup => "monoskope_backup",
            Op::Restore => "monoskope_backup_restore",
        }
    }
}

/// The gauges of one kind of operation.
#[derive(Debug)]
struct RunGauges {
    last_success: Gauge,
    last_failure: Gauge,
    last_completion: Gauge,
    duration: Gauge,
    bytes: Gauge,
    events: Gauge,
    running: Gauge,
}

impl RunGauges {
    fn new(r: &Registry, op: Op) -> Self {
        let p = op.prefix();
        let what = match op {
            Op::Backup => "backup",
            Op::Restore => "restore",
        };
        let g = |name: &str, help: String| {
            let g = Gauge::with_opts(Opts::new(format!("{p}_{name}"), help)).expect("valid");
            r.register(Box::new(g.clone())).expect("unique");
            g
        };
        Self {
            last_success: g(
                "last_success_timestamp_seconds",
                format!("Unix time the last successful {what} ended."),
            ),
            last_failure: g(
                "last_failure_timestamp_seconds",
                format!("Unix time the last failed {what} ended."),
            ),
            last_completion: g(
                "last_completion_timestamp_seconds",
                format!("Unix time the last {what} ended, successful or not."),
            ),
            duration: g("duration_seconds", format!("Wall time of the last {what}.")),
            bytes: g(
                "bytes",
                format!("Archive bytes of the last successful {what}."),
            ),
            events: g("events", format!("Events in the last successful {what}.")),
            running: g("running", format!("1 while a {what} runs.")),
        }
    }
}

/// The metrics of the process.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    backup: RunGauges,
    restore: RunGauges,
    drill_success: Gauge,
    continuous_lag: Gauge,
    segments: prometheus::IntCounter,
    bus_connected: Gauge,
    copy_lag: prometheus::GaugeVec,
    copies: std::sync::Mutex<std::collections::BTreeMap<String, CopyState>>,
    runs: IntCounterVec,
    rpc_total: IntCounterVec,
    rpc_seconds: HistogramVec,
}

/// A copy destination as the last pass over it found it.
#[derive(Debug, Clone)]
pub struct CopyState {
    /// See `monoskope_backup_copy_lag_seconds`.
    pub lag_seconds: f64,
    /// Why it is not up to date.
    pub error: Option<String>,
    /// When the pass ended.
    pub checked_at: chrono::DateTime<chrono::Utc>,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let registry = Registry::new();
        let backup = RunGauges::new(&registry, Op::Backup);
        let restore = RunGauges::new(&registry, Op::Restore);
        let drill_success = Gauge::with_opts(Opts::new(
            "monoskope_backup_last_drill_success_timestamp_seconds",
            "Unix time of the last successful restore drill.",
        ))
        .expect("valid");
        let continuous_lag = Gauge::with_opts(Opts::new(
            "monoskope_backup_continuous_lag_seconds",
            "Continuous backup: age of the oldest change in the events table not yet durable at the destination; 0 when caught up, or when continuous backup is off.",
        ))
        .expect("valid");
        let segments = prometheus::IntCounter::with_opts(Opts::new(
            "monoskope_backup_continuous_segments_total",
            "Continuous backup: segments written to the destination by this process.",
        ))
        .expect("valid");
        let bus_connected = Gauge::with_opts(Opts::new(
            "monoskope_backup_continuous_bus_connected",
            "Continuous backup: 1 while it listens on Monoskope's message bus for new events, 0 when the bus is down or not configured (new events are then found by polling).",
        ))
        .expect("valid");
        let copy_lag = prometheus::GaugeVec::new(
            Opts::new(
                "monoskope_backup_copy_lag_seconds",
                "Copies (3-2-1): seconds since the oldest complete backup the copy destination does not hold yet was completed (or since the copy stopped answering); 0 when it holds every backup.",
            ),
            &["destination"],
        )
        .expect("valid");
        let runs = IntCounterVec::new(
            Opts::new(
                "monoskope_backup_operations_total",
                "Backups and restores ended by this process, by operation and result.",
            ),
            &["operation", "result"],
        )
        .expect("valid");
        let rpc_total = IntCounterVec::new(
            Opts::new(
                "monoskope_backup_grpc_requests_total",
                "gRPC calls answered, by full method name and status code.",
            ),
            &["method", "code"],
        )
        .expect("valid");
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new(
                "monoskope_backup_grpc_request_duration_seconds",
                "Time to answer a gRPC call (headers), by full method name.",
            ),
            &["method"],
        )
        .expect("valid");
        for c in [
            Box::new(drill_success.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(continuous_lag.clone()),
            Box::new(segments.clone()),
            Box::new(bus_connected.clone()),
            Box::new(copy_lag.clone()),
            Box::new(runs.clone()),
            Box::new(rpc_total.clone()),
            Box::new(rpc_seconds.clone()),
        ] {
            registry.register(c).expect("unique");
        }
        Metrics {
            registry,
            backup,
            restore,
            drill_success,
            continuous_lag,
            segments,
            bus_connected,
            copy_lag,
            copies: Default::default(),
            runs,
            rpc_total,
            rpc_seconds,
        }
    })
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    fn gauges(&self, op: Op) -> &RunGauges {
        match op {
            Op::Backup => &self.backup,
            Op::Restore => &self.restore,
        }
    }

    /// An operation started.
    pub fn started(&self, op: Op) {
        self.gauges(op).running.set(1.0);
    }

    /// An operation ended without a result to count (a continuous segment that found nothing).
    pub fn not_running(&self, op: Op) {
        self.gauges(op).running.set(0.0);
    }

    /// An operation ended.
    pub fn finished(&self, op: Op, ok: bool, took: Duration, bytes: u64, events: u64) {
        let g = self.gauges(op);
        let t = now();
        g.running.set(0.0);
        g.duration.set(took.as_secs_f64());
        g.last_completion.set(t);
        if ok {
            g.last_success.set(t);
            g.bytes.set(bytes as f64);
            g.events.set(events as f64);
        } else {
            g.last_failure.set(t);
        }
        let operation = match op {
            Op::Backup => "backup",
            Op::Restore => "restore",
        };
        self.runs
            .with_label_values(&[operation, if ok { "success" } else { "failure" }])
            .inc();
    }

    /// A continuous segment reached the destination.
    pub fn segment_written(&self) {
        self.segments.inc();
    }

    /// The continuous backup's lag in seconds (0: caught up).
    pub fn set_continuous_lag(&self, seconds: f64) {
        self.continuous_lag.set(seconds);
    }

    /// Whether continuous backup listens on the message bus.
    pub fn set_bus_connected(&self, connected: bool) {
        self.bus_connected.set(if connected { 1.0 } else { 0.0 });
    }

    /// How far the copy at `destination` is behind, in seconds (0: it holds every backup), and
    /// why, as the pass that ended now found it.
    pub fn set_copy(&self, destination: &str, seconds: f64, error: Option<String>) {
        self.copy_lag.with_label_values(&[destination]).set(seconds);
        self.copies.lock().expect("copies").insert(
            destination.to_string(),
            CopyState {
                lag_seconds: seconds,
                error,
                checked_at: chrono::Utc::now(),
            },
        );
    }

    /// Every copy destination as its last pass found it, by URL.
    pub fn copies(&self) -> Vec<(String, CopyState)> {
        let m = self.copies.lock().expect("copies");
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The continuous backup's lag and the segments written, as last set.
    pub fn continuous(&self) -> (f64, u64) {
        (self.continuous_lag.get(), self.segments.get())
    }

    /// A restore drill succeeded.
    pub fn drill_succeeded(&self) {
        self.drill_success.set(now());
    }

    /// Seeds the last-success and last-failure times from the catalog at start-up, so a
    /// restarted service does not look as if it never backed up.
    pub fn seed(&self, op: Op, last_success: Option<f64>, last_failure: Option<f64>) {
        let g = self.gauges(op);
        if let Some(t) = last_success {
            g.last_success.set(t);
        }
        if let Some(t) = last_failure {
            g.last_failure.set(t);
        }
        if let Some(t) = [last_success, last_failure]
            .into_iter()
            .flatten()
            .reduce(f64::max)
        {
            g.last_completion.set(t);
        }
    }

    /// The text exposition of every metric.
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The families a run of `op` pushes: what the run itself set. A failed run does not push
    /// the success timestamp, bytes or events, so the Pushgateway keeps the last success's.
    pub fn run_families(&self, op: Op, ok: bool) -> Vec<MetricFamily> {
        let p = op.prefix();
        let mut names: Vec<String> = ["last_completion_timestamp_seconds", "duration_seconds"]
            .iter()
            .map(|n| format!("{p}_{n}"))
            .collect();
        if ok {
            for n in ["last_success_timestamp_seconds", "bytes", "events"] {
                names.push(format!("{p}_{n}"));
            }
        } else {
            names.push(format!("{p}_last_failure_timestamp_seconds"));
        }
        self.registry
            .gather()
            .into_iter()
            .filter(|f| names.iter().any(|n| n == f.name()))
            .collect()
    }

    /// Counts one answered gRPC call.
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        self.rpc_total.with_label_values(&[method, code]).inc();
        self.rpc_seconds
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }
}

/// Counts one answered gRPC call from its response headers (an error status is in the headers
/// of a trailers-only response; a response without one is a success).
pub fn record_rpc(method: &str, headers: &http::HeaderMap, took: Duration) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok);
    // Only known methods become label values: an attacker must not grow the label set.
    const KNOWN: &[&str] = &[
        "/monoskope.backup.v1.BackupService/CreateBackup",
        "/monoskope.backup.v1.BackupService/ListBackups",
        "/monoskope.backup.v1.BackupService/Restore",
        "/monoskope.backup.v1.BackupService/GetStatus",
        "/monoskope.backup.v1.BackupService/Drill",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ];
    let method = KNOWN
        .iter()
        .find(|k| **k == method)
        .copied()
        .unwrap_or("other");
    get().rpc(method, &format!("{code:?}"), took);
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::routing::get as route;
    let app = axum::Router::new()
        .route(
            "/metrics",
            route(|| async {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    get().text(),
                )
            }),
        )
        .route("/healthz", route(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
