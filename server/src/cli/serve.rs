//! `backup-server serve`: the BackupService with its authentication, schedules, metrics
//! endpoint and the way it stops (NOT_SERVING, the interrupted operation, the drain).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::settings::CommonArgs;

/// `backup-server serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// gRPC address to listen on.
    #[arg(long, env = "BACKUP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS (with --tls-key); plaintext without.
    #[arg(long, env = "BACKUP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "BACKUP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Authentication of callers: `gateway` (the gateway's GatewayAuth.Check decides), `jwt`
    /// (the gateway's tokens verified here), or `none` (only allowed on loopback addresses).
    #[arg(long, env = "BACKUP_AUTH", value_parser = ["gateway", "jwt", "none"])]
    pub auth: Option<String>,
    /// The gateway's gRPC address (HOST:PORT, or an https:// URL) for `--auth gateway`.
    #[arg(long, env = "BACKUP_GATEWAY")]
    pub gateway: Option<String>,
    /// The gateway's public key for `--auth jwt`: its PEM certificate (tls.crt), a PEM public
    /// key or a JWK. Re-read when the file changes.
    #[arg(long, env = "BACKUP_JWT_PUBLIC_KEY", conflicts_with = "jwks_url")]
    pub jwt_public_key: Option<PathBuf>,
    /// The gateway's JWKS URL (https://GATEWAY/keys) for `--auth jwt`, fetched every
    /// --jwks-refresh and when a token names an unknown key.
    #[arg(long, env = "BACKUP_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[arg(long, env = "BACKUP_JWKS_REFRESH", default_value = "5m")]
    pub jwks_refresh: String,
    /// The issuer (`iss`) of the gateway's tokens: the gateway's --gateway-url, verbatim.
    #[arg(long, env = "BACKUP_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// An admin (may restore, and everything else): a token subject (user UUID) or e-mail.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(long = "admin", env = "BACKUP_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,
    /// A machine identity that may create backups (and read): an API token's subject, e.g. the
    /// user name of the CronJob's token. Repeatable; comma-separated in the environment.
    #[arg(
        long = "machine-identity",
        env = "BACKUP_MACHINE_IDENTITIES",
        value_delimiter = ','
    )]
    pub machine_identities: Vec<String>,
    /// When given, only these subjects or e-mails (and admins and machine identities) may list
    /// backups and read the status. Repeatable; comma-separated in the environment.
    #[arg(long = "reader", env = "BACKUP_READERS", value_delimiter = ',')]
    pub readers: Vec<String>,
    /// Serve Prometheus metrics (/metrics) and a liveness check (/healthz) on HOST:PORT.
    #[arg(long, env = "BACKUP_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,
    /// Run backups in-process on this cron schedule (UTC; five fields, or six with seconds);
    /// config `backup.schedule`.
    #[arg(long, env = "BACKUP_SCHEDULE")]
    pub schedule: Option<String>,
    /// Run restore drills of the latest backup in-process on this cron schedule (UTC); config
    /// `backup.drill.schedule`.
    #[arg(long, env = "BACKUP_DRILL_SCHEDULE")]
    pub drill_schedule: Option<String>,
    /// Scheduled backups are incremental (config `backup.incremental.enabled`); every
    /// --full-every-th is full.
    #[arg(long, env = "BACKUP_INCREMENTAL")]
    pub incremental: bool,
    /// Continuous backup: follow the events table (--events-db) and write every new event to the
    /// destination within seconds, as small incremental segments of the newest chain (config
    /// `backup.continuous.enabled`).
    #[arg(long, env = "BACKUP_CONTINUOUS")]
    pub continuous: bool,
    /// How often continuous backup looks for new events (config `backup.continuous.interval`).
    #[arg(long, env = "BACKUP_CONTINUOUS_INTERVAL")]
    pub continuous_interval: Option<String>,
    /// The time between two reconciling segments, which find any event the bus and the table's
    /// statistics did not show; while the statistics stand still and each reconciliation finds
    /// nothing it doubles, up to 16 times (config `backup.continuous.reconcile`; default 60s).
    #[arg(long, env = "BACKUP_CONTINUOUS_RECONCILE")]
    pub continuous_reconcile: Option<String>,
    /// Compact a chain's continuous segments into one incremental once its oldest segment is
    /// this old, so a day is 24 archives, not thousands; 0 never compacts (config
    /// `backup.continuous.compact`; default 1h).
    #[arg(long, env = "BACKUP_CONTINUOUS_COMPACT")]
    pub continuous_compact: Option<String>,
    /// Continuous backup hears of new events on Monoskope's message bus (RabbitMQ) the moment
    /// they are stored: amqp://… or amqps://…?auth_mechanism=external. The same variable as
    /// Monoskope's EventStore (its `m8-messagebus-client-config` secret); prefer it to the flag
    /// when the URL holds a password (config `backup.continuous.bus.url`).
    #[arg(long, env = "BUS_URL")]
    pub bus_url: Option<String>,
    /// Routing key prefix of the bus (config `backup.continuous.bus.routingKeyPrefix`).
    #[arg(long, env = "ROUTING_KEY_PREFIX")]
    pub bus_routing_key_prefix: Option<String>,
    /// PEM CA certificate to trust for amqps:// (config `backup.continuous.bus.caFile`).
    #[arg(long, env = "BUS_CA_FILE")]
    pub bus_ca_file: Option<PathBuf>,
    /// PEM client certificate for amqps:// (config `backup.continuous.bus.certFile`).
    #[arg(long, env = "BUS_CERT_FILE")]
    pub bus_cert_file: Option<PathBuf>,
    /// Its PEM key (config `backup.continuous.bus.keyFile`).
    #[arg(long, env = "BUS_KEY_FILE")]
    pub bus_key_file: Option<PathBuf>,
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn pick<T>(flag: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag
    }
}

