//! `backup-server demo`: the embedded default, end to end, on one machine with no outside
//! service: an embedded EventStore with Monoskope-like events, the BackupService (SQLite catalog,
//! directory destination, generated key, loopback-only without authentication), a backup taken
//! through the API, listed and verified.

use std::path::PathBuf;

use anyhow::Context;
use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_client::{BackupClient, ClientOptions};

use crate::archive::{MasterKey, Protection};
use crate::destination::S3Options;
use crate::engine::{verify, Engine, EngineConfig};
use crate::source::EventStoreAddr;

/// `backup-server demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for this run's files (a new subdirectory per run).
    #[arg(long, default_value = "monoskope-backup-demo")]
    pub dir: PathBuf,
    /// Sample events to store first.
    #[arg(long, default_value_t = 5000)]
    pub events: u64,
    /// Keep the EventStore and the service running after the demo (until Ctrl-C).
    #[arg(long)]
    pub keep_running: bool,
}

pub(super) async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let run_dir = a
        .dir
        .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let run_dir = std::fs::canonicalize(&run_dir)?;
    println!("monoskope-backup demo in {}", run_dir.display());

    // 1. The embedded EventStore, with sample events stored through its Store API.
    let es_listener = crate::devstore::bind("127.0.0.1:0".parse()?).await?;
    let es_addr = es_listener.local_addr()?;
    let db = run_dir.join("eventstore.db");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let es_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let es_task = tokio::spawn({
        let db = db.clone();
        async move { crate::devstore::serve(&db, es_listener, Default::default(), es_stop).await }
    });
    let mut es = EventStoreClient::connect(format!("http://{es_addr}")).await?;
    let start = chrono::Utc::now().timestamp() - 86_400;
    es.store(tokio_stream::iter(
        crate::devstore::sample::events(a.events, (a.events / 20).max(1), start, 42)
            .collect::<Vec<_>>(),
    ))
    .await
    .context("storing sample events")?;
    println!(
        "1. embedded EventStore on {es_addr} (database {}) holds {} Monoskope-like events",
        db.display(),
        a.events
    );

    // 2. A generated key, the service with a SQLite catalog and a directory destination.
    let key = MasterKey::generate();
    let key_file = run_dir.join("backup.key");
    crate::ops::secrets::write_key_file(&key_file, &key)?;
    let backups = run_dir.join("destination");
    let destination = crate::destination::open(
        &format!("file://{}", backups.display()),
        &S3Options::default(),
    )
    .await?;
    let catalog = crate::catalog::Catalog::connect(&format!(
        "sqlite://{}",
        run_dir.join("catalog.db").display()
    ))
    .await?;
    let engine = Engine::new(EngineConfig {
        event_store: EventStoreAddr {
            addr: es_addr.to_string(),
            ca_file: None,
        },
        destination: destination.clone(),
        catalog,
        keys: crate::archive::Keys::keyring(crate::archive::Keyring::new(vec![key.clone()])?),
        protection: Some(Protection::Key(key.clone())),
        events_db: None,
        retention: crate::engine::retention::Policy::last(7),
        backup_timeout: std::time::Duration::from_secs(3600),
        compression_level: crate::archive::DEFAULT_COMPRESSION_LEVEL,
        restore_timeout: std::time::Duration::from_secs(3600),
        lock_wait_timeout: crate::sink::table::DEFAULT_LOCK_WAIT,
        emit_events: true,
        pushgateway: None,
        full_every: 23,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let svc_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let svc_task = tokio::spawn(crate::grpc::serve(
        engine.clone(),
        listener,
        None,
        crate::auth::AuthLayer::new(crate::auth::Authenticator {
            mode: crate::auth::Mode::None,
            policy: crate::auth::Policy::default(),
        }),
        svc_stop,
    ));
    println!(
        "2. BackupService on {addr} (no authentication: loopback only), key {} in {} (0600)",
        key.id(),
        key_file.display()
    );

    // 3. A backup through the API, as backupctl or a CronJob does.
    let mut client = BackupClient::connect(&ClientOptions::new(format!("http://{addr}"))).await?;
    let b = client.create_backup(true, false).await?;
    anyhow::ensure!(b.error.is_empty(), "backup failed: {}", b.error);
    println!(
        "3. CreateBackup{{wait: true}} -> backup {}: {} events, {} bytes, at {}",
        b.id, b.event_count, b.bytes, b.location
    );

    // 4. List and verify.
    let listed = client.list_all(false).await?;
    println!(
        "4. ListBackups -> {} backup(s): {}",
        listed.len(),
        listed
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let m = verify::resolve(destination.as_ref(), &b.id).await?;
    let report = verify::verify(destination.as_ref(), Some(&engine.config().keys), &m).await?;
    anyhow::ensure!(
        report.ok,
        "verification failed: {}",
        report.problems.join("; ")
    );
    println!(
        "5. verify {} -> ok: every chunk authenticated, {} events, footer and manifest agree",
        report.id, report.events
    );

    // 6. A restore into a second, empty embedded store, and a check that every event came back.
    let es2_listener = crate::devstore::bind("127.0.0.1:0".parse()?).await?;
    let es2_addr = es2_listener.local_addr()?;
    let db2 = run_dir.join("restored.db");
    let es2_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let es2_task = tokio::spawn({
        let db2 = db2.clone();
        async move { crate::devstore::serve(&db2, es2_listener, Default::default(), es2_stop).await }
    });
    let mut cfg2 = engine.config().clone();
    cfg2.event_store = EventStoreAddr {
        addr: es2_addr.to_string(),
        ca_file: None,
    };
    cfg2.catalog = crate::catalog::Catalog::connect(crate::catalog::MEMORY).await?;
    cfg2.emit_events = false;
    let restorer = Engine::new(cfg2);
    let (rec, _) = restorer
        .start_restore(crate::engine::restore::RestoreRequest {
            backup_id: b.id.clone(),
            until: None,
            drop_existing: false,
            via_api: true,
            caller: super::cli_identity(),
        })
        .await?;
    let done = restorer
        .wait_restore(&rec.id)
        .await
        .context("the restore ended without a result")?;
    if let Some(e) = &done.error {
        anyhow::bail!("restore failed: {e}");
    }
    // The store also holds the BackupCompleted event the service stored after the backup.
    let digest = |addr: std::net::SocketAddr| async move {
        let store = EventStoreAddr {
            addr: addr.to_string(),
            ca_file: None,
        };
        let mut d = crate::engine::drill::SetDigest::default();
        let mut events = std::pin::pin!(store.retrieve_all().await?);
        while let Some(r) = futures::StreamExt::next(&mut events).await {
            let e = crate::source::event_from_record(r?);
            if e.aggregate_type != crate::ops::events::BACKUP_AGGREGATE {
                d.add(&e);
            }
        }
        anyhow::Ok(d)
    };
    let (original, restored) = (digest(es_addr).await?, digest(es2_addr).await?);
    anyhow::ensure!(
        original.count == restored.count && original.hex() == restored.hex(),
        "the restored store differs: {} events (digest {}) restored, {} (digest {}) in the original",
        restored.count,
        restored.hex(),
        original.count,
        original.hex()
    );
    println!(
        "6. Restore into a second embedded EventStore on {es2_addr} ({}) -> {} events, every one back (digest {})",
        db2.display(),
        restored.count,
        &restored.hex()[..16]
    );

    println!();
    println!("Try it yourself:");
    println!(
        "  backup-server inspect --summary --key-file {} {}",
        key_file.display(),
        backups
            .join(crate::destination::layout::archive_key(&b.id))
            .display()
    );
    println!(
        "  backup-server list --destination file://{}",
        backups.display()
    );
    println!(
        "  backup-server verify --all --destination file://{} --key-file {}",
        backups.display(),
        key_file.display()
    );
    if a.keep_running {
        println!("  backupctl --server http://{addr} status");
        println!("  backupctl --server http://{addr} create --wait");
        println!("Running until Ctrl-C.");
        super::shutdown_signal().await;
    }
    let _ = stop_tx.send(true);
    svc_task.await??;
    es_task.await??;
    es2_task.await??;
    Ok(())
}
