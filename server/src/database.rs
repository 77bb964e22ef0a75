//! Connection pools for the catalog and the events database, with the reason when a database
//! cannot be reached.

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
        Err(sqlx::Error::PoolTimedOut) => Err(
            match tokio::time::timeout(PROBE_TIMEOUT, connect.connect()).await {
                Ok(Err(e)) => monoskope_backup_client::error_line(&e),
                Ok(Ok(c)) => {
                    let _ = c.close().await;
                    "no connection within the pool's timeout (a direct connection succeeded \
                     just after: the database may have been starting)"
                        .to_string()
                }
                Err(_) => format!(
                    "no answer: the pool's connections timed out, and a direct connection got \
                     no answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                ),
            },
        ),
        Err(e) => Err(monoskope_backup_client::error_line(&e)),
    }
}
