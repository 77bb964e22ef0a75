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

/// Refuses a PostgreSQL URL whose client key (`sslkey=FILE`) is readable by group or others, as
/// libpq does: a client certificate's key is a password, and a pod's mounted secret with the
/// wrong `defaultMode` would otherwise go unnoticed. `what` names the database in the message.
pub fn check_client_key(url: &str, what: &str) -> Result<(), String> {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else {
        return Ok(());
    };
    for pair in query.split('&') {
        if let Some(path) = pair.strip_prefix("sslkey=") {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(path)
                    .map_err(|e| format!("{what}: client key {path}: {e}"))?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{what}: client key {path} is readable by group or others (mode {mode:04o}); chmod 600 it (a Kubernetes secret: defaultMode 0600)"
                    ));
                }
            }
        }
    }
    Ok(())
}
