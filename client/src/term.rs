//! What `backupctl` and `backup-server`'s one-shot commands share at the terminal: the signal
//! that stops a wait, and progress while an operation runs.

use std::io::IsTerminal;
use std::time::Duration;

/// How often [`Progress::tick`] is to be called.
pub const TICK: Duration = Duration::from_millis(500);

/// The next SIGINT (Ctrl-C) or SIGTERM: its name.
pub async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = term => "SIGTERM",
    }
}

/// Environment variable: how often a progress line is written when stderr is not a terminal
/// (a duration such as `10s`, the default, or `1s`).
pub const PROGRESS_EVERY_ENV: &str = "BACKUP_PROGRESS_EVERY";

/// Progress of a running operation on stderr: a spinner on a terminal, a line every 10 s
/// otherwise (a log file, a CronJob's pod; `BACKUP_PROGRESS_EVERY` sets the interval).
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticks: u64,
    ticks_per_line: u64,
}

/// Ticks between two progress lines, from [`PROGRESS_EVERY_ENV`] (10 s when unset or not a
/// duration).
fn ticks_per_line() -> u64 {
    let every = std::env::var(PROGRESS_EVERY_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(Duration::from_secs(10));
    (every.as_millis() / TICK.as_millis()).max(1) as u64
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Starts showing progress (the spinner, on a terminal).
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self {
            bar,
            ticks: 0,
            ticks_per_line: ticks_per_line(),
        }
    }

    /// One [`TICK`] passed; `msg` is where the operation is, if known.
    pub fn tick(&mut self, msg: Option<String>) {
        self.ticks += 1;
        let Some(msg) = msg else {
            return;
        };
        match &self.bar {
            Some(b) => b.set_message(msg),
            None if self.ticks % self.ticks_per_line == 0 => eprintln!("{msg}"),
            None => {}
        }
    }

    /// Clears the spinner.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Makes a closed standard output end the program quietly with exit 0 — `backupctl list | head`,
/// `… | true` — instead of a panic and a backtrace: printing panics on EPIPE, and this hook turns
/// exactly that panic into an exit (any other panic is reported as before).
pub fn quiet_on_closed_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// `done of total events (N%), about T left` when the total is known, else `done events`; the
/// time left from the rate so far (none before a second has passed or an event was handled).
pub fn events_progress(done: u64, total: u64, elapsed: Duration) -> String {
    if total == 0 {
        return format!("{done} events");
    }
    let pct = (done as f64 / total as f64 * 100.0).min(100.0);
    let left = (done > 0 && elapsed >= Duration::from_secs(1) && done < total).then(|| {
        let rate = done as f64 / elapsed.as_secs_f64();
        Duration::from_secs(((total - done) as f64 / rate).ceil() as u64)
    });
    match left {
        Some(l) => format!(
            "{done} of {total} events ({pct:.0}%), about {} left",
            humantime::format_duration(l)
        ),
        None => format!("{done} of {total} events ({pct:.0}%)"),
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn progress_says_how_far_and_how_long_when_the_total_is_known() {
        let s = Duration::from_secs;
        assert_eq!(events_progress(120, 0, s(5)), "120 events");
        assert_eq!(
            events_progress(500, 1000, s(10)),
            "500 of 1000 events (50%), about 10s left"
        );
        assert_eq!(events_progress(0, 1000, s(3)), "0 of 1000 events (0%)");
        assert_eq!(
            events_progress(1000, 1000, s(3)),
            "1000 of 1000 events (100%)"
        );
    }
}
