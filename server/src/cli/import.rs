//! `backup-server import monoskope SOURCE`: restore (or `--convert`) a backup written by
//! Monoskope's own EventStore.

use monoskope_backup_client::error_line;
use std::io::Read;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use super::settings::CommonArgs;
use crate::import::{self, MonoskopeKey, Summary};
use crate::sink::table::{CopyRows, EventsTable};

/// `backup-server import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub what: ImportCommand,
}

/// What to import.
#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// A backup of Monoskope's EventStore (`eventstore backup`: a tar of per-event JSON,
    /// optionally AES-CFB encrypted with S3_ENCRYPTION_KEY). Restores it into the events table
    /// (--events-db) all-or-nothing, through the API with --via-api, or with --convert stores
    /// it at the destination as a regular backup of ours.
    Monoskope(MonoskopeArgs),
}

/// `backup-server import monoskope`.
#[derive(Debug, clap::Args)]
pub struct MonoskopeArgs {
    /// Shared options (the target store, and for --convert the destination and key).
    #[command(flatten)]
    pub common: CommonArgs,
    /// A local `.tar` file, or `s3://BUCKET/monoskope/eventstore/<time>-<uuid>.tar` (the S3
    /// options and credentials as everywhere else).
    pub source: String,
    /// File holding Monoskope's key (its raw bytes, 16, 24 or 32 long, as S3_ENCRYPTION_KEY);
    /// without it and without S3_ENCRYPTION_KEY the entries are read as plain JSON.
    #[arg(long)]
    pub monoskope_key_file: Option<std::path::PathBuf>,
    /// Read and check the whole backup and print a summary; write nothing.
    #[arg(long, conflicts_with_all = ["convert", "via_api", "drop_existing"])]
    pub dry_run: bool,
    /// Store it at the destination as a regular (encrypted, verified) backup of ours instead of
    /// restoring it.
    #[arg(long, conflicts_with_all = ["via_api", "drop_existing"])]
    pub convert: bool,
    /// Restore through the EventStore API (republishes every event on a real Monoskope bus).
    #[arg(long)]
    pub via_api: bool,
    /// Replace the events the table holds (events table only).
    #[arg(long)]
    pub drop_existing: bool,
    /// Import aggregates whose versions have gaps or duplicates as they are.
    #[arg(long)]
    pub allow_gaps: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn key_of(a: &MonoskopeArgs) -> anyhow::Result<Option<MonoskopeKey>> {
    let raw = match &a.monoskope_key_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => std::env::var_os("S3_ENCRYPTION_KEY")
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .filter(|v| !v.is_empty()),
    };
    raw.map(MonoskopeKey::new).transpose()
}

/// Opens the source for one pass.
async fn open(
    source: &str,
    s3: &crate::destination::S3Options,
) -> anyhow::Result<Box<dyn Read + Send>> {
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .with_context(|| format!("{source:?} is not s3://BUCKET/KEY"))?;
        let dest = crate::destination::open(&format!("s3://{bucket}/"), s3).await?;
        let reader = dest
            .get(key)
            .await
            .with_context(|| format!("cannot read {source}"))?;
        return Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            tokio_util::io::SyncIoBridge::new(reader),
        )));
    }
    let f = std::fs::File::open(source).with_context(|| format!("cannot open {source}"))?;
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
}

/// One pass over the source on a blocking thread, each record to `each`.
async fn pass(
    a: &MonoskopeArgs,
    s3: &crate::destination::S3Options,
    key: Option<MonoskopeKey>,
    each: impl FnMut(crate::archive::Record) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<Summary> {
    let input = open(&a.source, s3).await?;
    let allow_gaps = a.allow_gaps;
    let source = a.source.clone();
    tokio::task::spawn_blocking(move || import::read(input, key.as_ref(), allow_gaps, each))
        .await?
        .with_context(|| format!("Monoskope backup {source}"))
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "{} events of {} aggregates, {} to {}{}",
        s.events,
        s.aggregates,
        s.first_event_time.as_deref().unwrap_or("-"),
        s.last_event_time.as_deref().unwrap_or("-"),
        if s.encrypted { " (decrypted)" } else { "" }
    );
    for (t, n) in &s.aggregate_types {
        println!("  aggregate type {t}: {n} events");
    }
    for (t, n) in &s.event_types {
        println!("  event type {t}: {n}");
    }
    Ok(())
}

