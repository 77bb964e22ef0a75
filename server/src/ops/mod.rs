//! Operations: logging, secrets, configuration, metrics.

pub mod logging;
pub mod secrets;
