//! `serve`, and the one-shot commands that do exactly what the RPCs do: `backup`, `list`,
//! `verify`, `catalog resync`.

use anyhow::{bail, Context};

use super::settings::CommonArgs;
use crate::engine::verify;
use crate::ops::metrics::Op;

/// `backup-server backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the backup as JSON (docs/JSON.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Store only the events the newest complete backup chain does not hold (a full backup,
    /// saying why, when that is not possible).
    #[arg(long)]
    pub incremental: bool,
}

/// `backup-server list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the backups as a JSON array (docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

/// `backup-server verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Backup id, a unique prefix of one, or `latest`; an incremental is verified with every link of its chain.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Verify every complete backup, and that every incremental's chain is whole and none of its links failed.
    #[arg(long)]
    pub all: bool,
    /// Print the reports as a JSON array (docs/JSON.md).
    #[arg(long)]
    pub json: bool,
    /// Check only that the destination holds exactly what was written (size and SHA-256 of the
    /// stored bytes against the manifest, header and key file), without decrypting: what a
    /// write-only service (--recipient-file) can check. The default decrypts every chunk.
    #[arg(long)]
    pub no_key: bool,
}

/// `backup-server catalog`.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
}

/// Catalog subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog's backup records from the manifests at the destination.
    #[command(mut_args(super::shows_only(super::DESTINATION_FLAGS)))]
    Resync(CatalogResyncArgs),
}

/// `backup-server catalog resync`.
#[derive(Debug, clap::Args)]
pub struct CatalogResyncArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Resolves the settings and builds the engine of a one-shot `op`; a failure here still leaves
/// its trace ([`super::trace`]).
async fn start(
    common: &CommonArgs,
    op: Op,
    read_id: Option<&str>,
) -> anyhow::Result<(super::settings::Settings, crate::engine::Engine)> {
    let settings = match common.resolve() {
        Ok(mut s) => {
            // One-shots leave nothing in the working directory unless asked: their catalog is
            // in memory (rebuilt from the destination, the source of truth) and they store no
            // event in an EventStore they were not given.
            if !s.catalog_given {
                s.catalog_url = crate::catalog::MEMORY.into();
            }
            if !s.event_store_given {
                s.emit_events = false;
            }
            s
        }
        Err(e) => {
            let known = super::trace::Known {
                pushgateway_url: common.pushgateway_url.clone(),
                ..Default::default()
            };
            super::trace::early_failure(op, known, &e).await;
            return Err(e);
        }
    };
    let engine = match read_id {
        // A restore reads a copy when the primary cannot be read or lacks the backup.
        Some(id) => match settings.destination_for_reading(id).await {
            Ok(d) => settings.engine_on(d).await,
            Err(e) => Err(e),
        },
        None => settings.engine().await,
    };
    match engine {
        Ok(engine) => Ok((settings, engine)),
        Err(e) => {
            super::trace::early_failure(op, super::trace::Known::of(&settings), &e).await;
            Err(e)
        }
    }
}

pub(super) async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let (settings, engine) = start(&a.common, Op::Backup, None).await?;
    // Checked before anything runs (no object is written); the failure leaves its trace as any
    // run that fails before it starts.
    if engine.config().protection.is_none() {
        let e = anyhow::Error::new(crate::engine::EngineError::KeyMissing(
            crate::engine::backup::NO_KEY.into(),
        ));
        super::trace::early_failure(Op::Backup, super::trace::Known::of(&settings), &e).await;
        return Err(e);
    }
    let who = super::cli_identity();
    let r = super::interruptible(
        &engine,
        super::with_progress(&engine, engine.backup(&who, a.incremental)),
    )
    .await?;
    if a.json {
        print_json(&backup_json(&r, &engine.config().destination.url()))?;
    }
    if let Some(e) = &r.error {
        return Err(anyhow::Error::new(crate::engine::Ended {
            exit: engine
                .backup_exit(&r.id)
                .await
                .unwrap_or(crate::engine::Exit::Failed),
            message: format!("backup {} failed: {e}", r.id),
        }));
    }
    // Copies in a second place: a copy destination that is down does not fail the backup.
    if !settings.copy_urls.is_empty() {
        let copies = match settings.copies().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "not copied: {}; the backup itself is complete",
                    monoskope_backup_client::error_line(e.as_ref())
                );
                Vec::new()
            }
        };
        let mut down = std::collections::HashMap::new();
        let primary = engine.config().destination.clone();
        for (url, err) in super::copier::pass(primary.as_ref(), &copies, &mut down).await {
            match err {
                None => eprintln!("copied to {}", crate::redact::url(&url)),
                Some(e) => eprintln!(
                    "not copied to {} ({e}); the next backup or `serve` copies it",
                    crate::redact::url(&url)
                ),
            }
        }
    }
    if !a.json {
        if let Some(n) = &r.note {
            eprintln!("note: {n}");
        }
        println!(
            "{} backup {} complete{}: {} events, {} bytes at {}",
            r.kind,
            r.id,
            r.parent_id
                .as_ref()
                .map(|p| format!(" (parent {p})"))
                .unwrap_or_default(),
            r.event_count,
            r.archive_bytes,
            engine.config().destination.url()
        );
        println!("{}", r.id);
    }
    Ok(())
}

