//! A stream entry as read, before it is parsed: its ID, its fields as
//! bytes, and — for an entry too large to hold — what was kept of it. The
//! fingerprint tells an entry from another with the same ID.

use std::fmt::Write as _;

use super::{EntryId, RawFields};

/// One entry as Redis returned it: values are bytes, the producer's are
/// UTF-8 but nothing guarantees it. An entry larger than genalytics stores
/// as one event is [`Cut`] as it is read: only what its dead letter keeps
/// is ever held.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub id: EntryId,
    pub fields: RawFields,
    pub cut: Option<Box<Cut>>,
}

/// What an entry too large to store held, when its fields were cut while
/// read (see `stream::wire`): `fields` keeps its first fields, each name
/// and value at most [`CUT_STRING`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Bytes of names and values the entry holds in Redis.
    pub bytes: u64,
    /// Fields it holds in Redis.
    pub fields: u64,
    /// The whole entry's, as the trim script computes it.
    pub fingerprint: Fingerprint,
    /// Each kept name or value that was shortened.
    pub strings: Vec<CutString>,
}

/// One name or value kept shortened: which, how long it was, its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutString {
    /// Index of its field.
    pub field: usize,
    pub is_name: bool,
    pub length: u64,
    /// SHA-256 of the whole string, in hex.
    pub sha256: String,
}

/// An entry at least this large (as [`RawEntry::size`] counts) is a giant:
/// reads and batches holding one are kept smaller, and the reader does not
/// read ahead while giants are about.
pub const GIANT_ENTRY: usize = 1 << 20;

/// Longest name or value a cut entry keeps.
pub const CUT_STRING: usize = 64 << 10;
/// Most bytes and fields a cut entry keeps (its dead letter's size).
pub const CUT_KEEP_BYTES: usize = 1 << 20;
pub const CUT_KEEP_FIELDS: usize = 1_000;

impl Cut {
    /// The dead letter's reason: what the entry held and what is kept.
    pub fn reason(&self, kept_fields: usize) -> String {
        let limit = if self.fields > super::FIELDS_MAX as u64 {
            format!(
                "{} fields",
                crate::output::thousands(super::FIELDS_MAX as u64)
            )
        } else {
            super::ENTRY_MAX_BYTES_TEXT.to_string()
        };
        let mut reason = format!(
            "the entry holds {} of names and values in {}, more than the {limit} genalytics stores as \
             one event; it was read without being held: `raw_fields` keeps its first {}, each name \
             and value cut at {} KiB",
            crate::output::counted(self.bytes, "byte"),
            crate::output::counted(self.fields, "field"),
            crate::output::counted(kept_fields as u64, "field"),
            CUT_STRING >> 10,
        );
        for (n, string) in self.strings.iter().enumerate() {
            if n == 10 {
                let _ = write!(reason, "; and {} more cut", self.strings.len() - n);
                break;
            }
            let _ = write!(
                reason,
                "; the {} of field {} had {}, SHA-256 {}",
                if string.is_name { "name" } else { "value" },
                string.field + 1,
                crate::output::counted(string.length, "byte"),
                string.sha256
            );
        }
        reason
    }
}

impl RawEntry {
    pub fn new(id: EntryId, fields: RawFields) -> RawEntry {
        RawEntry {
            id,
            fields,
            cut: None,
        }
    }

    /// What the entry costs Redis to send: for a cut entry, its whole size,
    /// not what is kept of it. Reads are sized by this, so giants are
    /// asked for one at a time however little of them is held.
    pub fn size_in_redis(&self) -> usize {
        self.sizes().1
    }

    /// [`RawEntry::size`] and [`RawEntry::size_in_redis`] in one pass.
    pub fn sizes(&self) -> (usize, usize) {
        let held = self.size();
        match &self.cut {
            Some(cut) => (held, usize::try_from(cut.bytes).unwrap_or(usize::MAX)),
            None => (held, held),
        }
    }

    /// The [`Fingerprint`] of the whole entry, also of one that was cut.
    pub fn fingerprint(&self) -> Fingerprint {
        match &self.cut {
            Some(cut) => cut.fingerprint,
            None => Fingerprint::of(&self.fields),
        }
    }

    /// Bytes it costs to hold (see [`held_size`]).
    pub fn size(&self) -> usize {
        held_size(&self.fields)
    }
}

/// Bytes of an entry's names and values, as limits count them.
pub fn payload_bytes(fields: &RawFields) -> usize {
    fields
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum()
}

/// Bytes fields cost to hold: their names and values, and per field two
/// vectors and their allocations (which dwarf the bytes of an entry of
/// many tiny fields).
pub fn held_size(fields: &RawFields) -> usize {
    64 + fields
        .iter()
        .map(|(name, value)| name.len() + value.len() + 128)
        .sum::<usize>()
}

/// What tells an entry from another with the same ID (a stream recreated
/// under the key hands out the same IDs): the SHA-1 of its names and
/// values as [`super::pack`] packs them. The trim script computes the same
/// with `redis.sha1hex(cmsgpack.pack(…))`, so Redis checks an entry is
/// still the one read without sending it back; it shows as that hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 20]);

impl Fingerprint {
    pub fn of(fields: &RawFields) -> Fingerprint {
        let mut sha = openssl::sha::Sha1::new();
        super::pack::encode(fields, |bytes| sha.update(bytes));
        Fingerprint(sha.finish())
    }

    /// Of fields already packed.
    pub fn of_packed(packed: &[u8]) -> Fingerprint {
        Fingerprint(openssl::sha::sha1(packed))
    }

    /// Of a packing hashed as it passed.
    pub fn from_digest(digest: [u8; 20]) -> Fingerprint {
        Fingerprint(digest)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

pub fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::with_capacity(40), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}
