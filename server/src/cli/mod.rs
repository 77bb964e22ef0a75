//! The `backup-server` command line.

mod bench;
mod copier;
mod demo;
mod follow;
mod import;
mod inspect;
mod keys;
mod retention;
mod rewrap;
pub mod schedule;
mod serve;
mod service;
pub mod settings;
mod trace;

pub use inspect::{record_json, rfc3339, summary_json};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use monoskope_backup_client::term::{stop_signal as signal, Progress};

use crate::ops::logging::{self, LogFormat};
use crate::ops::secrets;

/// BackupService for Monoskope's EventStore: encrypted, database-independent backups and safe restores.
///
/// Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "backup-server", version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BACKUP_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded EventStore alone (Monoskope's EventStore gRPC contract on SQLite, no bus).
    Devstore(DevstoreArgs),
    /// Generate a new 256-bit encryption key (base64), printed or written to a 0600 file.
    Keygen(KeygenArgs),
    /// Decrypt a local archive file and print its events as JSON lines, or its header and footer.
    Inspect(inspect::InspectArgs),
    /// Run the BackupService (gRPC, with health and reflection).
    Serve(Box<serve::ServeArgs>),
    /// Take one backup now, as CreateBackup does; prints the new backup's id as the last line.
    #[command(mut_args(shows_only(BACKUP_FLAGS)))]
    Backup(service::BackupArgs),
    /// List the complete backups straight from the destination's manifests (no catalog needed).
    #[command(mut_args(shows_only(DESTINATION_FLAGS)))]
    List(service::ListArgs),
    /// Read every byte of backups at the destination and check chunks, footer and manifest (for an incremental, every link of its chain); exit 7 on any damage.
    #[command(mut_args(shows_only(VERIFY_FLAGS)))]
    Verify(service::VerifyArgs),
    /// Restore a backup into the events table (--events-db) or, with --via-api, through the EventStore API.
    #[command(mut_args(shows_only(RESTORE_FLAGS)))]
    Restore(service::RestoreArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(CompletionsArgs),
    /// Print the man page of backup-server (roff) to stdout, or write one page per command into
    /// --out DIR.
    Man(ManArgs),
    /// Re-wrap backups' data keys to the current key or recipients without re-encrypting them
    /// (key rotation); with --remove-old, only the new key reads them afterwards.
    Rewrap(rewrap::RewrapArgs),
    /// Manage the catalog.
    Catalog(service::CatalogArgs),
    /// Show what retention keeps and deletes, and why (`retention plan`).
    Retention(retention::RetentionArgs),
    /// Run everything on this machine: embedded EventStore with sample events, the service, a backup, list and verify.
    Demo(demo::DemoArgs),
    /// Check a configuration file (every key and value) without starting anything.
    CheckConfig(CheckConfigArgs),
    /// Import backups written by other tools (Monoskope's own EventStore backups).
    Import(import::ImportArgs),
    /// Load N deterministic Monoskope-like events straight into an empty events table (for the
    /// benchmark run).
    Generate(bench::GenerateArgs),
    /// Measure zstd and AES-256-GCM alone on a file's bytes, in 1 MiB chunks (for the
    /// benchmark run); prints JSON.
    BenchPrimitives(bench::PrimitivesArgs),
}

/// `backup-server devstore`.
#[derive(Debug, clap::Args)]
pub struct DevstoreArgs {
    /// Address to listen on (plaintext gRPC, as Monoskope's EventStore).
    #[arg(long, default_value = "127.0.0.1:8080", env = "DEVSTORE_LISTEN")]
    pub listen: SocketAddr,
    /// SQLite database file (created when missing).
    #[arg(long, default_value = "devstore.db", env = "DEVSTORE_DB")]
    pub db: PathBuf,
    /// Largest gRPC message accepted, in bytes (Monoskope's store: 4 MiB).
    #[arg(long, default_value_t = crate::devstore::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,
    /// Fill an empty store with N deterministic Monoskope-like sample events (N/100 aggregates)
    /// before serving; for demos and benchmarks.
    #[arg(long, default_value_t = 0)]
    pub seed_sample: u64,
    /// How stored JSON orders object keys: `postgres` (jsonb: shorter keys first) or
    /// `bytewise` (as CockroachDB's JSONB); drills compare JSON as values either way.
    #[arg(long, value_enum, default_value_t = crate::devstore::jsonb::KeyOrder::Postgres)]
    pub jsonb_key_order: crate::devstore::jsonb::KeyOrder,
    /// Publish every stored event to this RabbitMQ (amqp://…), as Monoskope's EventStore does:
    /// exchange `m8_events`, routing key `<prefix>.<AggregateType>.<EventType>` (the same
    /// variable as the EventStore; without it, storing publishes nothing).
    #[arg(long, env = "BUS_URL")]
    pub bus_url: Option<String>,
    /// Routing key prefix of the published messages.
    #[arg(long, env = "ROUTING_KEY_PREFIX", default_value = crate::bus::DEFAULT_PREFIX)]
    pub bus_routing_key_prefix: String,
    /// How long a failed publish is retried before `Store` fails with `could not publish event`
    /// (the event stays stored), as the EventStore's one minute.
    #[arg(long, default_value = "60s", value_parser = crate::time::parse_duration)]
    pub bus_retry_for: std::time::Duration,
}