pub(super) async fn list(a: ListArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let dest = settings.destination_for_reading("latest").await?;
    let manifests = crate::destination::manifest::list_complete(dest.as_ref()).await?;
    // A destination that holds nothing of ours is a wrong path, not an empty list.
    if manifests.is_empty()
        && dest
            .list(crate::destination::layout::BACKUPS_DIR)
            .await?
            .is_empty()
    {
        return Err(anyhow::Error::new(crate::engine::Ended {
            exit: crate::engine::Exit::NotFound,
            message: format!(
                "nothing of monoskope-backup at {} (no {}/ under it): check --destination",
                dest.url(),
                crate::destination::layout::BACKUPS_DIR.trim_end_matches('/')
            ),
        }));
    }
    if a.json {
        let url = dest.url();
        let all: Vec<_> = manifests
            .iter()
            .map(|m| backup_json(&crate::catalog::BackupRecord::from_manifest(m), &url))
            .collect();
        print_json(&all)?;
    } else if manifests.is_empty() {
        println!("no complete backups at {}", dest.url());
    } else {
        println!(
            "{:<30} {:<11} {:>10} {:>12}  {:<24}  {:<11} {:<20}  LAST EVENT",
            "ID", "KIND", "EVENTS", "BYTES", "COMPLETED", "KEY", ""
        );
        let mut i = 0;
        while i < manifests.len() {
            // A run of continuous segments (newest first) is one line: the window it covers.
            let run = manifests[i..].iter().take_while(|m| m.is_segment()).count();
            if run > 1 {
                let (newest, oldest) = (&manifests[i], &manifests[i + run - 1]);
                let events: u64 = manifests[i..i + run].iter().map(|m| m.event_count).sum();
                let bytes: u64 = manifests[i..i + run].iter().map(|m| m.archive_bytes).sum();
                println!(
                    "{:<30} {:<11} {:>10} {:>12}  {:<24}  {:<11} {:<20}  {}",
                    format!("{run} segments"),
                    "continuous",
                    events,
                    bytes,
                    newest.completed_at,
                    newest.key_kind.as_deref().unwrap_or("-"),
                    "",
                    newest.last_event_time.as_deref().unwrap_or("-")
                );
                println!(
                    "    restorable to any instant from {} to {} ({} … {}; --json lists each)",
                    oldest.first_event_time.as_deref().unwrap_or("-"),
                    newest.last_event_time.as_deref().unwrap_or("-"),
                    oldest.id,
                    newest.id
                );
                i += run;
                continue;
            }
            let m = &manifests[i];
            i += 1;
            let ids: Vec<&str> = m.key_id.split(',').collect();
            let key = if ids.len() > 1 {
                format!("{} +{}", ids[0], ids.len() - 1)
            } else {
                m.key_id.clone()
            };
            println!(
                "{:<30} {:<11} {:>10} {:>12}  {:<24}  {:<11} {:<20}  {}",
                m.id,
                m.kind,
                m.event_count,
                m.archive_bytes,
                m.completed_at,
                m.key_kind
                    .as_deref()
                    .unwrap_or(crate::archive::envelope::kind_of_key_id(&m.key_id)),
                key,
                m.last_event_time.as_deref().unwrap_or("-")
            );
            if let Some(t) = &m.locked_until {
                println!("    locked until {t}");
            }
        }
    }
    Ok(())
}

