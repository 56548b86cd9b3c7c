//! Writing entries the way the service's producer does: `XADD key MAXLEN ~
//! cap <ms>-* field value …`, pipelined thousands at a time.

use anyhow::{Context, bail};

use crate::traffic::Entry;

/// The producer's own cap on the stream (`XADD … MAXLEN ~ 100000`).
pub const PRODUCER_MAXLEN: u64 = 100_000;

/// Appends entries to one stream, keeping IDs increasing even when the
/// stream already holds newer ones (the time part is clamped, as a
/// producer's clock would be by Redis).
pub struct StreamWriter<'a> {
    con: &'a mut redis::Connection,
    key: String,
    maxlen: Option<u64>,
    last_ms: i64,
}

impl<'a> StreamWriter<'a> {
    pub fn open(
        con: &'a mut redis::Connection,
        key: &str,
        maxlen: Option<u64>,
    ) -> anyhow::Result<Self> {
        let last_ms = last_generated_ms(con, key)?;
        Ok(StreamWriter {
            con,
            key: key.to_string(),
            maxlen,
            last_ms,
        })
    }

    /// Writes one batch in a single round trip.
    pub fn write(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for entry in entries {
            self.last_ms = self.last_ms.max(entry.added_ms);
            let cmd = pipe.cmd("XADD").arg(&self.key);
            if let Some(cap) = self.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(cap);
            }
            cmd.arg(format!("{}-*", self.last_ms));
            for (field, value) in &entry.fields {
                cmd.arg(*field).arg(value);
            }
            cmd.ignore();
        }
        pipe.query::<()>(self.con)
            .with_context(|| format!("cannot add entries to the stream {}", self.key))
    }
}

/// Millisecond part of the stream's last generated ID (0 for no stream).
fn last_generated_ms(con: &mut redis::Connection, key: &str) -> anyhow::Result<i64> {
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query(con)
        .with_context(|| format!("cannot inspect the key {key}"))?;
    match kind.as_str() {
        "none" => return Ok(0),
        "stream" => {}
        other => bail!(
            "the key {key} holds a {other}, not a stream; pick another --redis-ns or --stream"
        ),
    }
    let info: redis::streams::StreamInfoStreamReply = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(con)
        .with_context(|| format!("cannot read the stream {key}"))?;
    Ok(parse_entry_ms(&info.last_generated_id).unwrap_or(0))
}

/// The millisecond part of an entry ID such as `1795821600123-0`.
pub fn parse_entry_ms(id: &str) -> Option<i64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}