/// `backup-server completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `backup-server man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write `backup-server.1` and one `backup-server-COMMAND.1` per command into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `backup-server keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write the key to this file (mode 0600; an existing file is never overwritten) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Make an age X25519 identity instead of a master key: written to --out (required; mode
    /// 0600), its recipient (`age1…`, the public key for --recipient-file) printed.
    #[arg(long, requires = "out")]
    pub recipient: bool,
}

/// The shared flags ([`settings::CommonArgs`]) in groups, each named once; a command's help
/// shows the groups it uses.
const READ: &[&str] = &[
    "config",
    "destination",
    "s3_endpoint",
    "s3_region",
    "s3_disable_ssl",
    "catalog",
    "copy_destinations",
];
const LOCK: &[&str] = &["s3_object_lock_mode", "s3_object_lock_days"];
const RETENTION: &[&str] = &[
    "retention_count",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
];
const STORE: &[&str] = &[
    "event_store",
    "event_store_ca",
    "events_db",
    "lock_wait_timeout",
];
const REPORT: &[&str] = &["pushgateway_url", "emit_events"];
const WRITE: &[&str] = &[
    "key_file",
    "recipient_file",
    "no_encryption",
    "timeout",
    "compression_level",
    "full_every",
];
const READ_KEYS: &[&str] = &["key_file", "identity_file"];
const RESTORE: &[&str] = &["restore_timeout"];
const ALL_GROUPS: &[&[&str]] = &[
    READ, LOCK, RETENTION, STORE, REPORT, WRITE, READ_KEYS, RESTORE,
];

/// What a command that only reads the destination uses.
pub(super) const DESTINATION_FLAGS: &[&[&str]] = &[READ];
/// `verify`: the destination and the keys that read it.
const VERIFY_FLAGS: &[&[&str]] = &[READ, READ_KEYS];
/// `backup`: everything but what only reads or restores.
const BACKUP_FLAGS: &[&[&str]] = &[READ, LOCK, RETENTION, STORE, REPORT, WRITE];
/// `restore`: where the backup is, the keys that read it, and where it goes.
const RESTORE_FLAGS: &[&[&str]] = &[READ, READ_KEYS, STORE, REPORT, RESTORE];
/// `retention plan`: the destination and the policy.
pub(super) const RETENTION_FLAGS: &[&[&str]] = &[READ, RETENTION];

