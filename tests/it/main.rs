//! End-to-end tests through the public interfaces, against real servers on loopback.
//! One test binary (link time on two cores); one module per area.

mod archive_cli;
mod auth;
mod bench;
mod destination;
mod devstore_contract;
mod faults;
mod helm;
mod hostile;
mod import;
mod incremental;
mod ops;
mod reference;
mod restore;
mod service;
