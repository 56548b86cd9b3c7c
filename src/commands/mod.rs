//! One module per command: its flags (`Args`) and its `run`. Commands
//! know nothing of the command line as a whole (`cli` dispatches to them).

pub mod aggregate;
pub mod check;
pub mod config;
pub mod migrate;
pub mod prune;
pub mod rejected;
pub mod report;
pub mod simulate;
pub mod status;
pub mod transfer;
