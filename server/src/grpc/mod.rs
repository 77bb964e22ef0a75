//! The BackupService over gRPC: request validation, engine calls, and the one table that maps
//! engine errors to gRPC status codes.

mod convert;
mod malformed;

pub use convert::{backup_pb, plan_pb, restore_pb};
use convert::{progress, ts};

use monoskope_backup_client::error_line;
use std::time::Duration;

use monoskope_backup_api::backup::v1 as pb;
use pb::backup_service_server::BackupService;
use tonic::{Request, Response, Status};

use crate::catalog::State;
use crate::engine::{Engine, EngineError, Failure};
use crate::identity::Identity;

/// The service.
#[derive(Debug, Clone)]
pub struct Service {
    engine: Engine,
}

impl Service {
    /// A service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

/// The one mapping of engine errors to gRPC statuses.
pub fn status_of(e: EngineError) -> Status {
    let failure = e.failure();
    let message = match e {
        EngineError::Internal(e) => error_line(e.as_ref()),
        other => other.to_string(),
    };
    status_for(failure, message)
}

/// The status of a failure of kind `f`, with `message` (passwords in URLs masked).
pub fn status_for(f: Failure, message: String) -> Status {
    let m = crate::redact::text(&message).into_owned();
    // The finer reasons of FAILED_PRECONDITION, for clients to tell apart (exit codes).
    let reason = |m: String, exit: monoskope_backup_client::exit::Exit| {
        let mut s = Status::failed_precondition(m);
        s.metadata_mut().insert(
            monoskope_backup_client::exit::REASON,
            tonic::metadata::MetadataValue::from_static(exit.name()),
        );
        s
    };
    use monoskope_backup_client::exit::Exit;
    match f {
        Failure::Refused => Status::failed_precondition(m),
        Failure::Busy => reason(m, Exit::Busy),
        Failure::KeyMissing => reason(m, Exit::KeyMissing),
        Failure::KeyWrong => reason(m, Exit::KeyWrong),
        Failure::Corrupt => Status::data_loss(m),
        Failure::NotFound => Status::not_found(m),
        Failure::Invalid => Status::invalid_argument(m),
        Failure::Unavailable | Failure::Interrupted => Status::unavailable(m),
        Failure::Internal => Status::internal(m),
    }
}

pub use crate::auth::Caller;

fn caller<T>(req: &Request<T>) -> Identity {
    if let Some(c) = req.extensions().get::<Caller>() {
        return c.0.clone();
    }
    Identity {
        id: match req.remote_addr() {
            Some(a) => format!("unauthenticated@{}", a.ip()),
            None => "unauthenticated".into(),
        },
        ..Default::default()
    }
}

#[tonic::async_trait]
impl BackupService for Service {
    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::CreateBackupResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let base = self.engine.config().destination.url();
        let (record, _) = self
            .engine
            .start_backup(&who, req.incremental)
            .await
            .map_err(status_of)?;
        let record = if req.wait {
            self.engine.wait_backup(&record.id).await.unwrap_or(record)
        } else {
            record
        };
        Ok(Response::new(pb::CreateBackupResponse {
            backup: Some(backup_pb(&record, &base)),
        }))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let req = request.into_inner();
        let size = match req.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        if let Some(t) = token {
            if !crate::destination::layout::valid_id(t) {
                return Err(Status::invalid_argument(
                    "page_token is not a token from a previous ListBackups",
                ));
            }
        }
        let base = self.engine.config().destination.url();
        let page = self
            .engine
            .config()
            .catalog
            .list_backups(size, token, req.include_incomplete)
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "catalog: {}",
                    self.engine.config().catalog.unreachable(&e).await
                )))
            }
        };
        let running = self.engine.running().await;
        let ids: Vec<String> = page.backups.iter().map(|r| r.id.clone()).collect();
        // The checks are an addition: a catalog that cannot read them leaves them out.
        let checks = self
            .engine
            .config()
            .catalog
            .last_checks(&ids)
            .await
            .unwrap_or_default();
        let check = |id: &str, kind: &str| {
            checks
                .iter()
                .find(|c| c.backup_id == id && c.kind == kind)
                .map(|c| pb::Check {
                    checked_at: ts(Some(&c.checked_at)),
                    ok: c.ok,
                    detail: c.detail.clone(),
                })
        };
        let backups = page
            .backups
            .iter()
            .map(|r| {
                let mut b = backup_pb(r, &base);
                if let Some(op) = running.as_ref().filter(|op| op.id == r.id) {
                    b.progress = Some(progress(op));
                }
                b.last_drill = check(&r.id, "drill");
                b.last_verify = check(&r.id, "verify");
                b
            })
            .collect();
        Ok(Response::new(pb::ListBackupsResponse {
            backups,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        if req.backup_id.is_empty() {
            return Err(Status::invalid_argument(
                "backup_id is required: a backup id or \"latest\"",
            ));
        }
        if let Some(u) = &req.until {
            crate::time::check_timestamp("until", u).map_err(Status::invalid_argument)?;
        }
        let request = crate::engine::restore::RestoreRequest {
            backup_id: req.backup_id,
            until: req.until,
            drop_existing: req.drop_existing,
            via_api: req.via_api,
            caller: who,
        };
        if req.dry_run {
            let plan = self
                .engine
                .plan_restore(&request)
                .await
                .map_err(status_of)?;
            return Ok(Response::new(pb::RestoreResponse {
                restore: None,
                plan: Some(plan_pb(&plan, &request)),
            }));
        }
        let (record, _) = self
            .engine
            .start_restore(request)
            .await
            .map_err(status_of)?;
        let record = if req.wait {
            self.engine.wait_restore(&record.id).await.unwrap_or(record)
        } else {
            record
        };
        // A restore waited for that failed answers with its failure's status (a damaged
        // backup: DATA_LOSS), its record's error and id in the message.
        if record.state == State::Failed {
            let failure = self.engine.restore_failure(&record.id).await;
            let m = format!(
                "restore {} of backup {} failed: {}",
                record.id,
                record.backup_id,
                record.error.as_deref().unwrap_or("unknown error")
            );
            return Err(status_for(failure.unwrap_or(Failure::Internal), m));
        }
        let mut r = restore_pb(&record);
        if record.state == State::Succeeded {
            r.next_steps = crate::engine::restore::next_steps(&record.sink);
        }
        Ok(Response::new(pb::RestoreResponse {
            restore: Some(r),
            plan: None,
        }))
    }

    async fn drill(
        &self,
        request: Request<pb::DrillRequest>,
    ) -> Result<Response<pb::DrillResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        if req.backup_id.is_empty() {
            return Err(Status::invalid_argument(
                "backup_id is required: a backup id or \"latest\"",
            ));
        }
        let r = self
            .engine
            .drill(&req.backup_id, &who)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DrillResponse {
            backup_id: r.backup_id,
            ok: r.ok,
            archive_events: r.archive_events,
            restored_events: r.restored_events,
            live_events: r.live_events,
            restored_matches_archive: r.restored_matches_archive,
            live_matches_archive: r.live_matches_archive,
            events_digest: r.events_digest,
            problems: r.problems,
            duration: prost_types::Duration::try_from(Duration::from_secs_f64(r.seconds)).ok(),
        }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let cfg = self.engine.config();
        let catalog = &cfg.catalog;
        // The running operation first: an operation writes its final record before it frees the
        // slot, so records read after this are never older than what `running` says.
        let running = self.engine.running().await;
        let base = cfg.destination.url();
        let records = async {
            let last_success = catalog.newest_in_state(State::Succeeded).await?;
            let oldest = if self.engine.continuous() {
                catalog.oldest_in_state(State::Succeeded).await?
            } else {
                None
            };
            let last_failure = catalog.newest_in_state(State::Failed).await?;
            let last_restore = catalog.last_restore().await?;
            let count = catalog.count_complete().await?;
            let mut running_backup = None;
            let mut running_restore = None;
            if let Some(op) = running.as_ref().filter(|op| op.kind == "restore") {
                if let Some(r) = catalog.last_restore().await?.filter(|r| r.id == op.id) {
                    let mut p = restore_pb(&r);
                    p.progress = Some(progress(op));
                    running_restore = Some(p);
                }
            }
            if let Some(op) = running.as_ref().filter(|op| op.kind == "backup") {
                if let Some(r) = catalog.get_backup(&op.id).await? {
                    let mut b = backup_pb(&r, &base);
                    b.progress = Some(progress(op));
                    running_backup = Some(b);
                }
            }
            if running.is_none() {
                // What another process sharing the catalog runs (a one-shot command): its record,
                // without progress, which only that process knows.
                if let Some(h) = catalog.live_lease().await? {
                    match h.kind.as_str() {
                        "backup" => {
                            running_backup = catalog
                                .get_backup(&h.operation_id)
                                .await?
                                .filter(|r| r.state == State::Running)
                                .map(|r| backup_pb(&r, &base));
                        }
                        "restore" => {
                            running_restore = last_restore
                                .as_ref()
                                .filter(|r| r.id == h.operation_id && r.state == State::Running)
                                .map(restore_pb);
                        }
                        _ => {}
                    }
                }
            }
            Ok::<_, crate::catalog::CatalogError>((
                (last_success, oldest),
                last_failure,
                last_restore,
                count,
                running_backup,
                running_restore,
            ))
        }
        .await;
        let (
            (last_success, oldest),
            last_failure,
            last_restore,
            count,
            running_backup,
            running_restore,
        ) = match records {
            Ok(r) => r,
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "catalog: {}",
                    catalog.unreachable(&e).await
                )))
            }
        };
        let es = cfg.event_store.clone();
        let dest = cfg.destination.clone();
        let (event_store, destination) = tokio::join!(
            probe(
                crate::redact::url(&es.addr),
                async move { es.probe().await }
            ),
            probe(crate::redact::url(&base), async move {
                dest.probe().await.map_err(anyhow::Error::new)
            })
        );
        let continuous = self.engine.continuous().then(|| {
            let (lag, segments) = crate::ops::metrics::get().continuous();
            let time = |t: Option<&String>| ts(t.map(String::as_str));
            pb::Continuous {
                lag_seconds: lag,
                segments,
                earliest: time(oldest.as_ref().and_then(|r| r.first_event_time.as_ref())),
                latest: time(
                    last_success
                        .as_ref()
                        .and_then(|r| r.last_event_time.as_ref()),
                ),
            }
        });
        let copies = crate::ops::metrics::get()
            .copies()
            .into_iter()
            .map(|(destination, c)| pb::CopyStatus {
                destination,
                lag_seconds: c.lag_seconds,
                error: c.error.unwrap_or_default(),
                checked_at: Some(prost_types::Timestamp {
                    seconds: c.checked_at.timestamp(),
                    nanos: c.checked_at.timestamp_subsec_nanos() as i32,
                }),
            })
            .collect();
        Ok(Response::new(pb::GetStatusResponse {
            continuous,
            copies,
            last_success: last_success.map(|r| backup_pb(&r, &base)),
            last_failure: last_failure.map(|r| backup_pb(&r, &base)),
            running_backup,
            running_restore,
            last_restore: last_restore.as_ref().map(restore_pb),
            event_store: Some(event_store),
            destination: Some(destination),
            catalog_backups: count,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

/// Serves the BackupService, gRPC health and server reflection on `listener` until `shutdown`.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    auth: crate::auth::AuthLayer,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    use pb::backup_service_server::BackupServiceServer;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<BackupServiceServer<Service>>().await;
    // From the stop signal on, health answers NOT_SERVING (the readiness probe takes the pod out
    // of its Service) while the interrupted operation ends and calls drain.
    let stopping = engine.clone();
    let draining = reporter.clone();
    tokio::spawn(async move {
        let why = stopping.stopping().await;
        tracing::info!(reason = %why, "health: NOT_SERVING while the service drains");
        draining
            .set_not_serving::<BackupServiceServer<Service>>()
            .await;
        draining
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    // Reflection lists exactly the services this server answers (our descriptor set also holds
    // the EventStore and gateway contracts, which are not served here), in both versions of the
    // protocol: v1, and v1alpha for grpcurl before 1.8.8 and other older tools (grpc-go servers,
    // Monoskope's own, register both).
    // Each version's service also describes the other's (grpcurl `describe` of either).
    let reflection = |other: &'static [u8]| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(other)
            .register_encoded_file_descriptor_set(monoskope_backup_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("monoskope.backup.v1.BackupService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1alpha =
        reflection(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET).build_v1alpha()?;
    let reflection = reflection(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET).build_v1()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
    }
    builder
        .layer(auth)
        .layer(malformed::MalformedLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            BackupServiceServer::new(Service::new(engine)).max_decoding_message_size(1 << 20),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

async fn probe<F: std::future::Future<Output = anyhow::Result<()>>>(
    address: String,
    f: F,
) -> pb::Reachability {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(Ok(())) => pb::Reachability {
            reachable: true,
            address,
            error: String::new(),
        },
        Ok(Err(e)) => pb::Reachability {
            reachable: false,
            address,
            error: error_line(e.as_ref()),
        },
        Err(_) => pb::Reachability {
            reachable: false,
            address,
            error: "no answer within 5 s".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// The status table of the API docs (README, "The API"), one row per kind of failure.
    #[test]
    fn engine_errors_map_to_the_documented_statuses() {
        let rows: Vec<(EngineError, Code, &str)> = vec![
            (
                EngineError::Busy {
                    kind: "backup",
                    id: "b1".into(),
                },
                Code::FailedPrecondition,
                "another operation is running: backup b1",
            ),
            (
                EngineError::BusyElsewhere {
                    kind: "restore".into(),
                    id: "r1".into(),
                    holder: "h:1:x".into(),
                    since: "2026-01-01T00:00:00Z".into(),
                },
                Code::FailedPrecondition,
                "another process runs an operation against this catalog: restore r1",
            ),
            (
                EngineError::Refused("not empty".into()),
                Code::FailedPrecondition,
                "not empty",
            ),
            (
                EngineError::Corrupt("damaged".into()),
                Code::DataLoss,
                "damaged",
            ),
            (EngineError::NotFound("gone".into()), Code::NotFound, "gone"),
            (
                EngineError::Invalid("until: bad".into()),
                Code::InvalidArgument,
                "until: bad",
            ),
            (
                EngineError::Unavailable("postgres://u:pw@h/db refused".into()),
                Code::Unavailable,
                "postgres://u:***@h/db refused",
            ),
            (
                EngineError::Internal(anyhow::anyhow!("inner").context("outer")),
                Code::Internal,
                "outer: inner",
            ),
        ];
        for (e, code, message) in rows {
            let failure = e.failure();
            let s = status_of(e);
            assert_eq!(s.code(), code, "{message}");
            assert!(
                s.message().starts_with(message),
                "{} vs {message}",
                s.message()
            );
            assert_eq!(status_for(failure, message.into()).code(), code);
        }
    }
}
