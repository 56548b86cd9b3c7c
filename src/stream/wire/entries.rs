//! Stream replies taken apart into entries as they arrive: each entry's
//! ID, names and values straight from the buffer, entries past the budget
//! read past, and an entry too large to store cut while it is read.

use std::io::{self, BufRead, Read};

use redis::RedisResult;

use super::{Taken, Wire, length, malformed};
use crate::event::{
    CUT_KEEP_BYTES, CUT_KEEP_FIELDS, CUT_STRING, Cut, CutString, ENTRY_MAX_BYTES, EntryId,
    FIELDS_MAX, Fingerprint, RawEntry, RawFields,
};

impl Wire {
    pub(super) fn entries_in(
        &mut self,
        mut budget: usize,
        giant_budget: usize,
    ) -> RedisResult<Taken> {
        let total = match self.header()? {
            (b'*', -1) => 0,
            (b'*', n) => length(n)?,
            (b'-', _) => return Err(self.server_error()),
            _ => return Err(malformed("a stream reply that is not an array")),
        };
        let mut taken = Taken {
            entries: Vec::with_capacity(total.min(1024)),
            total,
            last_id: None,
        };
        let mut bytes = 0usize;
        for _ in 0..total {
            if !taken.entries.is_empty() && bytes >= budget {
                taken.last_id = Some(self.skip_entry()?);
                continue;
            }
            let entry = self.entry()?;
            // A cut giant is judged by what it costs Redis, not what is held.
            let (size, in_redis) = entry.sizes();
            if in_redis >= crate::event::GIANT_ENTRY {
                budget = budget.min(giant_budget);
            }
            bytes = bytes.saturating_add(size);
            taken.last_id = Some(entry.id);
            taken.entries.push(entry);
        }
        Ok(taken)
    }

    /// `[id, …]`'s header and ID.
    fn entry_id(&mut self) -> RedisResult<EntryId> {
        if self.header()? != (b'*', 2) {
            return Err(malformed("a stream entry that is not [id, fields]"));
        }
        let id = match self.header()? {
            (b'$', n) => self.bulk(length(n)?)?,
            _ => return Err(malformed("a stream entry without an ID")),
        };
        std::str::from_utf8(&id)
            .ok()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| malformed("a stream entry ID that is not one"))
    }

    /// Reads past an entry, keeping only its ID.
    fn skip_entry(&mut self) -> RedisResult<EntryId> {
        let id = self.entry_id()?;
        self.skip_value(1)?;
        Ok(id)
    }

    /// `[id, [name, value, …]]`. An entry whose names and values pass
    /// [`ENTRY_MAX_BYTES`] is cut as it is read (see [`Cutting`]).
    fn entry(&mut self) -> RedisResult<RawEntry> {
        let id = self.entry_id()?;
        let strings = match self.header()? {
            // A deleted entry still listed (consumer groups' history).
            (b'*', -1) => return Ok(RawEntry::new(id, Vec::new())),
            (b'*', n) => length(n)?,
            _ => return Err(malformed("a stream entry whose fields are not an array")),
        };
        if strings % 2 != 0 {
            return Err(malformed("a stream entry with an odd number of strings"));
        }
        let mut fields: RawFields = Vec::with_capacity((strings / 2).min(1024));
        let mut name: Option<Vec<u8>> = None;
        // What no event may hold, as the parser judges it: more fields
        // than it stores (known before a byte of them is read), or more
        // bytes of names and values.
        let mut cutting =
            (strings / 2 > FIELDS_MAX).then(|| Cutting::start(strings, &mut fields, None));
        let mut bytes = 0usize;
        for _ in 0..strings {
            let n = match self.header()? {
                (b'$', n) if n >= 0 => length(n)?,
                _ => return Err(malformed("a field name or value that is not a string")),
            };
            bytes = bytes.saturating_add(n);
            if cutting.is_none() && bytes > ENTRY_MAX_BYTES {
                cutting = Some(Cutting::start(strings, &mut fields, name.as_mut()));
            }
            let string = match cutting.as_mut() {
                None => self.bulk(n)?,
                Some(cut) => cut.string(self, n, fields.len(), name.is_none())?,
            };
            match name.take() {
                None => name = Some(string),
                // Past what a cut entry keeps, fields are only counted.
                Some(_) if cutting.is_some() && fields.len() >= CUT_KEEP_FIELDS => {}
                Some(named) => fields.push((named, string)),
            }
        }
        let cut = cutting.map(|cutting| Box::new(cutting.finish(&mut fields)));
        Ok(RawEntry { id, fields, cut })
    }

    /// `n` bytes and their CRLF.
    pub(super) fn bulk(&mut self, n: usize) -> RedisResult<Vec<u8>> {
        let buffered = self.io.buffer();
        let bytes = if n < buffered.len().saturating_sub(1) {
            let bytes = buffered[..n].to_vec();
            if &buffered[n..n + 2] != b"\r\n" {
                return Err(malformed("a string without its CRLF"));
            }
            self.io.consume(n + 2);
            bytes
        } else {
            // Its exact size at once (a giant is not copied through a
            // doubling buffer); the pages are touched only as bytes arrive.
            let mut bytes = Vec::new();
            bytes
                .try_reserve_exact(n)
                .map_err(|_| malformed("a string too long to hold"))?;
            let read = (&mut self.io).take(n as u64).read_to_end(&mut bytes)?;
            if read < n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            let mut crlf = [0; 2];
            self.io.read_exact(&mut crlf)?;
            if &crlf != b"\r\n" {
                return Err(malformed("a string without its CRLF"));
            }
            bytes
        };
        Ok(bytes)
    }

    /// `n` bytes and their CRLF, each piece handed to `sink` as it arrives;
    /// only the first `keep` are held.
    pub(super) fn stream_bulk(
        &mut self,
        n: usize,
        keep: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> RedisResult<Vec<u8>> {
        let mut kept = Vec::with_capacity(keep.min(n));
        let mut left = n;
        while left > 0 {
            let buffered = match self.io.fill_buf() {
                Ok(buffered) => buffered,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            };
            if buffered.is_empty() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            let piece = &buffered[..buffered.len().min(left)];
            sink(piece);
            let room = keep.saturating_sub(kept.len()).min(piece.len());
            kept.extend_from_slice(&piece[..room]);
            let taken = piece.len();
            self.io.consume(taken);
            left -= taken;
        }
        let mut crlf = [0; 2];
        self.io.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(malformed("a string without its CRLF"));
        }
        Ok(kept)
    }
}

