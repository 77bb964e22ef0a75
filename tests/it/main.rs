//! End-to-end tests through the public interfaces, against real servers on loopback.
//! One test binary (link time on two cores); one module per area.

mod archive_cli;
mod auth;
mod auth_gateway;
mod bench;
mod bus;
mod cockroach;
mod compaction;
mod continuous;
mod copies;
mod db_tls;
mod destination;
mod devstore_contract;
mod errors;
mod faults;
mod go_client;
mod grpcurl;
mod helm;
mod hostile;
mod hostile_peers;
mod import;
mod incremental;
mod json_model;
mod keys;
mod object_lock;
mod operator;
mod ops;
mod ops_failures;
mod reference;
mod restore;
mod restore_live;
mod retention;
mod service;
mod service_stops;
mod table_order;
