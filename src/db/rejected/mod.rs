//! Dead letters (`generation_events_rejected`): listing, reading one as it
//! was received, purging, and taking a chunk of them for a replay;
//! writing them is `write`.

pub mod write;

use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::{Client, Transaction};
use serde_json::Value;

use crate::event::EntryId;
use crate::event::RawFields;

/// Which dead letters a command is about.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only letters whose reason contains this (any case).
    pub reason: Option<String>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Received before.
    pub until: Option<DateTime<Utc>>,
    /// Only these entry IDs (any stream).
    pub ids: Option<Vec<EntryId>>,
}

/// What a [`Filter`] asks of letters `r`, as parameters $1 to $4 (an
/// absent one holds for every letter); a statement's own start at $5.
const MATCHES: &str = "($1::text IS NULL OR strpos(lower(r.reason), lower($1)) > 0)
     AND ($2::timestamptz IS NULL OR r.received_at >= $2)
     AND ($3::timestamptz IS NULL OR r.received_at < $3)
     AND ($4::text[] IS NULL OR r.stream_id = ANY($4))";

impl Filter {
    /// The parameters of [`MATCHES`], then `more`. The reason is matched
    /// as text, not as a LIKE pattern.
    fn params<'a>(&'a self, more: &[&'a (dyn ToSql + Sync)]) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&self.reason, &self.since, &self.until, &self.ids];
        params.extend_from_slice(more);
        params
    }
}

/// A dead letter as `list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub stream: String,
    pub incarnation: i32,
    pub stream_id: String,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    pub fields: i64,
}

/// The letters `filter` matches, oldest first, at most `limit` (all for
/// none), and how many match in all.
pub fn list(
    client: &mut Client,
    filter: &Filter,
    limit: Option<i64>,
) -> anyhow::Result<(Vec<Summary>, i64)> {
    let total: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM generation_events_rejected r WHERE {MATCHES}"),
            &filter.params(&[]),
        )?
        .get(0);
    let rows = client.query(
        &format!(
            "SELECT coalesce(s.stream_key, ''), coalesce(s.incarnation, 0), r.stream_id, r.received_at,
                    r.reason,
                    coalesce(
                        cardinality(r.raw_fields) / 2,
                        CASE WHEN jsonb_typeof(r.fields) = 'object' THEN
                            (SELECT coalesce(sum(CASE WHEN jsonb_typeof(value) = 'array'
                                                      THEN jsonb_array_length(value) ELSE 1 END), 0)::int8
                             FROM jsonb_each(r.fields))
                        END,
                        0)
             FROM generation_events_rejected r LEFT JOIN genalytics_streams s ON s.id = r.stream
             WHERE {MATCHES}
             ORDER BY r.received_at, r.stream, r.stream_id
             LIMIT $5"
        ),
        &filter.params(&[&limit]),
    )?;
    let letters = rows
        .into_iter()
        .map(|row| Summary {
            stream: row.get(0),
            incarnation: row.get(1),
            stream_id: row.get(2),
            received_at: row.get(3),
            reason: row.get(4),
            fields: row.get::<_, Option<i64>>(5).unwrap_or(0),
        })
        .collect();
    Ok((letters, total))
}

/// A dead letter with the fields it was received with.
#[derive(Debug, Clone)]
pub struct Letter {
    pub summary: Summary,
    pub fields: Fields,
}

/// A letter's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// Exactly as received (`raw_fields`), or — for a letter without
    /// `raw_fields` (a table older than sql/0005) — as its JSON `fields` hold
    /// them; none when neither could be kept.
    pub raw: Option<RawFields>,
    /// Whether `raw` is the exact bytes (not rebuilt from JSON).
    pub exact: bool,
    /// Whether the entry was too large and `raw` keeps it cut.
    pub cut: bool,
}

impl Fields {
    /// Fields that replay may store: the exact bytes, or fields rebuilt
    /// from JSON that show no sign of loss (the JSON `fields` of a letter
    /// without `raw_fields` may hold U+FFFD where the entry had invalid UTF-8).
    pub fn replayable(&self) -> Option<&RawFields> {
        if self.cut {
            return None;
        }
        let raw = self.raw.as_ref()?;
        let lossy = !self.exact
            && raw.iter().any(|(n, v)| {
                [n, v]
                    .iter()
                    .any(|b| String::from_utf8_lossy(b).contains('\u{FFFD}'))
            });
        (!lossy).then_some(raw)
    }
}

/// How many dead letters there are.
pub fn count(client: &mut Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM generation_events_rejected", &[])?
        .get(0))
}

/// Every letter of entry `stream_id` (one per stream that had it).
pub fn show(client: &mut Client, stream_id: &str) -> anyhow::Result<Vec<Letter>> {
    let rows = client.query(
        "SELECT coalesce(s.stream_key, ''), coalesce(s.incarnation, 0), r.stream_id, r.received_at,
                r.reason, r.raw_fields, r.fields
         FROM generation_events_rejected r LEFT JOIN genalytics_streams s ON s.id = r.stream
         WHERE r.stream_id = $1 ORDER BY r.stream",
        &[&stream_id],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let fields = raw_of(row.get(5), &row.get(6));
            Letter {
                summary: Summary {
                    stream: row.get(0),
                    incarnation: row.get(1),
                    stream_id: row.get(2),
                    received_at: row.get(3),
                    reason: row.get(4),
                    fields: fields.raw.as_ref().map_or(0, |raw| raw.len() as i64),
                },
                fields,
            }
        })
        .collect())
}

