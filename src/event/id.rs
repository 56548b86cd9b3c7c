//! A stream entry ID, `<ms>-<seq>`: the one type the position travels as,
//! from the database through the reader to the trim. It is stored as text
//! (what `redis-cli` shows an operator) and ordered as Redis orders IDs.

use std::error::Error;
use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// Before every entry: where a new stream is read from.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };
    /// The highest ID Redis can hand out: nothing comes after it.
    pub const MAX: EntryId = EntryId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// When the entry was added (its ID's millisecond part); `None` past
    /// what a time can hold.
    pub fn time(self) -> Option<DateTime<Utc>> {
        i64::try_from(self.ms)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
    }

    /// The first ID of a millisecond.
    pub fn at_ms(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }
}

impl FromStr for EntryId {
    type Err = String;

    /// `ms-seq`, or `ms` alone (sequence 0), as Redis accepts them.
    fn from_str(text: &str) -> Result<Self, String> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        match (digits(ms) && digits(seq), ms.parse(), seq.parse()) {
            (true, Ok(ms), Ok(seq)) => Ok(EntryId { ms, seq }),
            _ => Err(format!(
                "{} is not a stream entry ID",
                crate::text::quoted(text)
            )),
        }
    }
}

/// As text, `<ms>-<seq>`, the way Redis writes it.
impl serde::Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(self)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl ToSql for EntryId {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // Written straight into the row: this runs for every entry of every
        // batch, and a String each would be an allocation each.
        out.extend_from_slice(itoa::Buffer::new().format(self.ms).as_bytes());
        out.extend_from_slice(b"-");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        Ok(IsNull::No)
    }

    /// The text types only: `&str` also takes `ltree` and its kin, whose
    /// binary form starts with a version byte the bytes above lack.
    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        )
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for EntryId {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Ok(text.parse::<EntryId>()?)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// What is known about the stored position, for the comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub id: EntryId,
    /// The stream's `entries-added` when its entry `id` was added, when
    /// known: how many entries of this stream lie at or before `id`.
    pub index: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_numerically_not_textually() {
        let a: EntryId = "999-5".parse().unwrap();
        let b: EntryId = "1000-0".parse().unwrap();
        assert!(a < b);
        assert!("1000-0".parse::<EntryId>().unwrap() < "1000-1".parse().unwrap());
        assert_eq!("1000".parse::<EntryId>().unwrap(), EntryId::at_ms(1000));
        assert_eq!(b.to_string(), "1000-0");
        let mut sql = BytesMut::new();
        let max = EntryId::MAX;
        max.to_sql_checked(&Type::TEXT, &mut sql).unwrap();
        assert_eq!(&sql[..], max.to_string().as_bytes());
        for id in [EntryId::ZERO, EntryId::MAX, EntryId { ms: 9, seq: 10 }] {
            for ty in [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME] {
                let mut sql = BytesMut::from(&b"before"[..]);
                id.to_sql_checked(&ty, &mut sql).unwrap();
                assert_eq!(&sql[..], format!("before{id}").as_bytes(), "{ty}");
            }
        }
        let ltree = Type::new(
            "ltree".into(),
            16_000,
            postgres::types::Kind::Simple,
            "public".into(),
        );
        assert!(
            !<EntryId as ToSql>::accepts(&ltree),
            "written without ltree's version byte"
        );
        for bad in [
            "x-1",
            "",
            "-",
            "1-",
            "+1-2",
            "1--2",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
        assert_eq!(
            EntryId {
                ms: u64::MAX,
                seq: 0
            }
            .time(),
            None
        );
    }
}