pub(super) async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let dest = settings.destination().await?;
    let scan = crate::destination::manifest::scan(dest.as_ref()).await?;
    let all = scan.complete.clone();
    // Every complete backup, newest first; or the one asked for with, for an incremental, every
    // link of its chain (full backup first): what a restore of it reads. With --all, a backup
    // whose manifest cannot be trusted fails verification (it is never left out silently).
    let (targets, broken) = if a.all {
        (all.clone(), scan.broken.clone())
    } else {
        let m = verify::resolve(dest.as_ref(), a.id.as_deref().unwrap_or("latest")).await?;
        (
            crate::engine::chain_of(&all, &m).unwrap_or_else(|_| vec![m]),
            Vec::new(),
        )
    };
    if targets.is_empty() && broken.is_empty() {
        bail!("no complete backup at {}", dest.url());
    }
    if settings.keys.is_empty() && !a.no_key {
        return Err(anyhow::Error::new(crate::engine::Ended {
            exit: crate::engine::Exit::KeyMissing,
            message: "no key to decrypt the backups with: give --key-file, --identity-file, BACKUP_ENCRYPTION_KEY or BACKUP_PASSPHRASE — or --no-key to check only the stored bytes against their manifests".into(),
        }));
    }
    let mut reports = Vec::with_capacity(targets.len() + broken.len());
    for m in &targets {
        let keys = (!a.no_key).then_some(&settings.keys);
        let mut r = verify::verify(dest.as_ref(), keys, m).await?;
        if crate::destination::manifest::has_parent(&m.kind) && m.watermark_key.is_none() {
            r.ok = false;
            r.problems
                .push("an incremental backup without a watermark".into());
        }
        reports.push(r);
    }
    // An incremental is only as good as its chain: every link present, and none that failed.
    let failed_here: std::collections::HashSet<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.id.clone())
        .collect();
    for (m, r) in targets.iter().zip(reports.iter_mut()) {
        match crate::engine::chain_of(&all, m) {
            Err(e) => {
                r.ok = false;
                r.problems.push(format!("its chain is broken: {e}"));
            }
            Ok(chain) => {
                for link in chain.iter().filter(|l| l.id != m.id) {
                    if failed_here.contains(&link.id) {
                        r.ok = false;
                        r.problems.push(format!(
                            "it cannot be restored: link {} of its chain failed verification",
                            link.id
                        ));
                    }
                }
            }
        }
    }
    for b in broken {
        reports.push(verify::VerifyReport {
            id: b.id,
            ok: false,
            problems: vec![b.problem],
            events: 0,
            bytes: 0,
            decrypted: false,
            exit: None,
        });
    }
    if a.all {
        reports.sort_by(|a, b| b.id.cmp(&a.id));
    }
    let mut failed = 0;
    for r in &reports {
        if a.json {
            // One array after the loop.
        } else if r.ok {
            let lock = targets
                .iter()
                .find(|m| m.id == r.id)
                .and_then(|m| m.locked_until.as_deref())
                .map(|t| format!("; locked until {t}"))
                .unwrap_or_default();
            if r.decrypted {
                println!(
                    "ok      {} ({} events, {} bytes{lock})",
                    r.id, r.events, r.bytes
                );
            } else {
                println!(
                    "ok      {} ({} bytes stored as written; not decrypted{lock})",
                    r.id, r.bytes
                );
            }
        } else {
            println!("FAILED  {}: {}", r.id, r.problems.join("; "));
        }
        if !r.ok {
            failed += 1;
        }
    }
    if a.json {
        print_json(&reports)?;
    }
    if failed > 0 {
        // Only wrong or missing keys: the backups may be fine — say it is the key.
        let failures: Vec<_> = reports.iter().filter(|r| !r.ok).map(|r| r.exit).collect();
        let all = |e| failures.iter().all(|f| *f == Some(e));
        let exit = if all(crate::engine::Exit::KeyWrong) {
            crate::engine::Exit::KeyWrong
        } else if all(crate::engine::Exit::KeyMissing) {
            crate::engine::Exit::KeyMissing
        } else {
            crate::engine::Exit::Damaged
        };
        let what = match exit {
            crate::engine::Exit::KeyWrong => "could not be opened with the keys given",
            crate::engine::Exit::KeyMissing => "need a key that was not given",
            _ => "failed verification",
        };
        return Err(anyhow::Error::new(crate::engine::Ended {
            exit,
            message: format!("{failed} of {} backups {what}", reports.len()),
        }));
    }
    Ok(())
}

pub(super) async fn catalog(a: CatalogArgs) -> anyhow::Result<()> {
    match a.command {
        CatalogCommand::Resync(r) => {
            let settings = r.common.resolve()?;
            // The primary, or the copy that holds the backups when it cannot be read (said).
            let dest = settings.destination_for_reading("latest").await?;
            let catalog = crate::catalog::Catalog::connect(&settings.catalog_url).await?;
            let n = catalog.resync(dest.as_ref()).await?;
            println!("catalog rebuilt from {}: {n} complete backups", dest.url());
            Ok(())
        }
    }
}

