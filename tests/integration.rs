//! The one integration-test binary: every test runs the real `genalytics`
//! against throwaway PostgreSQL and Redis servers of its own.

// A test reads best top to bottom, even when that is long.
#![allow(clippy::too_many_lines)]
// Helpers that build expected rows read best returning what the rows hold.
#![allow(clippy::unnecessary_wraps, clippy::type_complexity)]

mod harness;

mod aggregate;
mod cli_errors;
mod cluster;
mod config_file;
mod contrib;
mod demo;
mod failover;
mod follow;
mod fresh;
mod fresh_parts;
mod generated;
mod hardening;
mod help;
mod hostile;
mod hostile_streams;
mod libpq_env;
mod migrate;
mod partitions;
mod prune;
mod rejected;
mod report;
mod report_fit;
mod report_html;
mod report_output;
mod report_windows;
mod rollups;
mod secrets;
mod sentinel;
mod servers;
mod simulate;
mod standby;
mod status;
mod streams;
mod tls;
mod transfer;
mod transfer_faults;
