//! Operations: logging, secrets, configuration, metrics.

pub mod config;
pub mod logging;
pub mod secrets;
