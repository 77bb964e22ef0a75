//! Monoskope's message bus, on a real RabbitMQ: the embedded EventStore publishes every stored
//! event as the real one does (exchange, routing key, properties, body), and continuous backup
//! hears of new events on the bus the moment they are stored — and still backs up everything,
//! by polling, when the bus is down or a message was never published.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use monoskope_backup::bus::{BusConfig, BusMessage};
use monoskope_backup_tests::fixture::{fresh_events_db, table_events, Fixture};
use monoskope_backup_tests::proxy::{Fault, FaultProxy};
use monoskope_backup_tests::{http_get, metric_value, run, service_env, Devstore, Server};

use crate::continuous::{
    empty_events_table, events_at_destination, restore_holds_the_whole_table, store_and_publish,
    store_rows, wait_until,
};

fn bus(url: &str) -> BusConfig {
    BusConfig {
        url: url.into(),
        prefix: "m8".into(),
        ..Default::default()
    }
}

/// A queue of the test's own bound to `binding` on `m8_events`, and its consumer.
async fn listen(url: &str, binding: &str) -> (lapin::Connection, lapin::Consumer) {
    let conn = monoskope_backup::bus::connect(&bus(url), "test")
        .await
        .expect("connect to RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    monoskope_backup::bus::declare_exchange(&ch)
        .await
        .expect("exchange");
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    let name = q.name().as_str().to_string();
    ch.queue_bind(
        &name,
        "m8_events",
        binding,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let consumer = ch
        .basic_consume(
            &name,
            "test",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (conn, consumer)
}

/// The messages that arrive within `quiet` of each other.
async fn drain(consumer: &mut lapin::Consumer, quiet: Duration) -> Vec<lapin::message::Delivery> {
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, consumer.next()).await {
        got.push(d.expect("delivery"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devstore_publishes_every_stored_event_as_the_eventstore_does() {
    let Some(amqp) = service_env("TEST_AMQP_URL") else {
        return;
    };
    // The key is bound before anything is stored (the EventStore never declares a queue); a
    // prefix of the test's own keeps other tests' messages out.
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let (_conn, mut consumer) = listen(&amqp, &format!("{prefix}.#")).await;
    let store = Devstore::start(&["--bus-url", &amqp, "--bus-routing-key-prefix", &prefix]);
    let events: Vec<_> = (1..=3)
        .map(|v| monoskope_backup_api::eventsourcing::Event {
            r#type: if v == 1 { "UserCreated" } else { "UserUpdated" }.into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + v as i64,
                nanos: 123_456_789,
            }),
            aggregate_id: "7C1D7A1E-9A8B-4B5C-8D3E-2F1A0B9C8D7E".into(),
            aggregate_type: "User".into(),
            aggregate_version: Some(v),
            data: format!(r#"{{"v": {v}}}"#).into_bytes(),
            metadata: [("x-auth-id".to_string(), "someone".to_string())].into(),
        })
        .collect();
    let mut client =
        monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient::connect(
            store.url(),
        )
        .await
        .expect("devstore");
    client
        .store(tokio_stream::iter(events.clone()))
        .await
        .expect("store");
    let got = drain(&mut consumer, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 3, "one message per stored event");
    for (d, e) in got.iter().zip(&events) {
        assert_eq!(d.exchange.as_str(), "m8_events");
        assert_eq!(
            d.routing_key.as_str(),
            format!("{prefix}.User.{}", e.r#type),
            "routing key <prefix>.<AggregateType>.<EventType>"
        );
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(*d.properties.delivery_mode(), Some(1), "transient");
        let body: BusMessage = serde_json::from_slice(&d.data).expect("JSON body");
        assert_eq!(body, BusMessage::of(e));
        assert_eq!(
            body.timestamp,
            format!(
                "2023-11-14T22:13:2{}.123456789Z",
                e.aggregate_version.unwrap_or(0)
            )
        );
    }
}

/// The interval is a minute, so only the bus can bring new events to the destination within
/// seconds; with the bus cut, new events — even ones never published — still arrive by polling,
/// and when the bus is back the service listens again. Then a restore holds the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_backup_hears_new_events_on_the_bus_and_polls_when_it_is_down() {
    let (Some(pg), Some(amqp)) = (service_env("TEST_PG_URL"), service_env("TEST_AMQP_URL")) else {
        return;
    };
    let rabbit = amqp
        .trim_start_matches("amqp://guest:guest@")
        .split('/')
        .next()
        .expect("host:port")
        .to_string();
    let proxy = FaultProxy::start(&rabbit);
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let publisher =
        monoskope_backup::bus::publish::Publisher::new(bus(&amqp), Duration::from_secs(5));
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let serve = |interval: &str, metrics: &str| {
        Server::start(
            &[
                "--events-db",
                &db,
                "--destination",
                &f.dest,
                "--key-file",
                &f.key,
                "--catalog",
                &f.catalog(),
                "--continuous",
                "--continuous-interval",
                interval,
                "--continuous-reconcile",
                "10m",
                "--metrics-address",
                metrics,
            ],
            &[("BUS_URL", &via_proxy)],
        )
    };
    let bus_connected = |metrics: &str| {
        http_get(&format!("http://{metrics}/metrics"))
            .ok()
            .and_then(|(_, text)| {
                metric_value(&text, "monoskope_backup_continuous_bus_connected", &[])
            })
    };

    // The bus up: a minute between polls, yet the events arrive within seconds.
    let metrics = format!("127.0.0.1:{}", monoskope_backup_tests::free_port());
    let s = serve("60s", &metrics);
    assert!(
        wait_until(Duration::from_secs(15), || bus_connected(&metrics)
            == Some(1.0)),
        "the service listens on the bus"
    );
    store_and_publish(&pool, 0, 6, &aggregates, Some(&publisher)).await;
    assert!(
        wait_until(Duration::from_secs(20), || events_at_destination(&f).0 == 6),
        "events heard on the bus reach the destination before the next poll: {:?}",
        events_at_destination(&f)
    );
    // The bus goes away: the service notices.
    proxy.set(Fault::Refuse);
    proxy.cut_all();
    assert!(
        wait_until(Duration::from_secs(15), || bus_connected(&metrics)
            == Some(0.0)),
        "the service notices the bus is gone"
    );
    drop(s);

    // Started with the bus down: it starts, and polling brings every event — also events the
    // store never published (it crashed between the insert and the publish).
    let metrics = format!("127.0.0.1:{}", monoskope_backup_tests::free_port());
    let _s = serve("1s", &metrics);
    store_rows(&pool, 6, 6, &aggregates).await;
    assert!(
        wait_until(Duration::from_secs(20), || events_at_destination(&f).0
            == 12),
        "polling brings the events while the bus is down: {:?}",
        events_at_destination(&f)
    );
    assert_eq!(bus_connected(&metrics), Some(0.0));
    // The bus back: it listens again.
    proxy.set(Fault::None);
    assert!(
        wait_until(Duration::from_secs(45), || bus_connected(&metrics)
            == Some(1.0)),
        "the service listens again once the bus is back"
    );
    store_and_publish(&pool, 12, 6, &aggregates, Some(&publisher)).await;
    assert!(
        wait_until(Duration::from_secs(20), || events_at_destination(&f).0
            == 18),
        "{:?}",
        events_at_destination(&f)
    );

    // Every stored event, exactly once.
    restore_holds_the_whole_table(&f, &pg, &db).await;
}

/// A restore into the events table replays nothing onto the bus: the running services are not
/// told history happened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_restore_publishes_nothing_on_the_bus() {
    let (Some(pg), Some(amqp)) = (service_env("TEST_PG_URL"), service_env("TEST_AMQP_URL")) else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    store_rows(&pool, 0, 30, &aggregates).await;
    let f = Fixture::new();
    let out = run(
        "backup-server",
        &[
            "backup",
            "--events-db",
            &db,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let (_conn, mut consumer) = listen(&amqp, "#").await;
    let restored = fresh_events_db(&pg).await;
    let out = run(
        "backup-server",
        &[
            "restore",
            "latest",
            "--events-db",
            &restored,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
        ],
        &[("BUS_URL", &amqp)],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(table_events(&restored).await.len(), 30);
    // Other tests publish on the same broker: only this store's aggregates count.
    let ours: Vec<String> = aggregates.iter().map(|a| a.to_string()).collect();
    let published = drain(&mut consumer, Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|d| {
            serde_json::from_slice::<BusMessage>(&d.data)
                .is_ok_and(|m| ours.contains(&m.aggregate_id))
        })
        .count();
    assert_eq!(published, 0, "messages of the restored events on the bus");
}

/// A restore through the EventStore's `Store` (`--via-api`) republishes every event, as the real
/// EventStore does — why it is never the default, and why the docs say to restart the
/// projections' services after a table restore instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_restore_republishes_every_event_on_the_bus() {
    let Some(amqp) = service_env("TEST_AMQP_URL") else {
        return;
    };
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let (_conn, mut consumer) = listen(&amqp, &format!("{prefix}.#")).await;
    let src = Devstore::start(&["--seed-sample", "40"]);
    let f = Fixture::new();
    let id = f.backup(&src);
    let dst = Devstore::start(&["--bus-url", &amqp, "--bus-routing-key-prefix", &prefix]);
    let out = f.restore(&[&id, "--event-store", &dst.addr, "--via-api"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let published = drain(&mut consumer, Duration::from_secs(3)).await;
    assert_eq!(published.len(), 40, "every restored event published again");
}
