//! Connection pools for the catalog and the events database, with the reason when a database
//! cannot be reached.

use monoskope_backup_client::error_line;
use std::time::Duration;

use sqlx::pool::{Pool, PoolOptions};
use sqlx::{ConnectOptions, Connection, Database};

/// How long one direct connection may take when a pool could not open one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a pool on `connect`. The pool retries a database that refuses or does not answer until
/// its acquire timeout, then says only "pool timed out while waiting for an open connection"
/// (sqlx's issues #744, #3808); one direct connection then finds out why ("Connection refused",
/// "password authentication failed", a name that does not resolve) for the message.
pub async fn open<DB: Database>(
    options: PoolOptions<DB>,
    connect: <DB::Connection as Connection>::Options,
) -> Result<Pool<DB>, String> {
    match options.connect_with(connect.clone()).await {
        Ok(pool) => Ok(pool),
        Err(sqlx::Error::PoolTimedOut) => Err(why_not(&connect).await),
        Err(e) => Err(error_line(&e)),
    }
}

/// `e`, from a query on `pool`, in one line; when it is the pool's timeout (`timed_out`), why no connection
/// could be opened (as [`open`] says it).
pub async fn explain<DB: Database>(
    pool: &Pool<DB>,
    e: &(dyn std::error::Error + Send + Sync + 'static),
    timed_out: bool,
) -> String {
    if timed_out {
        why_not(&*pool.connect_options()).await
    } else {
        error_line(e)
    }
}

/// Why a connection to `connect` cannot be opened, found with one direct connection.
async fn why_not<O: ConnectOptions>(connect: &O) -> String
where
    O::Connection: Sized,
{
    match tokio::time::timeout(PROBE_TIMEOUT, connect.connect()).await {
        Ok(Err(e)) => error_line(&e),
        Ok(Ok(c)) => {
            let _ = c.close().await;
            "no connection within the pool's timeout (a direct connection succeeded just after: \
             the database may have been starting)"
                .to_string()
        }
        Err(_) => format!(
            "no answer: the pool's connections timed out, and a direct connection got no answer \
             within {} s",
            PROBE_TIMEOUT.as_secs()
        ),
    }
}

/// Refuses a PostgreSQL URL whose client key (`sslkey=FILE`) others may read, by libpq's rule
/// ([`key_mode_problem`]): a client certificate's key is a password, and a pod's mounted secret with the
/// wrong `defaultMode` would otherwise go unnoticed. `what` names the database in the message.
pub fn check_client_key(url: &str, what: &str) -> Result<(), String> {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else {
        return Ok(());
    };
    for pair in query.split('&') {
        if let Some(path) = pair.strip_prefix("sslkey=") {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(path)
                    .map_err(|e| format!("{what}: client key {path}: {e}"))?;
                // This process's user: the owner of its own /proc entry.
                let me = std::fs::metadata("/proc/self").map_or(meta.uid(), |m| m.uid());
                if let Some(why) = key_mode_problem(meta.mode() & 0o777, meta.uid(), me) {
                    return Err(format!("{what}: client key {path} {why}"));
                }
            }
        }
    }
    Ok(())
}

/// libpq's rule for a client key (`mode`, owned by `uid`; this process runs as `me`): owned by this user, no access by
/// group or others (0600 or less); owned by root — a Kubernetes secret mounted with an
/// `fsGroup` — group read at most (0640 or less); owned by anyone else, nothing for others.
#[cfg(unix)]
fn key_mode_problem(mode: u32, uid: u32, me: u32) -> Option<String> {
    let bad = if uid == me {
        mode & 0o077
    } else if uid == 0 {
        mode & 0o037
    } else {
        mode & 0o007
    };
    (bad != 0).then(|| {
        format!(
            "is readable or writable by others than its owner (mode {mode:04o}); chmod 600 it (a Kubernetes secret: defaultMode 0400, or 0440 with an fsGroup)"
        )
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::key_mode_problem;

    #[test]
    fn client_keys_follow_libpqs_rule() {
        // Owned by this user: 0600 or less.
        assert!(key_mode_problem(0o600, 1000, 1000).is_none());
        assert!(key_mode_problem(0o400, 1000, 1000).is_none());
        assert!(key_mode_problem(0o640, 1000, 1000).is_some());
        assert!(key_mode_problem(0o604, 1000, 1000).is_some());
        // Owned by root (a secret volume with an fsGroup): group read at most.
        assert!(key_mode_problem(0o440, 0, 65532).is_none());
        assert!(key_mode_problem(0o640, 0, 65532).is_none());
        assert!(key_mode_problem(0o660, 0, 65532).is_some());
        assert!(key_mode_problem(0o644, 0, 65532).is_some());
        // Owned by someone else: nothing for others.
        assert!(key_mode_problem(0o640, 7, 1000).is_none());
        assert!(key_mode_problem(0o644, 7, 1000).is_some());
    }
}
