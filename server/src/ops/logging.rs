//! Structured logs to stderr with `tracing-subscriber`, as text or JSON lines.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides `default_level`. Without `RUST_LOG`,
/// sqlx's per-statement lines stay quiet below errors: its "slow statement" warning fires on
/// every bulk load and index build of a restore, which are slow by nature, not a problem; and
/// PostgreSQL's notices below warnings ("relation \"event_records\" already exists, skipping"
/// on every restore into an existing table). Text lines are coloured only on a terminal (and
/// never with `NO_COLOR` set): in a file, a pipe or `kubectl logs` escape codes are noise.
/// Every line passes [`crate::redact::text`]: no password inside a URL reaches the log.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{default_level},sqlx::query=error,sqlx::postgres::notice=warn"
        ))
    });
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| crate::redact::Writer(std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