/// Builds the authentication layer's state from flags and the `auth:` section.
async fn authenticator(
    a: &ServeArgs,
    file: Option<crate::ops::config::AuthConfig>,
    listen: &SocketAddr,
) -> anyhow::Result<crate::auth::Authenticator> {
    use crate::auth::{gateway::Gateway, jwt, Authenticator, Mode, Policy};
    let f = file.unwrap_or_default();
    let policy = Policy {
        admins: pick(a.admins.clone(), f.admins.clone()),
        machines: pick(a.machine_identities.clone(), f.machine_identities.clone()),
        readers: pick(a.readers.clone(), f.readers.clone()),
    };
    let mode = a
        .auth
        .clone()
        .or(f.mode.clone())
        .unwrap_or_else(|| "none".into());
    let mode = match mode.as_str() {
        "none" => {
            if !is_loopback(listen) {
                bail!("refusing to serve without authentication on {listen}: --auth none is only allowed on loopback addresses; use --auth gateway or --auth jwt");
            }
            Mode::None
        }
        "gateway" => {
            let g =
                a.gateway.clone().or(f.gateway.clone()).context(
                    "--auth gateway needs --gateway HOST:PORT (the gateway's gRPC address)",
                )?;
            Mode::Gateway(Gateway::new(&g)?)
        }
        "jwt" => {
            let issuer = a.jwt_issuer.clone().or(f.jwt_issuer.clone()).context(
                "--auth jwt needs --jwt-issuer (the gateway's URL, as in its tokens' iss)",
            )?;
            let source = match (
                a.jwt_public_key.clone().or(f.jwt_public_key.clone()),
                a.jwks_url.clone().or(f.jwks_url.clone()),
            ) {
                (Some(p), None) => jwt::KeySource::File(p),
                (None, Some(u)) => jwt::KeySource::Jwks(u),
                (Some(_), Some(_)) => bail!("give either --jwt-public-key or --jwks-url, not both"),
                (None, None) => bail!("--auth jwt needs --jwt-public-key PATH or --jwks-url URL"),
            };
            if policy.admins.is_empty() {
                bail!("--auth jwt needs at least one --admin (a subject or e-mail): nobody could restore");
            }
            let refresh = crate::ops::config::parse_duration(&a.jwks_refresh)
                .map_err(|e| super::usage(format!("--jwks-refresh: {e}")))?;
            let v = std::sync::Arc::new(jwt::JwtVerifier::new(source, issuer).await?);
            v.spawn_refresh(refresh);
            Mode::Jwt(v)
        }
        m => bail!("auth: unknown mode {m:?} (gateway, jwt or none)"),
    };
    Ok(Authenticator { mode, policy })
}

