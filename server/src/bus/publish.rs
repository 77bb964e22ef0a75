//! Publishing stored events the way Monoskope's EventStore does (`docs/MONOSKOPE.md` §4): one
//! transient `application/json` message per event to `m8_events`, no publisher confirms, no
//! mandatory flag; a failed publish is retried with back-off for at most `retry_for` (a minute
//! in the real store), reconnecting as needed, then the call fails with the event stored.

use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use monoskope_backup_api::eventsourcing::Event;
use tokio::sync::Mutex;

use super::{BusConfig, BusMessage, EXCHANGE};

/// A publisher with one connection, opened on first use and again after it broke.
#[derive(Debug)]
pub struct Publisher {
    cfg: BusConfig,
    retry_for: Duration,
    open: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    /// A publisher to the bus of `cfg` that retries a failed publish for `retry_for`.
    pub fn new(cfg: BusConfig, retry_for: Duration) -> Self {
        Self {
            cfg,
            retry_for,
            open: Mutex::new(None),
        }
    }

    /// Publishes `event` (as received) on the bus.
    pub async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        let key = self.cfg.routing_key(&event.aggregate_type, &event.r#type);
        let body = BusMessage::of(event).to_json();
        let started = Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match self.try_publish(&key, &body).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() + wait > self.retry_for => {
                    return Err(e.context(format!(
                        "publishing to the message bus failed for {}",
                        humantime::format_duration(self.retry_for)
                    )))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publishing to the message bus failed; retrying");
                    *self.open.lock().await = None;
                    tokio::time::sleep(wait).await;
                    wait = wait.mul_f64(1.5);
                }
            }
        }
    }

    async fn try_publish(&self, key: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut open = self.open.lock().await;
        if open
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let conn = super::connect(&self.cfg, "eventstore (monoskope-backup devstore)").await?;
            let channel = conn.create_channel().await?;
            *open = Some((conn, channel));
        }
        let (_, channel) = open.as_ref().expect("opened above");
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1);
        // Without confirms, "published" means the frame was written, as in the real store.
        drop(
            channel
                .basic_publish(EXCHANGE, key, BasicPublishOptions::default(), body, props)
                .await?,
        );
        Ok(())
    }
}