/// Hides from a command's help the shared flags it does not use (they are still accepted, so a
/// script passing the same flags to every command keeps working).
pub(super) fn shows_only(
    uses: &'static [&'static [&'static str]],
) -> impl FnMut(clap::Arg) -> clap::Arg {
    move |a| {
        let id = a.get_id().as_str();
        let shared = ALL_GROUPS.iter().any(|g| g.contains(&id));
        if shared && !uses.iter().any(|g| g.contains(&id)) {
            a.hide(true)
        } else {
            a
        }
    }
}

/// Options that locate encryption keys (never the key itself).
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Key file: one base64 256-bit key per line. Repeatable (a keyring; the environment
    /// variable takes a comma-separated list): the first key of the first file encrypts new
    /// backups, every key reads. Without it, BACKUP_ENCRYPTION_KEY (base64) or BACKUP_PASSPHRASE
    /// is used.
    #[arg(long, env = "BACKUP_KEY_FILE", value_delimiter = ',')]
    pub key_file: Vec<PathBuf>,
    /// Recipient file: age X25519 recipients (`age1…`), one a line. New backups are encrypted to
    /// every recipient and the service cannot read them (write-only); reading takes an identity.
    #[arg(long, env = "BACKUP_RECIPIENT_FILE")]
    pub recipient_file: Option<PathBuf>,
    /// Identity file (`AGE-SECRET-KEY-1…`, from `keygen --recipient`) that reads backups made for
    /// its recipient. Repeatable (the environment variable takes a comma-separated list).
    #[arg(long, env = "BACKUP_IDENTITY_FILE", value_delimiter = ',')]
    pub identity_file: Vec<PathBuf>,
}

/// `backup-server check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The YAML file.
    #[arg(long, env = "BACKUP_CONFIG")]
    pub config: PathBuf,
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    monoskope_backup_client::term::quiet_on_closed_pipe();
    // A check for deployment manifests (the Helm chart's tests): the arguments parse, nothing runs.
    if std::env::var_os("MBK_PARSE_ONLY").is_some() {
        println!("arguments ok");
        return ExitCode::SUCCESS;
    }
    logging::init(cli.log_format, "info");
    warn_of_passwords_in_arguments();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    let result = rt.block_on(run(cli));
    // What the runtime's tasks still log while they wind down (a pool's connections released)
    // comes before the error line, so the error stays the last line a script reads.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Warns of every URL with a password given on the command line: `ps` shows it to every user
/// of the machine (and Kubernetes shows a container's arguments to whoever may read the pod).
fn warn_of_passwords_in_arguments() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (i, arg) in args.iter().enumerate() {
        if !crate::redact::has_password(arg) {
            continue;
        }
        let flag = match arg.split_once('=') {
            Some((f, _)) if f.starts_with("--") => f.to_string(),
            _ => match i.checked_sub(1).map(|p| &args[p]) {
                Some(p) if p.starts_with("--") => p.clone(),
                _ => format!("argument {}", i + 1),
            },
        };
        tracing::warn!(
            flag = %flag,
            "a password is given inside a URL on the command line, where `ps` shows it to every user: give the URL through the flag's environment variable (from a Secret) or the config file instead"
        );
    }
}

/// A usage error: a flag, environment variable or config value that is malformed, out of
/// range, or in conflict with another. The command exits 2 (not 1) with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

fn fail(e: &anyhow::Error) -> ExitCode {
    // Output into a pipe whose reader went away (`inspect … | head -1`) is not a failure.
    let broken_pipe = |k: Option<std::io::ErrorKind>| k == Some(std::io::ErrorKind::BrokenPipe);
    if e.chain().any(|c| {
        broken_pipe(c.downcast_ref::<std::io::Error>().map(std::io::Error::kind))
            || broken_pipe(
                c.downcast_ref::<serde_json::Error>()
                    .and_then(|j| j.io_error_kind()),
            )
    }) {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "backup-server: error: {}",
        crate::redact::text(&monoskope_backup_client::error_line(e.as_ref()))
    );
    exit_of(e).into()
}

/// The exit code `e` ends a command with (`monoskope_backup_client::exit`).
pub fn exit_of(e: &anyhow::Error) -> crate::engine::Exit {
    if e.chain().any(|c| c.is::<UsageError>()) {
        return crate::engine::Exit::Usage;
    }
    crate::engine::exit_of(e)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devstore(a) => {
            let listener = crate::devstore::bind(a.listen).await?;
            let addr = listener.local_addr()?;
            let opts = crate::devstore::DevStoreOptions {
                max_message_size: a.max_message_size,
                seed_sample: a.seed_sample,
                key_order: a.jsonb_key_order,
                bus: a.bus_url.clone().map(|url| {
                    (
                        crate::bus::BusConfig {
                            url,
                            prefix: a.bus_routing_key_prefix.clone(),
                            ..Default::default()
                        },
                        a.bus_retry_for,
                    )
                }),
            };
            let bus = opts.bus.is_some();
            let db = a.db.clone();
            crate::devstore::serve(&a.db, listener, opts, async move {
                println!("devstore listening on {addr} (database {})", db.display());
                tracing::info!(%addr, db = %db.display(), bus, "embedded EventStore listening");
                shutdown_signal().await
            })
            .await
        }
        Command::Keygen(a) if a.recipient => {
            let path = a.out.expect("clap requires --out with --recipient");
            let id = crate::archive::Identity::generate();
            secrets::write_identity_file(&path, &id)?;
            eprintln!(
                "wrote identity {} to {} (mode 0600); its recipient:",
                id.id(),
                path.display()
            );
            println!("{}", id.recipient().to_text());
            Ok(())
        }
        Command::Keygen(a) => {
            let key = crate::archive::MasterKey::generate();
            match a.out {
                Some(path) => {
                    secrets::write_key_file(&path, &key)?;
                    println!("wrote key {} to {} (mode 0600)", key.id(), path.display());
                }
                None => println!("{}", key.to_base64()),
            }
            Ok(())
        }
        Command::Inspect(a) => inspect::run(a),
        Command::Serve(a) => serve::serve(*a).await,
        Command::Backup(a) => service::backup(a).await,
        Command::List(a) => service::list(a).await,
        Command::Verify(a) => service::verify(a).await,
        Command::Restore(a) => service::restore(a).await,
        Command::Catalog(a) => service::catalog(a).await,
        Command::Rewrap(a) => rewrap::run(a).await,
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "backup-server", &mut out);
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
            Ok(())
        }
        Command::Man(a) => {
            use clap::CommandFactory;
            let cmd = Cli::command();
            match a.out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(cmd, &dir)?;
                    println!("wrote the man pages to {}", dir.display());
                }
                None => {
                    let mut out = Vec::new();
                    clap_mangen::Man::new(cmd).render(&mut out)?;
                    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
                }
            }
            Ok(())
        }
        Command::Retention(a) => retention::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Import(a) => import::run(a).await,
        Command::Generate(a) => bench::generate(a).await,
        Command::BenchPrimitives(a) => bench::primitives(a),
        Command::CheckConfig(a) => {
            crate::ops::config::FileConfig::load(&a.config)?;
            println!("{}: ok", a.config.display());
            Ok(())
        }
    }
}

