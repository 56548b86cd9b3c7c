//! SIGINT/SIGTERM as a flag that long-running work checks between steps,
//! so an interrupted run commits or cleans up instead of dying mid-way.
//! Only commands that install it change how a signal is handled; others
//! keep the default (the process ends).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Turns SIGINT and SIGTERM into the flag (once per process).
pub fn install() -> anyhow::Result<Arc<AtomicBool>> {
    if let Some(flag) = FLAG.get() {
        return Ok(Arc::clone(flag));
    }
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("cannot install the signal handler")?;
    }
    Ok(Arc::clone(FLAG.get_or_init(|| flag)))
}

/// Whether a stop was asked for (always false unless installed).
pub fn requested() -> bool {
    FLAG.get().is_some_and(|flag| flag.load(Ordering::Relaxed))
}