pub(super) async fn run(a: ImportArgs) -> anyhow::Result<()> {
    let ImportCommand::Monoskope(a) = a.what;
    let settings = a.common.resolve()?;
    let key = key_of(&a)?;
    let s3 = settings.s3.clone();
    if a.dry_run {
        let s = pass(&a, &s3, key, |_| Ok(())).await?;
        print_summary(&s, a.json)?;
        println!("dry run: the backup reads and checks out; nothing was written");
        return Ok(());
    }
    if a.convert {
        let engine = settings.engine().await?;
        let (tx, rx) = mpsc::channel::<anyhow::Result<crate::archive::Record>>(1024);
        let err_tx = tx.clone();
        let reading = pass(&a, &s3, key, move |rec| {
            tx.blocking_send(Ok(rec))
                .map_err(|_| anyhow::anyhow!("the backup stopped"))
        });
        // A failed check must fail the backup before its archive is sealed.
        let reading = async move {
            let r = reading.await;
            if let Err(e) = &r {
                let _ = err_tx
                    .send(Err(anyhow::anyhow!(error_line(e.as_ref()))))
                    .await;
            }
            r
        };
        let stream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let label = format!("monoskope-tar:{}", a.source);
        let who = super::cli_identity();
        let converting = async { tokio::join!(reading, engine.backup_from(&who, &label, stream)) };
        let (summary, rec) =
            super::interruptible(&engine, super::with_progress(&engine, converting)).await;
        let rec = rec?;
        if let Some(e) = &rec.error {
            bail!("converting {} failed: {e}", a.source);
        }
        let summary = summary?;
        print_summary(&summary, a.json)?;
        println!(
            "converted into backup {}: {} events, {} bytes at {}",
            rec.id,
            rec.event_count,
            rec.archive_bytes,
            engine.config().destination.url()
        );
        println!("{}", rec.id);
        return Ok(());
    }
    if a.via_api {
        if a.drop_existing {
            bail!("--drop-existing is not possible through the EventStore API (it cannot delete events); import into the events table (--events-db) to replace a store's events");
        }
        let n = crate::sink::api::count(&settings.event_store).await?;
        if n > 0 {
            bail!("the EventStore holds {n} events; import only into an empty store");
        }
        // Pass 1: the whole backup must read and check out before the first Store call.
        pass(&a, &s3, key.clone(), |_| Ok(())).await?;
        let (tx, rx) = mpsc::channel(1024);
        let reading = pass(&a, &s3, key, move |rec| {
            tx.blocking_send(rec)
                .map_err(|_| anyhow::anyhow!("the EventStore stopped taking events"))
        });
        let storing = crate::sink::api::restore(&settings.event_store, rx);
        let (summary, stored) = tokio::join!(reading, storing);
        let stored = stored?;
        let summary = summary?;
        print_summary(&summary, a.json)?;
        println!(
            "imported {stored} events through the EventStore API at {}",
            settings.event_store.addr
        );
        return Ok(());
    }
    let url = settings.events_db.clone().context(
        "import needs the events table (--events-db postgres://…), or --via-api, --convert or --dry-run",
    )?;
    let table = EventsTable::connect(&url)
        .await?
        .with_lock_wait(settings.lock_wait_timeout);
    let n = table.count().await?;
    if n > 0 && !a.drop_existing {
        bail!("event_records holds {n} events; import only into an empty table, or pass --drop-existing to replace them");
    }
    let (tx, rx) = mpsc::channel::<anyhow::Result<Option<CopyRows>>>(1024);
    let done_tx = tx.clone();
    let reading = pass(&a, &s3, key, move |rec| {
        let mut row = CopyRows::with_capacity(1024);
        row.push(&crate::archive::RecordView::of(&rec))
            .context("event_records cannot hold this event; nothing was written (rolled back)")?;
        tx.blocking_send(Ok(Some(row)))
            .map_err(|_| anyhow::Error::new(SinkStopped("the events table")))
    });
    let writing = table.restore(rx, a.drop_existing);
    let reading = async move {
        let r = pass_end(reading.await, &done_tx).await;
        drop(done_tx);
        r
    };
    let (summary, written) = tokio::join!(reading, writing);
    // When the table gave up first, its error is the cause.
    let summary = match (summary, &written) {
        (Err(e), Err(_)) if e.chain().any(|c| c.is::<SinkStopped>()) => None,
        (s, _) => Some(s?),
    };
    let written =
        written.context("writing into event_records failed; nothing was written (rolled back)")?;
    let summary = summary.unwrap_or_default();
    print_summary(&summary, a.json)?;
    println!(
        "imported {written} events into event_records ({}); nothing was published to a message bus: restart the QueryHandler, the Gateway and reactors",
        crate::engine::redact_url(&url)
    );
    Ok(())
}

/// Ends the table sink's stream: `Ok(None)` (commit) after a good pass, an error (roll back)
/// after a bad one.
async fn pass_end(
    r: anyhow::Result<Summary>,
    tx: &mpsc::Sender<anyhow::Result<Option<CopyRows>>>,
) -> anyhow::Result<Summary> {
    match r {
        Ok(s) => {
            let _ = tx.send(Ok(None)).await;
            Ok(s)
        }
        Err(e) => {
            let _ = tx.send(Err(anyhow::anyhow!(error_line(e.as_ref())))).await;
            Err(e)
        }
    }
}

/// The sink stopped taking events (its own error says why): the reading side's failure is only
/// the consequence.
#[derive(Debug, thiserror::Error)]
#[error("{0} stopped taking events")]
struct SinkStopped(&'static str);
