//! Operations: logging, secrets, configuration, metrics, the Pushgateway, emitted events,
//! schedules.

pub mod config;
pub mod events;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod pushgateway;
pub mod schedule;
pub mod secrets;
