//! Deterministic Monoskope-like sample events: Users, role bindings, Tenants, Clusters and
//! their bindings, with protojson payloads and the metadata Monoskope's command side writes.

use std::collections::BTreeMap;

use monoskope_backup_api::eventsourcing::Event;

/// A small deterministic generator (xorshift), so samples are the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A UUID-shaped id.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }
}

const TYPES: &[(&str, &[&str])] = &[
    ("User", &["UserCreated", "UserUpdated", "UserDeleted"]),
    (
        "UserRoleBinding",
        &["UserRoleBindingCreated", "UserRoleBindingDeleted"],
    ),
    (
        "Tenant",
        &["TenantCreated", "TenantUpdated", "TenantDeleted"],
    ),
    (
        "Cluster",
        &[
            "ClusterCreated",
            "ClusterUpdated",
            "ClusterBootstrapTokenCreated",
            "ClusterDeleted",
        ],
    ),
    (
        "TenantClusterBinding",
        &["TenantClusterBindingCreated", "TenantClusterBindingDeleted"],
    ),
];

const WORDS: &[&str] = &[
    "alpha",
    "bravo",
    "cluster",
    "delta",
    "edge",
    "frankfurt",
    "gateway",
    "helm",
    "ingress",
    "jade",
    "kube",
    "lima",
    "monoskope",
    "node",
    "operator",
    "prod",
    "quota",
    "region",
    "staging",
    "tenant",
];

/// `n` events over `aggregates` aggregates, versions 1..k each, timestamps increasing from
/// `start_unix` (one per millisecond), payloads of roughly 200–800 bytes.
pub fn events(n: u64, aggregates: u64, start_unix: i64, seed: u64) -> impl Iterator<Item = Event> {
    let mut rng = Rng::new(seed);
    let aggregates = aggregates.max(1);
    let ids: Vec<(usize, String)> = (0..aggregates)
        .map(|i| ((i % TYPES.len() as u64) as usize, rng.uuid()))
        .collect();
    let actors: Vec<String> = (0..8).map(|_| rng.uuid()).collect();
    let mut versions = vec![0u64; aggregates as usize];
    (0..n).map(move |i| {
        let a = (i % aggregates) as usize;
        versions[a] += 1;
        let (t, kinds) = TYPES[ids[a].0];
        let kind = if versions[a] == 1 { kinds[0] } else { kinds[1 + (rng.next_u64() as usize) % (kinds.len() - 1)] };
        let actor = &actors[(rng.next_u64() % actors.len() as u64) as usize];
        let mut fields = String::new();
        let extra = 2 + rng.next_u64() % 12;
        for f in 0..extra {
            let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
            fields.push_str(&format!(", \"{w}{f}\": \"{}-{:x}\"", w, rng.next_u64() % 0xfff_ffff));
        }
        let data = format!(
            "{{\"@type\": \"type.googleapis.com/eventdata.{kind}\", \"id\": \"{}\", \"name\": \"{}-{}\", \"revision\": {}{fields}}}",
            ids[a].1,
            WORDS[(rng.next_u64() % WORDS.len() as u64) as usize],
            i,
            versions[a]
        );
        let ms = start_unix * 1000 + i as i64;
        Event {
            r#type: kind.to_string(),
            timestamp: Some(prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 + (i % 1000) as i32 * 1000 }),
            aggregate_id: ids[a].1.clone(),
            aggregate_type: t.to_string(),
            aggregate_version: Some(versions[a]),
            data: data.into_bytes(),
            metadata: BTreeMap::from([
                ("component_commit".to_string(), "0d3e7e81".to_string()),
                ("component_name".to_string(), "commandhandler".to_string()),
                ("component_version".to_string(), "v0.6.0".to_string()),
                ("x-auth-email".to_string(), format!("admin-{}@monoskope.example", &actor[..4])),
                ("x-auth-id".to_string(), actor.clone()),
                ("x-auth-name".to_string(), "Admin".to_string()),
            ]),
        }
    })
}
