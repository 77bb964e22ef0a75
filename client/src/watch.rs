//! Waiting for an operation with progress on stderr (a spinner on a terminal, a line every
//! `BACKUP_PROGRESS_EVERY` otherwise); Ctrl-C stops only the waiting.

use monoskope_backup_client::{human_bytes, pb, term, BackupClient, ClientError};

/// Runs CreateBackup{wait} while showing its progress.
pub(crate) async fn create_and_watch(
    client: &mut BackupClient,
    incremental: bool,
) -> Result<pb::Backup, ClientError> {
    let mut creator = client.clone();
    let call = tokio::spawn(async move { creator.create_backup(true, incremental).await });
    watch(client, call, "backup", |s| {
        s.running_backup.as_ref().map(|b| {
            let p = b.progress.unwrap_or_default();
            format!(
                "backup {}: {} events, {} written",
                b.id,
                p.events,
                human_bytes(p.bytes)
            )
        })
    })
    .await
}

/// Runs Restore{wait} while showing its progress.
pub(crate) async fn restore_and_watch(
    client: &mut BackupClient,
    req: pb::RestoreRequest,
) -> Result<pb::Restore, ClientError> {
    let mut restorer = client.clone();
    let call = tokio::spawn(async move { restorer.restore(req).await });
    watch(client, call, "restore", |s| {
        s.running_restore.as_ref().map(|r| {
            let p = r.progress.unwrap_or_default();
            let elapsed = p
                .elapsed
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .unwrap_or_default();
            format!(
                "restore of backup {}: {}, {} of archive read",
                r.backup_id,
                monoskope_backup_client::term::events_progress(p.events, p.total_events, elapsed),
                human_bytes(p.bytes)
            )
        })
    })
    .await
}

/// Waits for `call` while showing what `progress` makes of GetStatus: a spinner on a terminal, a
/// line every 10 s otherwise. Ctrl-C (or SIGTERM) stops waiting, not the operation: the service
/// runs it on, and the error line says so.
pub(crate) async fn watch<T: Send + 'static>(
    client: &mut BackupClient,
    call: tokio::task::JoinHandle<Result<T, ClientError>>,
    what: &str,
    progress: impl Fn(&pb::GetStatusResponse) -> Option<String>,
) -> Result<T, ClientError> {
    let mut shown = term::Progress::new();
    let stop = term::stop_signal();
    tokio::pin!(stop);
    while !call.is_finished() {
        tokio::select! {
            () = tokio::time::sleep(term::TICK) => {}
            sig = &mut stop => {
                shown.finish();
                return Err(ClientError::Local(format!(
                    "{sig}: stopped waiting; the {what} goes on in the service (`backupctl status` follows it)"
                )));
            }
        }
        match client.get_status().await {
            Ok(s) => shown.tick(progress(&s)),
            // The service stopped answering while we wait: say so rather than wait forever.
            Err(ClientError::DeadlineExceeded(m)) => {
                shown.finish();
                return Err(ClientError::DeadlineExceeded(format!(
                    "{m}; stopped waiting for the {what}, which may still run in the service (`backupctl status` follows it)"
                )));
            }
            Err(_) => shown.tick(None),
        }
    }
    shown.finish();
    call.await
        .map_err(|e| ClientError::Local(format!("{what} call failed: {e}")))?
}