pub(super) async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let listen = match (a.listen, settings.file.listen.as_deref()) {
        (Some(l), _) => l,
        (None, Some(l)) => l
            .parse()
            .with_context(|| format!("listen: {l:?} is not HOST:PORT"))?,
        (None, None) => "127.0.0.1:50051".parse()?,
    };
    let auth = authenticator(&a, settings.file.auth.clone(), &listen).await?;
    // Fail at start, not at the first backup (whose caller cannot fix the service's keys).
    if settings.protection.is_none() {
        anyhow::bail!(
            "no encryption key: give --key-file, BACKUP_ENCRYPTION_KEY, BACKUP_PASSPHRASE or --recipient-file (or --no-encryption to write unencrypted archives); the service did not start"
        );
    }
    let metrics_address = match (
        a.metrics_address,
        settings
            .file
            .metrics
            .as_ref()
            .and_then(|m| m.address.as_deref()),
    ) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(
            m.parse()
                .with_context(|| format!("metrics.address: {m:?} is not HOST:PORT"))?,
        ),
        (None, None) => None,
    };
    let schedule = a
        .schedule
        .clone()
        .or(settings
            .file
            .backup
            .as_ref()
            .and_then(|b| b.schedule.clone()))
        .filter(|s| !s.trim().is_empty())
        .map(|s| crate::ops::schedule::parse(&s).context("--schedule"))
        .transpose()?;
    let cont = settings
        .file
        .backup
        .as_ref()
        .and_then(|b| b.continuous.clone())
        .unwrap_or_default();
    let continuous = if a.continuous || cont.enabled.unwrap_or(false) {
        let interval = match a.continuous_interval.clone().or(cont.interval) {
            Some(t) => crate::time::parse_duration(&t)
                .map_err(|e| super::usage(format!("--continuous-interval: {e}")))?,
            None => std::time::Duration::from_secs(5),
        };
        if interval < std::time::Duration::from_millis(200) {
            return Err(super::usage(
                "--continuous-interval: at least 200ms (the destination gets a request per segment)",
            ));
        }
        let Some(db) = settings.events_db.clone() else {
            return Err(super::usage(
                "--continuous follows the events table: give --events-db (the EventStore API offers no way to see new events without reading the whole store)",
            ));
        };
        let reconcile = match a.continuous_reconcile.clone().or(cont.reconcile) {
            Some(t) => crate::time::parse_duration(&t)
                .map_err(|e| super::usage(format!("--continuous-reconcile: {e}")))?,
            None => super::follow::RECONCILE_EVERY,
        };
        let compact = match a.continuous_compact.clone().or(cont.compact) {
            Some(t) if t.trim() == "0" => None,
            Some(t) => Some(
                crate::time::parse_duration(&t)
                    .map_err(|e| super::usage(format!("--continuous-compact: {e}")))?,
            ),
            None => Some(super::follow::COMPACT_AFTER),
        };
        let bus_file = cont.bus.unwrap_or_default();
        let bus = a
            .bus_url
            .clone()
            .or(bus_file.url)
            .filter(|u| !u.trim().is_empty())
            .map(|url| crate::bus::BusConfig {
                url,
                prefix: a
                    .bus_routing_key_prefix
                    .clone()
                    .or(bus_file.routing_key_prefix)
                    .unwrap_or_else(|| crate::bus::DEFAULT_PREFIX.into()),
                ca_file: a.bus_ca_file.clone().or(bus_file.ca_file),
                cert_file: a.bus_cert_file.clone().or(bus_file.cert_file),
                key_file: a.bus_key_file.clone().or(bus_file.key_file),
            });
        if let Some(b) = &bus {
            if !(b.url.starts_with("amqp://") || b.url.starts_with("amqps://")) {
                return Err(super::usage(
                    "--bus-url: an amqp:// or amqps:// URL (Monoskope's BUS_URL)",
                ));
            }
            if b.cert_file.is_some() != b.key_file.is_some() {
                return Err(super::usage(
                    "--bus-cert-file and --bus-key-file go together",
                ));
            }
        }
        Some(super::follow::Follow {
            events_db: db,
            interval,
            reconcile,
            compact,
            bus,
        })
    } else {
        None
    };
    let drill_schedule = a
        .drill_schedule
        .clone()
        .or(settings
            .file
            .backup
            .as_ref()
            .and_then(|b| b.drill.as_ref())
            .and_then(|d| d.schedule.clone()))
        .filter(|s| !s.trim().is_empty())
        .map(|s| crate::ops::schedule::parse(&s).context("--drill-schedule"))
        .transpose()?;
    let tls_files = settings.file.tls.clone().unwrap_or_default();
    let tls = match (
        a.tls_cert.or(tls_files.cert_file),
        a.tls_key.or(tls_files.key_file),
    ) {
        (Some(c), Some(k)) => Some((
            std::fs::read(&c).with_context(|| format!("cannot read {}", c.display()))?,
            std::fs::read(&k).with_context(|| format!("cannot read {}", k.display()))?,
        )),
        (None, None) => None,
        _ => bail!("TLS needs both --tls-cert and --tls-key"),
    };
    preflight(&settings).await?;
    let engine = settings.engine().await?;
    seed_metrics(&engine).await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(m) = metrics_address {
        let ml = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("cannot listen on {m} for metrics"))?;
        let maddr = ml.local_addr()?;
        println!("metrics on http://{maddr}/metrics");
        tracing::info!(addr = %maddr, "metrics endpoint listening (/metrics, /healthz)");
        tokio::spawn(crate::ops::metrics::serve(ml, stopped()));
    }
    match &auth.mode {
        crate::auth::Mode::None => {
            tracing::warn!(%addr, "AUTHENTICATION IS OFF (--auth none): every caller on this machine may create and restore backups; allowed on loopback only");
        }
        m => {
            tracing::info!(
                mode = m.name(),
                admins = auth.policy.admins.len(),
                machine_identities = auth.policy.machines.len(),
                readers = auth.policy.readers.len(),
                "authentication on"
            );
        }
    }
    let mut scheduled = Vec::new();
    if let Some(s) = schedule {
        let inc = settings
            .file
            .backup
            .as_ref()
            .and_then(|b| b.incremental.clone())
            .unwrap_or_default();
        scheduled.push(tokio::spawn(super::schedule::run(
            engine.clone(),
            s,
            a.incremental || inc.enabled.unwrap_or(false),
        )));
    }
    if let Some(s) = drill_schedule {
        scheduled.push(tokio::spawn(super::schedule::run_drills(engine.clone(), s)));
    }
    if !settings.copy_urls.is_empty() {
        let copies = settings.copies().await?;
        scheduled.push(tokio::spawn(super::copier::run(
            engine.config().destination.clone(),
            copies,
        )));
    }
    if let Some(follow) = continuous {
        scheduled.push(tokio::spawn(super::follow::run(engine.clone(), follow)));
    }
    tracing::info!(%addr, destination = %engine.config().destination.url(), event_store = %crate::redact::url(&engine.config().event_store.addr), catalog = engine.config().catalog.kind(), tls = tls.is_some(), auth = auth.mode.name(), "BackupService listening");
    println!("backup-server listening on {addr}");
    // On SIGTERM the running operation is interrupted first, so calls waiting for it return
    // and the server drains.
    let stopping = engine.clone();
    let res = crate::grpc::serve(
        engine,
        listener,
        tls,
        crate::auth::AuthLayer::new(auth),
        async move {
            super::stop_on_signal(&stopping).await;
            // Health has said NOT_SERVING since the signal: a moment more for the readiness
            // probe and the Service's endpoints to notice before the listener closes.
            tokio::time::sleep(NOT_SERVING_BEFORE_CLOSE).await;
            // The operation has ended; calls and connections get a moment to drain, then the
            // process goes (a client that keeps a stream open must not hold the stop).
            tokio::spawn(async {
                tokio::time::sleep(DRAIN_WITHIN).await;
                tracing::warn!(drain = %humantime::format_duration(DRAIN_WITHIN), "calls did not drain in time; exiting");
                std::process::exit(0);
            });
        },
    )
    .await;
    let _ = stop_tx.send(true);
    for s in scheduled {
        s.abort();
    }
    res
}