/// `backup-server restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Shared options (restores into --events-db, or with --via-api through --event-store).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Backup id, a unique prefix of one (e.g. 20261206T16), or `latest`.
    pub id: String,
    /// Restore exactly the events with timestamps up to and including this time (RFC 3339,
    /// years 1 to 9999; anything else is a usage error, exit 2).
    #[arg(long, value_parser = crate::time::parse_time)]
    pub until: Option<prost_types::Timestamp>,
    /// Replace the events already in the store (in the same transaction through the events table).
    #[arg(long)]
    pub drop_existing: bool,
    /// Write through the EventStore's Store API. On a real Monoskope EventStore every event is
    /// then republished to the message bus; use only for a store without a bus.
    #[arg(long)]
    pub via_api: bool,
    /// Check everything a restore checks before writing (the backup's chain and keys, the
    /// store, its events) and print what it would do; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the store's events (--drop-existing) without asking. Without it the restore asks
    /// on a terminal, naming the store and what it holds, and refuses elsewhere (exit 2).
    #[arg(long)]
    pub yes: bool,
    /// Print the restore (with --dry-run: its plan) as JSON (docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

/// A backup record in the one JSON model (`monoskope_backup_client::json`).
fn backup_json(
    r: &crate::catalog::BackupRecord,
    destination: &str,
) -> monoskope_backup_client::json::Backup {
    (&crate::grpc::backup_pb(r, destination)).into()
}

/// Prints `v` as pretty JSON.
fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a restore on `engine` to its end (interruptible, with progress).
async fn restore_to_end(
    engine: &crate::engine::Engine,
    req: crate::engine::restore::RestoreRequest,
) -> anyhow::Result<crate::catalog::RestoreRecord> {
    let restore = async {
        let (rec, _) = engine.start_restore(req).await?;
        engine
            .wait_restore(&rec.id)
            .await
            .context("the restore task ended without a result")
    };
    super::interruptible(engine, super::with_progress(engine, restore)).await
}

pub(super) async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let (settings, engine) = start(&a.common, Op::Restore, Some(&a.id)).await?;
    let req = crate::engine::restore::RestoreRequest {
        backup_id: a.id,
        until: a.until,
        drop_existing: a.drop_existing,
        via_api: a.via_api,
        caller: super::cli_identity(),
    };
    if a.dry_run {
        let plan = engine.plan_restore(&req).await?;
        if a.json {
            return print_json(&monoskope_backup_client::json::RestorePlan::from(
                &crate::grpc::plan_pb(&plan, &req),
            ));
        }
        for line in plan.describe(&req) {
            println!("{line}");
        }
        println!("nothing was written (--dry-run)");
        return Ok(());
    }
    if req.drop_existing && !a.yes {
        // Every check a restore makes first (refusals need no answer), then the question.
        let plan = engine.plan_restore(&req).await?;
        let lines = plan.describe(&req);
        use std::io::IsTerminal;
        if plan.existing == 0 {
            // Nothing to replace: nothing to ask.
        } else if !std::io::stdin().is_terminal() {
            return Err(super::usage(format!(
                "--drop-existing replaces the events the store holds ({}): add --yes to confirm, or run it on a terminal to be asked",
                lines.join("; ")
            )));
        } else {
            for l in &lines {
                eprintln!("{l}");
            }
            let id = plan.target_id();
            eprint!(
                "This replaces the {} events of the store above. Type the backup id ({id}) to go on: ",
                plan.existing
            );
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if answer.trim() != id {
                bail!("not confirmed; nothing was written");
            }
        }
    }
    let mut done = restore_to_end(&engine, req.clone()).await?;
    // A backup damaged at the primary (nothing of it was written: a restore is all or nothing)
    // is restored from a copy that holds it whole, said in one line.
    if done.error.is_some()
        && engine.restore_failure(&done.id).await == Some(crate::engine::Failure::Corrupt)
    {
        for copy in settings.copies().await? {
            let from_copy = settings.engine_on(copy.clone()).await?;
            if from_copy.plan_restore(&req).await.is_err() {
                continue;
            }
            eprintln!(
                "backup {} is damaged at {} ({}): restoring it from the copy at {}",
                done.backup_id,
                crate::redact::url(&engine.config().destination.url()),
                done.error.as_deref().unwrap_or_default(),
                crate::redact::url(&copy.url())
            );
            done = restore_to_end(&from_copy, req.clone()).await?;
            break;
        }
    }
    if let Some(e) = &done.error {
        return Err(anyhow::Error::new(crate::engine::Ended {
            exit: engine
                .restore_failure(&done.id)
                .await
                .map_or(crate::engine::Exit::Failed, crate::engine::Failure::exit),
            message: format!("restore of backup {} failed: {e}", done.backup_id),
        }));
    }
    if a.json {
        return print_json(&monoskope_backup_client::json::Restore::from(
            &crate::grpc::restore_pb(&done),
        ));
    }
    println!(
        "restored backup {} into the {}: {} events",
        done.backup_id,
        monoskope_backup_client::sink_words(&done.sink),
        done.event_count
    );
    for step in crate::engine::restore::next_steps(&done.sink) {
        println!("next: {step}");
    }
    Ok(())
}