/// The identity of a one-shot command: the local user.
pub(crate) fn cli_identity() -> crate::identity::Identity {
    crate::identity::Identity {
        id: format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ),
        ..Default::default()
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    signal().await;
    tracing::info!("shutting down");
}

/// How long a stopping process waits for its interrupted operation to record its end.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Stops `engine`'s operation on SIGTERM or SIGINT and waits (up to [`STOP_GRACE`]) for it to
/// end: the backup's upload aborted, the restore rolled back, the record FAILED ("interrupted by
/// SIGTERM"), the lease given back. A second signal exits at once.
pub async fn stop_on_signal(engine: &crate::engine::Engine) {
    let why = signal().await;
    tracing::warn!(
        signal = why,
        "stopping: the running backup or restore, if any, is interrupted (a second signal exits at once)"
    );
    tokio::select! {
        ended = engine.interrupt(why, STOP_GRACE) => if !ended {
            // Exiting is what was asked for: the record stays RUNNING until the next start (or
            // the lease's expiry) marks it FAILED, and an unfinished upload is removed by
            // retention once it is a day old.
            tracing::error!(grace = %humantime::format_duration(STOP_GRACE), "the interrupted operation did not end in time; exiting now");
            eprintln!("backup-server: error: {why}: the interrupted operation did not end within {}; exiting (its record is marked FAILED at the next start)", humantime::format_duration(STOP_GRACE));
            std::process::exit(1);
        },
        again = signal() => exit_on_second(again),
    }
}

/// A second signal while an interrupted operation ends: exit at once, as without a handler.
fn exit_on_second(sig: &str) -> ! {
    eprintln!("backup-server: error: second {sig}: exiting at once; the interrupted operation's record may stay RUNNING until the next start marks it FAILED");
    std::process::exit(1);
}

/// Shows the progress of `engine`'s operation on stderr while `work` runs: a spinner on a
/// terminal, a line every 10 s otherwise (a one-shot restore in a disaster is not silent).
pub async fn with_progress<F: std::future::Future>(
    engine: &crate::engine::Engine,
    work: F,
) -> F::Output {
    let mut shown = Progress::new();
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            () = tokio::time::sleep(monoskope_backup_client::term::TICK) => {}
        }
        shown.tick(engine.running().await.map(|op| {
            format!(
                "{} {}: {}, {} {}",
                op.kind,
                op.id,
                monoskope_backup_client::term::events_progress(op.events, op.total, op.elapsed),
                monoskope_backup_client::human_bytes(op.bytes),
                if op.kind == "backup" {
                    "written"
                } else {
                    "of archive read"
                }
            )
        }));
    };
    shown.finish();
    out
}

/// Runs a one-shot command's `work` on `engine`; on SIGTERM or SIGINT its operation is
/// interrupted and `work` ends with the failure it reports.
pub async fn interruptible<F: std::future::Future>(
    engine: &crate::engine::Engine,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => out,
        () = stop_on_signal(engine) => tokio::select! {
            out = &mut work => out,
            again = signal() => exit_on_second(again),
        },
    }
}
