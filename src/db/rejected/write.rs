//! Writing dead letters: the fields shown readable beside the exact bytes,
//! each letter in a savepoint so that nothing in an entry can refuse it.

use anyhow::Context;
use postgres::Transaction;
use serde_json::Value;

use crate::error::{is_data_error, pg_refusal};
use crate::event::{EntryId, RawFields};
use crate::text::escape_bytes;

/// A dead letter about to be stored.
pub struct Letter<'a> {
    pub stream_id: EntryId,
    pub fields: &'a RawFields,
    pub reason: String,
    pub cut: bool,
}

/// Longest value `fields` shows; the exact bytes are in `raw_fields`.
const READABLE_VALUE_MAX: usize = 64 << 10;
/// Most fields, and bytes of them, `fields` shows: enough to see what is
/// wrong with any entry a producer meant to write, and a dead letter of a
/// million fields stays a row one can SELECT.
const READABLE_FIELDS_MAX: usize = 1_000;
const READABLE_BYTES_MAX: usize = 1 << 20;

/// The raw fields as a readable JSON object: names and values as text,
/// escaped where they are not printable UTF-8, long values shortened, every
/// value of a repeated name kept (as an array, in order) — up to the first
/// [`READABLE_FIELDS_MAX`] fields or [`READABLE_BYTES_MAX`] bytes. Returns
/// the object and how many fields it shows.
pub fn readable_fields(raw: &RawFields) -> (Value, usize) {
    let mut map = serde_json::Map::new();
    let mut bytes = 0;
    let mut shown = 0;
    for (name, value) in raw {
        if shown == READABLE_FIELDS_MAX || bytes >= READABLE_BYTES_MAX {
            break;
        }
        let name = escape_bytes(name).into_owned();
        let value = readable_value(value);
        bytes += name.len() + value.len();
        shown += 1;
        let value = Value::String(value);
        match map.get_mut(&name) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                map.insert(name, Value::Array(vec![first, value]));
            }
            None => {
                map.insert(name, value);
            }
        }
    }
    (Value::Object(map), shown)
}

/// A value as readable text, at most [`READABLE_VALUE_MAX`] bytes and a
/// note of what is left out. Escaping may take four bytes a byte, so only
/// the part that can be shown is escaped.
fn readable_value(value: &[u8]) -> String {
    let prefix = &value[..value.len().min(READABLE_VALUE_MAX)];
    let escaped = escape_bytes(prefix);
    if prefix.len() == value.len() && escaped.len() <= READABLE_VALUE_MAX {
        return escaped.into_owned();
    }
    let mut end = escaped.len().min(READABLE_VALUE_MAX);
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes)",
        &escaped[..end],
        escaped.len() - end + (value.len() - prefix.len())
    )
}

/// Stores dead letters; one that is already there (a position set back by
/// hand) stays as it was. Everything in them is escaped or bytes, so
/// nothing in an entry can refuse them; should PostgreSQL refuse one all
/// the same, it is stored without its fields, with the reason why.
pub fn store_dead_letters(
    tx: &mut Transaction<'_>,
    stream: i32,
    letters: &[Letter<'_>],
) -> anyhow::Result<u64> {
    const INSERT: &str =
        "INSERT INTO generation_events_rejected (stream, stream_id, fields, reason, raw_fields, cut)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream, stream_id) DO NOTHING";
    if letters.is_empty() {
        return Ok(0);
    }
    let statement = tx.prepare(INSERT)?;
    let mut inserted = 0;
    for letter in letters {
        let (fields, shown) = readable_fields(letter.fields);
        let reason = if shown < letter.fields.len() {
            format!(
                "{}; `fields` shows the first {shown} of its {} fields, `raw_fields` holds them all",
                letter.reason,
                letter.fields.len()
            )
        } else {
            letter.reason.clone()
        };
        let raw = crate::db::flat_raw(letter.fields);
        let mut attempt = tx.transaction()?;
        let stored = attempt.execute(
            &statement,
            &[
                &stream,
                &letter.stream_id,
                &fields,
                &reason,
                &raw,
                &letter.cut,
            ],
        );
        match stored.map_err(anyhow::Error::from) {
            Ok(n) => {
                attempt.commit()?;
                inserted += n;
            }
            Err(err) if is_data_error(&err) => {
                attempt.rollback()?;
                let reason = format!(
                    "{}; the entry's fields could not be stored either: {}",
                    letter.reason,
                    pg_refusal(&err)
                );
                let none: Option<Vec<&[u8]>> = None;
                inserted += tx.execute(
                    &statement,
                    &[
                        &stream,
                        &letter.stream_id,
                        &serde_json::json!({}),
                        &reason,
                        &none,
                        &letter.cut,
                    ],
                )?;
            }
            Err(err) => return Err(err).context("cannot store a dead letter"),
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::raw;

    #[test]
    fn readable_fields_keep_every_value_and_escape_what_json_cannot_hold() {
        let (fields, _) = readable_fields(&raw(&[
            (b"event_type", b"request"),
            (b"event_type", b"completion\0x"),
            (b"bad\xff", b"\x1b[2J"),
            (b"event_type", b"third"),
        ]));
        assert_eq!(
            fields,
            serde_json::json!({
                "event_type": ["request", "completion\\0x", "third"],
                "bad\\xff": "\\x1b[2J",
            })
        );
        let (huge, _) = readable_fields(&raw(&[(b"blob", &vec![b'x'; 1 << 20])]));
        let shown = huge["blob"].as_str().unwrap();
        assert!(
            shown.len() < 70_000 && shown.ends_with("more bytes)"),
            "{}",
            shown.len()
        );
        // A million fields: the first thousand shown.
        let many: RawFields = (0..1_000_000)
            .map(|i| (format!("f{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let (fields, shown) = readable_fields(&many);
        assert_eq!(shown, READABLE_FIELDS_MAX);
        assert_eq!(fields.as_object().unwrap().len(), READABLE_FIELDS_MAX);
        assert_eq!(fields["f999"], "v");
        // Big values: the bytes budget ends it first.
        let big: RawFields = (0..100)
            .map(|i| (format!("f{i}").into_bytes(), vec![b'x'; 100_000]))
            .collect();
        let (_, shown) = readable_fields(&big);
        assert_eq!(shown, 16, "16 values of 64 KiB make 1 MiB");
    }
}
