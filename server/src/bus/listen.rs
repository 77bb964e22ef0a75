//! Hearing of new events on the bus: a server-named, exclusive queue bound to `<prefix>.#` on
//! `m8_events` (as Monoskope's own consumers bind theirs), consumed without acknowledgements.
//! Each message only marks "something was stored at this instant"; nothing in it is kept. The
//! queue disappears with the connection, so nothing piles up on the broker while the service is
//! away; after every (re)connect the listener reports a message as heard, because whatever was
//! published meanwhile was not.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::Notify;

use super::{BusConfig, EXCHANGE};

/// What the listener has heard since it was last asked.
#[derive(Debug, Default)]
pub struct Heard {
    oldest: Mutex<Option<Instant>>,
    notify: Notify,
}

impl Heard {
    fn mark(&self) {
        self.oldest
            .lock()
            .expect("heard")
            .get_or_insert_with(Instant::now);
        self.notify.notify_one();
    }

    /// When the oldest message not yet taken arrived (and forgets it).
    pub fn take(&self) -> Option<Instant> {
        self.oldest.lock().expect("heard").take()
    }

    /// Resolves when a message arrives (at once if one came since the last `take`).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// Listens on the bus of `cfg` until the runtime ends, reconnecting (1 s, doubling to 30 s)
/// whenever the connection fails; `on_connected` is told each time it starts or stops listening.
pub fn spawn(cfg: BusConfig, on_connected: impl Fn(bool) + Send + Sync + 'static) -> Arc<Heard> {
    let heard = Arc::new(Heard::default());
    let h = heard.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        on_connected(false);
        loop {
            let result = consume(&cfg, &h, &mut wait, &on_connected).await;
            on_connected(false);
            match result {
                Ok(()) => tracing::warn!("message bus: the connection closed; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = %humantime::format_duration(wait), "message bus: not listening; new events are found by polling until it is back")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
    heard
}

async fn consume(
    cfg: &BusConfig,
    heard: &Heard,
    wait: &mut Duration,
    on_connected: &(impl Fn(bool) + Send + Sync),
) -> anyhow::Result<()> {
    let conn = super::connect(cfg, "monoskope-backup continuous").await?;
    let channel = conn.create_channel().await?;
    super::declare_exchange(&channel).await?;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_string();
    channel
        .queue_bind(
            &name,
            EXCHANGE,
            &format!("{}.#", cfg.prefix),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            &name,
            "monoskope-backup",
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(exchange = EXCHANGE, binding = %format!("{}.#", cfg.prefix), "message bus: listening for stored events");
    on_connected(true);
    *wait = Duration::from_secs(1);
    // Whatever was published while not listening was not heard.
    heard.mark();
    while let Some(delivery) = consumer.next().await {
        delivery?;
        heard.mark();
    }
    Ok(())
}
