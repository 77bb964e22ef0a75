//! Client of monoskope-backup's BackupService (`monoskope.backup.v1.BackupService`).
//!
//! A small typed wrapper over the generated client: connect (optionally with TLS), attach a
//! bearer token, map gRPC statuses to [`ClientError`], and retry the calls that are safe to
//! retry (`ListBackups`, `GetStatus`) when the server is briefly unavailable.
//!
//! ```no_run
//! # async fn demo() -> Result<(), monoskope_backup_client::ClientError> {
//! use monoskope_backup_client::{BackupClient, ClientOptions};
//! let opts = ClientOptions::new("http://127.0.0.1:50051").with_token_from_env_or_file(None)?;
//! let mut client = BackupClient::connect(&opts).await?;
//! let backup = client.create_backup(true, false).await?;
//! println!("{} has {} events", backup.id, backup.event_count);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

mod error;
pub mod exit;
pub mod json;
pub mod term;

pub use error::{error_line, status_line, ClientError};
pub use monoskope_backup_api::backup::v1 as pb;
use pb::backup_service_client::BackupServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// Environment variable holding a bearer token (as monoctl users have it).
pub const ENV_TOKEN: &str = "MONOSKOPE_TOKEN";

/// A size in bytes for people: `512 B`, `29.8 KiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A restore's sink (`Restore.sink`: `events-table` or `eventstore-api`) in words, for a
/// sentence such as "restored backup … into the events table".
pub fn sink_words(sink: &str) -> &str {
    match sink {
        "events-table" => "events table",
        "eventstore-api" => "EventStore through its API",
        other => other,
    }
}

/// How to reach the service.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub server: String,
    /// PEM CA certificate for `https://` (system roots otherwise).
    pub ca_file: Option<PathBuf>,
    /// Bearer token; never printed.
    token: Option<String>,
    /// Longest a call that does not wait for an operation may take (and connecting); `None`:
    /// [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// How long a call that does not wait for an operation may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientOptions {
    /// Options for `server` (a bare `HOST:PORT` means `http://HOST:PORT`).
    pub fn new(server: impl Into<String>) -> Self {
        let server = server.into();
        let server = if server.contains("://") {
            server
        } else {
            format!("http://{server}")
        };
        Self {
            server,
            ..Default::default()
        }
    }

    /// Reads the token from `file` if given, else from `MONOSKOPE_TOKEN`; none is fine.
    pub fn with_token_from_env_or_file(mut self, file: Option<&Path>) -> Result<Self, ClientError> {
        self.token = match file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        ClientError::Local(format!("cannot read token file {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var(ENV_TOKEN)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        Ok(self)
    }

    /// Uses this token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this CA for `https://`.
    pub fn with_ca_file(mut self, ca: Option<PathBuf>) -> Self {
        self.ca_file = ca;
        self
    }
}

/// Adds `authorization: bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Inner = BackupServiceClient<InterceptedService<Channel, BearerToken>>;

/// A connected client.
#[derive(Clone)]
pub struct BackupClient {
    inner: Inner,
    server: String,
    timeout: Duration,
}

impl std::fmt::Debug for BackupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupClient")
    }
}

const RETRIES: u32 = 3;

