//! The embedded EventStore against Monoskope's documented EventStore contract, over real gRPC
//! on loopback, through a client generated from `api/`.

use std::collections::BTreeMap;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter, EventFilters};
use monoskope_backup_tests::Devstore;
use prost_types::Timestamp;
use tonic::transport::Channel;
use tonic::Code;

async fn client(ds: &Devstore) -> EventStoreClient<Channel> {
    EventStoreClient::connect(ds.url())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn agg(n: u32) -> String {
    format!("6f9619ff-8b86-4011-b42d-{n:012x}")
}

fn ev(agg_type: &str, id: &str, version: u64, secs: i64, nanos: i32) -> Event {
    Event {
        r#type: format!("{agg_type}Updated"),
        timestamp: Some(Timestamp {
            seconds: secs,
            nanos,
        }),
        aggregate_id: id.to_string(),
        aggregate_type: agg_type.to_string(),
        aggregate_version: Some(version),
        data: format!("{{\"v\":{version}}}").into_bytes(),
        metadata: BTreeMap::from([("x-auth-id".to_string(), agg(999))]),
    }
}

async fn store(c: &mut EventStoreClient<Channel>, events: Vec<Event>) -> Result<(), tonic::Status> {
    c.store(tokio_stream::iter(events)).await.map(|_| ())
}

async fn retrieve(c: &mut EventStoreClient<Channel>, f: EventFilter) -> Vec<Event> {
    let mut s = c.retrieve(f).await.expect("retrieve").into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        out.push(e);
    }
    out
}

async fn retrieve_or(c: &mut EventStoreClient<Channel>, fs: Vec<EventFilter>) -> Vec<Event> {
    let mut s = c
        .retrieve_or(EventFilters { filters: fs })
        .await
        .expect("retrieve_or")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        out.push(e);
    }
    out
}

fn versions(events: &[Event]) -> Vec<(String, u64)> {
    events
        .iter()
        .map(|e| (e.aggregate_type.clone(), e.aggregate_version.unwrap_or(0)))
        .collect()
}

#[tokio::test]
async fn empty_store_and_empty_stream() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    assert!(retrieve(&mut c, EventFilter::default()).await.is_empty());
    store(&mut c, vec![])
        .await
        .expect("an empty Store stream succeeds");
    assert!(retrieve_or(&mut c, vec![]).await.is_empty());
}

#[tokio::test]
async fn results_are_ordered_by_timestamp_only() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    // Versions in stream order, timestamps interleaved across aggregates and out of order.
    store(
        &mut c,
        vec![
            ev("User", &agg(1), 1, 300, 0),
            ev("User", &agg(1), 2, 100, 0),
            ev("Tenant", &agg(2), 1, 200, 0),
        ],
    )
    .await
    .expect("store");
    let all = retrieve(&mut c, EventFilter::default()).await;
    let ts: Vec<i64> = all
        .iter()
        .map(|e| e.timestamp.as_ref().expect("ts").seconds)
        .collect();
    assert_eq!(
        ts,
        vec![100, 200, 300],
        "Retrieve orders by timestamp, not by version or insertion"
    );
    assert_eq!(all[0].aggregate_version, Some(2));
}

