//! The one integration-test binary: every test runs the real `genalytics`
//! against throwaway PostgreSQL and Redis servers of its own.

// A test reads best top to bottom, even when that is long.
#![allow(clippy::too_many_lines)]

mod harness;

mod cli_errors;
mod migrate;
mod servers;
mod simulate;