impl BackupClient {
    /// Connects to the service.
    pub async fn connect(opts: &ClientOptions) -> Result<Self, ClientError> {
        let conn_err = |m: String| ClientError::Connect {
            server: opts.server.clone(),
            message: m,
        };
        let mut ep = Endpoint::from_shared(opts.server.clone())
            .map_err(|e| conn_err(e.to_string()))?
            .connect_timeout(Duration::from_secs(10));
        if opts.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &opts.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| conn_err(format!("cannot read {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls).map_err(|e| conn_err(e.to_string()))?;
        }
        let timeout = opts.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let channel = match tokio::time::timeout(timeout, ep.connect()).await {
            Ok(c) => c.map_err(|e| conn_err(error_line(&e)))?,
            Err(_) => return Err(no_answer(&opts.server, timeout)),
        };
        let token = match &opts.token {
            Some(t) => Some(format!("bearer {t}").parse().map_err(|_| {
                ClientError::Local("the token contains characters not allowed in a header".into())
            })?),
            None => None,
        };
        Ok(Self {
            inner: BackupServiceClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(16 << 20),
            server: opts.server.clone(),
            timeout,
        })
    }

    /// The timeout of calls that do not wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `fut` within the call timeout, or the error that says nothing answered.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(no_answer(&self.server, self.timeout)),
        }
    }

    /// Starts a backup; with `wait`, returns when it has ended (its state tells the outcome).
    pub async fn create_backup(
        &mut self,
        wait: bool,
        incremental: bool,
    ) -> Result<pb::Backup, ClientError> {
        let mut inner = self.inner.clone();
        let call = async move {
            Ok(inner
                .create_backup(pb::CreateBackupRequest { wait, incremental })
                .await?)
        };
        // A call that waits for the backup is bounded by the backup's own timeout, at the
        // service; one that does not, by ours.
        let resp = if wait {
            call.await?
        } else {
            self.bounded(call).await?
        };
        resp.into_inner()
            .backup
            .ok_or_else(|| ClientError::Local("the server returned no backup".into()))
    }

    /// One page of backups, newest first.
    pub async fn list_backups(
        &mut self,
        page_size: u32,
        page_token: &str,
        include_incomplete: bool,
    ) -> Result<pb::ListBackupsResponse, ClientError> {
        let req = pb::ListBackupsRequest {
            page_size,
            page_token: page_token.to_string(),
            include_incomplete,
        };
        self.bounded(retry(|| {
            let mut c = self.inner.clone();
            let req = req.clone();
            async move { c.list_backups(req).await }
        }))
        .await
    }

    /// Every backup, following pages.
    pub async fn list_all(
        &mut self,
        include_incomplete: bool,
    ) -> Result<Vec<pb::Backup>, ClientError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_backups(1000, &token, include_incomplete).await?;
            out.extend(page.backups);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// The service's status.
    pub async fn get_status(&mut self) -> Result<pb::GetStatusResponse, ClientError> {
        self.bounded(retry(|| {
            let mut c = self.inner.clone();
            async move { c.get_status(pb::GetStatusRequest {}).await }
        }))
        .await
    }

    /// Runs a restore drill of `backup_id` (an id or `latest`) into a scratch store and returns
    /// its report. Safe to retry: a drill never writes to the live store.
    pub async fn drill(&mut self, backup_id: &str) -> Result<pb::DrillResponse, ClientError> {
        retry(|| {
            let mut c = self.inner.clone();
            let id = backup_id.to_string();
            async move { c.drill(pb::DrillRequest { backup_id: id }).await }
        })
        .await
    }

    /// Starts (or, with `wait`, runs) a restore.
    /// Every check a restore makes before writing, and its plan; writes nothing. Refusals (a
    /// store that is not empty, a wrong key, a damaged chain) are errors.
    pub async fn plan_restore(
        &mut self,
        mut req: pb::RestoreRequest,
    ) -> Result<pb::RestorePlan, ClientError> {
        req.dry_run = true;
        req.wait = false;
        let mut inner = self.inner.clone();
        let resp = self
            .bounded(async move { Ok(inner.restore(req).await?) })
            .await?;
        resp.into_inner().plan.ok_or_else(|| {
            ClientError::Local(
                "the server returned no restore plan (a service older than dry_run)".into(),
            )
        })
    }

    /// Starts a restore (or, with `wait`, runs it to its end).
    pub async fn restore(&mut self, req: pb::RestoreRequest) -> Result<pb::Restore, ClientError> {
        let wait = req.wait;
        let mut inner = self.inner.clone();
        let call = async move { Ok(inner.restore(req).await?) };
        let resp = if wait {
            call.await?
        } else {
            self.bounded(call).await?
        };
        resp.into_inner()
            .restore
            .ok_or_else(|| ClientError::Local("the server returned no restore".into()))
    }
}

async fn retry<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == Code::Unavailable && attempt + 1 < RETRIES => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// Nothing answered `server` within `t`.
fn no_answer(server: &str, t: Duration) -> ClientError {
    ClientError::DeadlineExceeded(format!(
        "no answer from {server} within {}: is `backup-server serve` running there (set BACKUP_SERVER or --server), and is it a BackupService? (--timeout sets how long to wait)",
        humantime::format_duration(t)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error of one text whose cause is the next.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        let mut e: Option<Box<Layer>> = None;
        for t in texts.iter().rev() {
            e = Some(Box::new(Layer(t, e)));
        }
        *e.expect("one text at least")
    }

    #[test]
    fn error_line_names_each_cause_once_in_order() {
        let e = chain(&[
            "transport error",
            "tcp connect error",
            "tcp connect error",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            error_line(&e),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        // sqlx's database errors repeat the server's message as their cause.
        let e = chain(&[
            "error returned from database: database \"x\" does not exist",
            "database \"x\" does not exist",
        ]);
        assert_eq!(
            error_line(&e),
            "error returned from database: database \"x\" does not exist"
        );
        assert_eq!(error_line(&chain(&["alone"])), "alone");
    }

    #[tokio::test]
    async fn a_status_from_a_server_that_is_not_there_says_why_in_one_line() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("url")
            .connect_lazy();
        let s = BackupServiceClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
            .expect_err("nothing listens there");
        let line = status_line(&s);
        assert!(line.starts_with("Unavailable: "), "{line}");
        assert!(line.contains("Connection refused"), "{line}");
        assert_eq!(line.matches("tcp connect error").count(), 1, "{line}");
        // tonic's own Display of this status prints debug structures.
        assert!(
            !line.contains("ConnectError(") && !line.contains('\n'),
            "{line}"
        );
        let e = ClientError::from(s);
        assert!(matches!(e, ClientError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("Connection refused"), "{e}");
    }
}