#[tokio::test]
async fn every_filter_field() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    let mut events = Vec::new();
    for v in 1..=5 {
        events.push(ev("User", &agg(1), v, 1000 + v as i64, 0));
        events.push(ev("Tenant", &agg(2), v, 2000 + v as i64, 0));
    }
    store(&mut c, events).await.expect("store");
    let by_id = retrieve(
        &mut c,
        EventFilter {
            aggregate_id: Some(agg(1).to_uppercase()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_id.len(),
        5,
        "aggregate_id matches case-insensitively as a UUID"
    );
    assert!(
        by_id.iter().all(|e| e.aggregate_id == agg(1)),
        "ids come back canonical lowercase"
    );
    let by_type = retrieve(
        &mut c,
        EventFilter {
            aggregate_type: Some("Tenant".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_type.len(), 5);
    assert!(
        retrieve(
            &mut c,
            EventFilter {
                aggregate_type: Some("tenant".into()),
                ..Default::default()
            }
        )
        .await
        .is_empty(),
        "type match is case-sensitive"
    );
    let range = retrieve(
        &mut c,
        EventFilter {
            aggregate_type: Some("User".into()),
            min_version: Some(2),
            max_version: Some(4),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        versions(&range),
        vec![("User".into(), 2), ("User".into(), 3), ("User".into(), 4)]
    );
    let t = |s| {
        Some(Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    let times = retrieve(
        &mut c,
        EventFilter {
            min_timestamp: t(1003),
            max_timestamp: t(2001),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        times.len(),
        4,
        "timestamp bounds are inclusive: 1003, 1004, 1005, 2001"
    );
    // A bound of T + 1 ns behaves like T (rounded to microseconds).
    let ns = retrieve(
        &mut c,
        EventFilter {
            max_timestamp: Some(Timestamp {
                seconds: 1001,
                nanos: 1,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ns.len(), 1);
    // RetrieveOr: [A, {}] drops the empty filter; [] and [{}, {}] return everything; overlaps once.
    let a = EventFilter {
        aggregate_type: Some("User".into()),
        max_version: Some(1),
        ..Default::default()
    };
    assert_eq!(
        retrieve_or(&mut c, vec![a.clone(), EventFilter::default()])
            .await
            .len(),
        1
    );
    assert_eq!(retrieve_or(&mut c, vec![]).await.len(), 10);
    assert_eq!(
        retrieve_or(&mut c, vec![EventFilter::default(), EventFilter::default()])
            .await
            .len(),
        10
    );
    assert_eq!(
        retrieve_or(&mut c, vec![EventFilter::default()])
            .await
            .len(),
        10
    );
    let b = EventFilter {
        aggregate_id: Some(agg(1)),
        ..Default::default()
    };
    assert_eq!(
        retrieve_or(&mut c, vec![a, b]).await.len(),
        5,
        "an event matching two filters is returned once"
    );
}

#[tokio::test]
async fn conflict_is_internal_with_the_documented_text_and_keeps_the_prefix() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    store(&mut c, vec![ev("User", &agg(1), 1, 1, 0)])
        .await
        .expect("store");
    let err = store(
        &mut c,
        vec![
            ev("User", &agg(1), 2, 2, 0),
            ev("User", &agg(1), 1, 3, 0),
            ev("User", &agg(1), 3, 4, 0),
        ],
    )
    .await
    .expect_err("duplicate version");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        err.message(),
        "event aggregate version already exists in store"
    );
    let all = retrieve(&mut c, EventFilter::default()).await;
    assert_eq!(
        versions(&all),
        vec![("User".into(), 1), ("User".into(), 2)],
        "events before the conflict stay, after it are never read"
    );
    // Same id under another type is a separate stream; gaps and version 0 (NULL) are accepted.
    store(
        &mut c,
        vec![
            ev("Tenant", &agg(1), 1, 5, 0),
            ev("Tenant", &agg(1), 7, 6, 0),
            ev("Tenant", &agg(1), 0, 7, 0),
            ev("Tenant", &agg(1), 0, 8, 0),
        ],
    )
    .await
    .expect("no optimistic concurrency beyond UNIQUE");
    let dup = store(&mut c, vec![ev("Tenant", &agg(1), 7, 9, 0)])
        .await
        .expect_err("resend");
    assert_eq!(
        dup.message(),
        "event aggregate version already exists in store"
    );
}

#[tokio::test]
async fn validation_failures_store_internal_double_wrapped_retrieve_invalid_argument() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    let mut bad_id = ev("User", "not-a-uuid", 1, 1, 0);
    bad_id.aggregate_id = "{6f9619ff-8b86-4011-b42d-000000000001}".into();
    let e = store(&mut c, vec![ev("User", &agg(1), 1, 1, 0), bad_id])
        .await
        .expect_err("bad uuid");
    assert_eq!(e.code(), Code::Internal);
    assert_eq!(
        e.message(),
        "rpc error: code = Internal desc = rpc error: code = InvalidArgument desc = invalid Event.AggregateId: value must be a valid UUID | caused by: invalid uuid format"
    );
    assert_eq!(
        retrieve(&mut c, EventFilter::default()).await.len(),
        1,
        "the event before the invalid one is stored"
    );
    let mut bad_type = ev("User", &agg(2), 1, 1, 0);
    bad_type.r#type = "TestEvent:Created".into();
    let e = store(&mut c, vec![bad_type]).await.expect_err("bad type");
    assert_eq!(
        e.message(),
        "rpc error: code = Internal desc = rpc error: code = InvalidArgument desc = invalid Event.Type: value does not match regex pattern \"^[a-zA-Z][A-Za-z0-9_-]+$\""
    );
    let mut long = ev("User", &agg(2), 1, 1, 0);
    long.aggregate_type = format!("A{}", "b".repeat(60));
    let e = store(&mut c, vec![long]).await.expect_err("too long");
    assert!(
        e.message()
            .ends_with("invalid Event.AggregateType: value length must be at most 60 bytes"),
        "{}",
        e.message()
    );
    let e = c
        .retrieve(EventFilter {
            aggregate_id: Some("x".into()),
            ..Default::default()
        })
        .await
        .expect_err("bad filter");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "invalid EventFilter.AggregateId: value must be a valid UUID | caused by: invalid uuid format");
    let e = c
        .retrieve(EventFilter {
            aggregate_type: Some(String::new()),
            ..Default::default()
        })
        .await
        .expect_err("empty wrapper");
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "a present but empty wrapper is not 'no filter'"
    );
    let e = c
        .retrieve_or(EventFilters {
            filters: vec![
                EventFilter::default(),
                EventFilter {
                    aggregate_id: Some("x".into()),
                    ..Default::default()
                },
            ],
        })
        .await
        .expect_err("bad filters");
    assert!(e.message().starts_with("invalid EventFilters.Filters[1]: embedded message failed validation | caused by: invalid EventFilter.AggregateId"), "{}", e.message());
}

#[tokio::test]
async fn data_metadata_and_timestamps_as_the_database_returns_them() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    let mut a = ev("User", &agg(1), 1, 10, 345_678_901);
    a.data = br#"{"name":"caf\u00e9","id":1,"id":2,"a":[1,2.50,1e2]}"#.to_vec();
    let mut b = ev("User", &agg(1), 2, 0, 0);
    b.timestamp = None;
    b.data = Vec::new();
    b.metadata = BTreeMap::new();
    store(&mut c, vec![a, b]).await.expect("store");
    let all = retrieve(&mut c, EventFilter::default()).await;
    assert_eq!(
        all[0].timestamp,
        Some(Timestamp {
            seconds: 0,
            nanos: 0
        }),
        "a missing timestamp is the epoch"
    );
    assert!(
        all[0].data.is_empty() && all[0].metadata.is_empty(),
        "empty data and metadata come back empty"
    );
    assert_eq!(
        all[1].timestamp,
        Some(Timestamp {
            seconds: 10,
            nanos: 345_679_000
        }),
        "rounded to microseconds"
    );
    assert_eq!(
        String::from_utf8(all[1].data.clone()).expect("utf8"),
        r#"{"a": [1, 2.50, 100], "id": 2, "name": "café"}"#
    );
    assert_eq!(all[1].metadata.get("x-auth-id"), Some(&agg(999)));
    let mut bad = ev("User", &agg(1), 3, 11, 0);
    bad.data = b"not json".to_vec();
    let e = store(&mut c, vec![bad]).await.expect_err("non-JSON data");
    assert_eq!(
        (e.code(), e.message()),
        (Code::Internal, "could not save events")
    );
}

#[tokio::test]
async fn sixteen_mib_payload_refused_by_default_accepted_when_raised() {
    let big = format!("\"{}\"", "x".repeat(16 * 1024 * 1024));
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    let mut e = ev("User", &agg(1), 1, 1, 0);
    e.data = big.clone().into_bytes();
    let err = store(&mut c, vec![e.clone()])
        .await
        .expect_err("over grpc-go's 4 MiB default");
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("code = ResourceExhausted")
            || err.message().contains("code = OutOfRange"),
        "{}",
        err.message()
    );
    assert!(
        retrieve(&mut c, EventFilter::default()).await.is_empty(),
        "nothing stored"
    );

    let ds = Devstore::start(&["--max-message-size", "33554432"]);
    let mut c = client(&ds).await;
    store(&mut c, vec![e])
        .await
        .expect("accepted with a raised limit");
    let back = retrieve(&mut c, EventFilter::default()).await;
    assert_eq!(back[0].data, big.into_bytes());
}

#[tokio::test]
async fn concurrent_store_streams() {
    let ds = Devstore::start(&[]);
    let mut tasks = Vec::new();
    for s in 0..4u32 {
        let mut c = client(&ds).await;
        tasks.push(tokio::spawn(async move {
            let events: Vec<Event> = (1..=250)
                .map(|v| {
                    ev(
                        "Cluster",
                        &agg(100 + s),
                        v,
                        i64::from(s) * 1000 + v as i64,
                        0,
                    )
                })
                .collect();
            store(&mut c, events).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("store");
    }
    let mut c = client(&ds).await;
    let all = retrieve(&mut c, EventFilter::default()).await;
    assert_eq!(all.len(), 1000);
    for s in 0..4u32 {
        let vs: Vec<u64> = all
            .iter()
            .filter(|e| e.aggregate_id == agg(100 + s))
            .map(|e| e.aggregate_version.unwrap_or(0))
            .collect();
        assert_eq!(
            vs,
            (1..=250).collect::<Vec<u64>>(),
            "stream {s} stored whole and in order"
        );
    }
}

#[tokio::test]
async fn hundred_thousand_events_through_one_stream_come_back_exact() {
    let ds = Devstore::start(&[]);
    let mut c = client(&ds).await;
    let n = 100_000u64;
    let make = move |i: u64| {
        let mut e = ev(
            ["User", "Tenant", "Cluster"][(i % 3) as usize],
            &agg((i % 1000) as u32),
            i / 1000 + 1,
            1_700_000_000 + i as i64,
            ((i * 7919) % 1_000_000) as i32 * 1000,
        );
        e.data = format!("{{\"n\": {i}, \"s\": \"é{i}\"}}").into_bytes();
        e.metadata
            .insert("component_name".into(), format!("commandhandler-{}", i % 7));
        e
    };
    store(&mut c, (0..n).map(make).collect())
        .await
        .expect("store 100k");
    let back = retrieve(&mut c, EventFilter::default()).await;
    assert_eq!(back.len() as u64, n);
    for (i, got) in back.iter().enumerate() {
        assert_eq!(*got, make(i as u64), "event {i} differs");
    }
}