/// How long `serve` keeps answering (health: NOT_SERVING) after its operation ended on a stop
/// signal, before it closes its listener.
const NOT_SERVING_BEFORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long `serve` lets calls drain after its operation ended on a stop signal.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Seeds the last-run gauges from the catalog, so a restarted service does not report "never".
async fn seed_metrics(engine: &crate::engine::Engine) {
    use crate::catalog::State;
    use crate::ops::metrics::{get, Op};
    let c = &engine.config().catalog;
    let t = |s: Option<&str>| {
        s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp_millis() as f64 / 1000.0)
    };
    let ok = c.newest_in_state(State::Succeeded).await.ok().flatten();
    let bad = c.newest_in_state(State::Failed).await.ok().flatten();
    get().seed(
        Op::Backup,
        ok.as_ref().and_then(|r| t(r.completed_at.as_deref())),
        bad.as_ref().and_then(|r| t(r.completed_at.as_deref())),
    );
}

/// Everything `serve` needs, checked before it accepts work: the destination reachable and
/// writable (and locking, when asked), the catalog reachable and migrated. Each problem is one
/// line; with any, the service does not start (exit 3 when all are peers that did not answer).
/// The EventStore (or the events database) not answering yet is a warning: it may start later.
async fn preflight(settings: &super::settings::Settings) -> anyhow::Result<()> {
    use crate::engine::Exit;
    let line = |e: &anyhow::Error| {
        crate::redact::text(&monoskope_backup_client::error_line(e.as_ref())).into_owned()
    };
    let mut problems: Vec<(Exit, String)> = Vec::new();
    match settings.destination().await {
        Ok(d) => {
            if let Err(e) = d.probe().await {
                let e = anyhow::Error::new(e);
                problems.push((
                    crate::engine::exit_of(&e),
                    format!("destination {}: {}", crate::redact::url(&d.url()), line(&e)),
                ));
            }
        }
        Err(e) => problems.push((super::exit_of(&e), format!("destination: {}", line(&e)))),
    }
    if let Err(e) = crate::catalog::Catalog::connect(&settings.catalog_url).await {
        let e = anyhow::Error::new(e);
        problems.push((crate::engine::exit_of(&e), format!("catalog: {}", line(&e))));
    }
    // In the background: a store that is down must not hold up the start (its pool retries).
    let es = settings.event_store.clone();
    let events_db = settings.events_db.clone();
    tokio::spawn(async move {
        match events_db {
            Some(url) => {
                if let Err(e) = crate::events_table::connect(&url).await {
                    tracing::warn!(error = %e, "the events database does not answer yet; backups will fail until it does");
                }
            }
            None => {
                if let Err(e) = es.probe().await {
                    tracing::warn!(event_store = %crate::redact::url(&es.addr), error = %monoskope_backup_client::error_line(e.as_ref()), "the EventStore does not answer yet; backups will fail until it does");
                }
            }
        }
    });
    if problems.is_empty() {
        return Ok(());
    }
    for (_, p) in &problems {
        eprintln!("backup-server: error: {p}");
    }
    let exit = if problems.iter().all(|(e, _)| *e == Exit::Unreachable) {
        Exit::Unreachable
    } else {
        Exit::Failed
    };
    Err(anyhow::Error::new(crate::engine::Ended {
        exit,
        message: format!(
            "{} problem(s) above; the service did not start",
            problems.len()
        ),
    }))
}