/// The fields of a letter: its bytes, or its JSON object for letters that
/// predate them (each value a string, or an array of a repeated name's).
fn raw_of(flat: Option<Vec<Vec<u8>>>, json: &Value) -> Fields {
    if let Some(flat) = flat {
        let mut pairs = flat.into_iter();
        let mut raw = Vec::new();
        while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
            raw.push((name, value));
        }
        return Fields {
            raw: Some(raw),
            exact: true,
            cut: false,
        };
    }
    let Some(object) = json.as_object().filter(|o| !o.is_empty()) else {
        return Fields {
            raw: None,
            exact: false,
            cut: false,
        };
    };
    let text = |value: &Value| match value {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let mut raw = Vec::new();
    for (name, value) in object {
        match value {
            Value::Array(values) => {
                raw.extend(values.iter().map(|v| (name.clone().into_bytes(), text(v))));
            }
            value => raw.push((name.clone().into_bytes(), text(value))),
        }
    }
    Fields {
        raw: Some(raw),
        exact: false,
        cut: false,
    }
}

/// Deletes the letters `filter` matches; how many went.
pub fn purge(client: &mut Client, filter: &Filter) -> anyhow::Result<u64> {
    Ok(client.execute(
        &format!("DELETE FROM generation_events_rejected r WHERE {MATCHES}"),
        &filter.params(&[]),
    )?)
}

/// Letters `filter` matches whose `stream` is NULL (stored before the
/// column existed, in a database that had recorded no stream): no replay
/// can tell which stream to store them under.
pub fn without_stream(client: &mut Client, filter: &Filter) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            &format!(
                "SELECT count(*) FROM generation_events_rejected r WHERE r.stream IS NULL AND {MATCHES}"
            ),
            &filter.params(&[]),
        )?
        .get(0))
}

/// The streams (by reference) that have letters `filter` matches.
pub fn streams(client: &mut Client, filter: &Filter) -> anyhow::Result<Vec<i32>> {
    Ok(client
        .query(
            &format!(
                "SELECT DISTINCT r.stream FROM generation_events_rejected r
                 WHERE r.stream IS NOT NULL AND {MATCHES} ORDER BY 1"
            ),
            &filter.params(&[]),
        )?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}

/// The entry IDs of the letters of `stream` that `filter` matches, in
/// entry order, and how many letters have an ID that is not one.
pub fn ids(
    client: &mut Client,
    stream: i32,
    filter: &Filter,
) -> anyhow::Result<(Vec<EntryId>, u64)> {
    let mut ids = Vec::new();
    let mut invalid = 0;
    for row in client.query(
        &format!(
            "SELECT r.stream_id FROM generation_events_rejected r WHERE r.stream = $5 AND {MATCHES}"
        ),
        &filter.params(&[&stream]),
    )? {
        match row.get::<_, String>(0).parse::<EntryId>() {
            Ok(id) => ids.push(id),
            Err(_) => invalid += 1,
        }
    }
    ids.sort_unstable();
    Ok((ids, invalid))
}

/// Locks the transfer state row of `stream` (if it is still the stream
/// transfer reads): a replay then takes its locks in the order a transfer's
/// commit does — state, letters, rollup queue — so the two cannot deadlock,
/// and one waits for the other's batch.
pub fn lock_stream(tx: &mut Transaction<'_>, stream: i32) -> anyhow::Result<()> {
    tx.query(
        "SELECT 1 FROM genalytics_transfer_state WHERE stream_ref = $1 FOR UPDATE",
        &[&stream],
    )?;
    Ok(())
}

/// Locks and returns the letters of `stream` with these IDs that are still
/// there, in entry order. A concurrent replay of the same letters waits
/// for this transaction and then finds them gone; rows are locked in one
/// order, so two replays cannot deadlock.
pub fn take(
    tx: &mut Transaction<'_>,
    stream: i32,
    ids: &[EntryId],
) -> anyhow::Result<Vec<(EntryId, Fields)>> {
    let rows = tx.query(
        "SELECT r.stream_id, r.raw_fields, r.fields, r.cut
         FROM generation_events_rejected r
         WHERE r.stream = $1 AND r.stream_id = ANY($2)
         ORDER BY r.stream_id
         FOR UPDATE",
        &[&stream, &ids],
    )?;
    let mut letters: Vec<(EntryId, Fields)> = rows
        .into_iter()
        .filter_map(|row| {
            let id: EntryId = row.get::<_, String>(0).parse().ok()?;
            let fields = Fields {
                cut: row.get(3),
                ..raw_of(row.get(1), &row.get(2))
            };
            Some((id, fields))
        })
        .collect();
    letters.sort_unstable_by_key(|(id, _)| *id);
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_bytes_or_else_from_json() {
        let flat = vec![b"a".to_vec(), b"1".to_vec(), b"a".to_vec(), b"\0".to_vec()];
        assert_eq!(
            raw_of(Some(flat), &Value::Null),
            Fields {
                raw: Some(vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"a".to_vec(), b"\0".to_vec())
                ]),
                exact: true,
                cut: false,
            }
        );
        let json = serde_json::json!({"a": "1", "b": ["x", "y"], "c": 3});
        let Fields { raw, exact, .. } = raw_of(None, &json);
        assert!(!exact);
        let raw = raw.unwrap();
        assert_eq!(raw.len(), 4);
        assert!(raw.contains(&(b"b".to_vec(), b"y".to_vec())));
        assert!(raw.contains(&(b"c".to_vec(), b"3".to_vec())));
        assert_eq!(
            raw_of(None, &serde_json::json!({})),
            Fields {
                raw: None,
                exact: false,
                cut: false,
            }
        );
    }
}