/// An entry being cut as it is read: what is held stops at what its dead
/// letter keeps ([`CUT_STRING`] a string, [`CUT_KEEP_FIELDS`] fields,
/// [`CUT_KEEP_BYTES`] in all), while the whole entry's fingerprint and each
/// shortened string's length and digest are computed from the bytes as
/// they pass.
struct Cutting {
    print: openssl::sha::Sha1,
    bytes: u64,
    strings: u64,
    kept_bytes: usize,
    cuts: Vec<CutString>,
}

impl Cutting {
    /// Starts cutting an entry of `strings` names and values, of which
    /// `fields` (and a `name` without its value yet) were held whole.
    fn start(strings: usize, fields: &mut RawFields, name: Option<&mut Vec<u8>>) -> Cutting {
        let mut cutting = Cutting {
            print: openssl::sha::Sha1::new(),
            bytes: 0,
            strings: 0,
            kept_bytes: 0,
            cuts: Vec::new(),
        };
        crate::event::pack::array_header(strings, &mut |bytes| cutting.print.update(bytes));
        let held = fields.len();
        for (index, (field_name, value)) in fields.iter_mut().enumerate() {
            cutting.held(field_name, index, true);
            cutting.held(value, index, false);
        }
        fields.truncate(CUT_KEEP_FIELDS);
        if let Some(name) = name {
            cutting.held(name, held, true);
        }
        cutting
    }

    /// Bytes of the next string of field `field` that are kept.
    fn room(&self, field: usize) -> usize {
        if field < CUT_KEEP_FIELDS {
            CUT_STRING.min(CUT_KEEP_BYTES.saturating_sub(self.kept_bytes))
        } else {
            0
        }
    }

    /// A string held whole before cutting began: hashed, then shortened.
    fn held(&mut self, string: &mut Vec<u8>, field: usize, is_name: bool) {
        crate::event::pack::string_header(string.len(), &mut |bytes| self.print.update(bytes));
        self.print.update(string);
        self.bytes += string.len() as u64;
        self.strings += 1;
        let keep = field < CUT_KEEP_FIELDS;
        let room = self.room(field);
        if string.len() > room {
            if keep {
                self.cuts.push(CutString {
                    field,
                    is_name,
                    length: string.len() as u64,
                    sha256: crate::event::hex(&openssl::sha::sha256(string)),
                });
            }
            string.truncate(room);
            string.shrink_to_fit();
        }
        self.kept_bytes += string.len();
    }

    /// The next string, `n` bytes, of field `field`, read off the socket.
    fn string(
        &mut self,
        wire: &mut Wire,
        n: usize,
        field: usize,
        is_name: bool,
    ) -> RedisResult<Vec<u8>> {
        let keep = field < CUT_KEEP_FIELDS;
        let room = self.room(field);
        crate::event::pack::string_header(n, &mut |bytes| self.print.update(bytes));
        let mut digest = (keep && n > room).then(openssl::sha::Sha256::new);
        let print = &mut self.print;
        let kept = wire.stream_bulk(n, room, |piece| {
            print.update(piece);
            if let Some(digest) = digest.as_mut() {
                digest.update(piece);
            }
        })?;
        if let Some(digest) = digest {
            self.cuts.push(CutString {
                field,
                is_name,
                length: n as u64,
                sha256: crate::event::hex(&digest.finish()),
            });
        }
        self.bytes += n as u64;
        self.strings += 1;
        self.kept_bytes += kept.len();
        Ok(kept)
    }

    /// What was cut; `fields` loses the fields past what is kept.
    fn finish(self, fields: &mut RawFields) -> Cut {
        fields.truncate(CUT_KEEP_FIELDS);
        Cut {
            bytes: self.bytes,
            fields: self.strings / 2,
            fingerprint: Fingerprint::from_digest(self.print.finish()),
            strings: self.cuts,
        }
    }
}
