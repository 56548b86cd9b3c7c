//! JSON: the report's serde form, pretty-printed.

use std::io::Write;

use super::{Renderer, Report};

pub struct JsonRenderer;

impl Renderer for JsonRenderer {
    fn render(&self, report: &dyn Report, out: &mut dyn Write) -> anyhow::Result<()> {
        serde_json::to_writer_pretty(&mut *out, &report.json())?;
        writeln!(out)?;
        Ok(())
    }
}
