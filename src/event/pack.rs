//! An entry's names and values as one `MessagePack` array of strings, byte
//! for byte as Redis's Lua `cmsgpack.pack` writes them: what an entry's
//! fingerprint hashes, here and in the trim script, and how a batch keeps
//! its entries' fields for dead letters (one allocation an entry, not two a
//! field).

use super::RawFields;

/// Writes the packing of `fields` to `out`, piece by piece.
pub fn encode(fields: &RawFields, mut out: impl FnMut(&[u8])) {
    array_header(fields.len() * 2, &mut out);
    for (name, value) in fields {
        for part in [name, value] {
            string_header(part.len(), &mut out);
            out(part);
        }
    }
}

/// Writes the header of an array of `n` strings.
pub fn array_header(n: usize, out: &mut impl FnMut(&[u8])) {
    match n {
        0..=15 => out(&[0x90 | n as u8]),
        16..=0xffff => {
            out(&[0xdc]);
            out(&(n as u16).to_be_bytes());
        }
        _ => {
            out(&[0xdd]);
            out(&(n as u32).to_be_bytes());
        }
    }
}

/// Writes the header of a string of `len` bytes.
pub fn string_header(len: usize, out: &mut impl FnMut(&[u8])) {
    match len {
        0..=31 => out(&[0xa0 | len as u8]),
        32..=0xff => out(&[0xd9, len as u8]),
        0x100..=0xffff => {
            out(&[0xda]);
            out(&(len as u16).to_be_bytes());
        }
        _ => {
            out(&[0xdb]);
            out(&(len as u32).to_be_bytes());
        }
    }
}

/// The packing of `fields`, in one buffer of its exact size.
pub fn packed(fields: &RawFields) -> Vec<u8> {
    let mut size = 0;
    encode(fields, |bytes| size += bytes.len());
    let mut out = Vec::with_capacity(size);
    encode(fields, |bytes| out.extend_from_slice(bytes));
    out
}

/// Names and values from their packing; none if it is not an array of an
/// even number of strings, exactly filling `packed`.
pub fn decode(packed: &[u8]) -> Option<RawFields> {
    let mut at: usize = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = packed.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    let big = |bytes: &[u8]| bytes.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
    let count = match take(1)?[0] {
        head @ 0x90..=0x9f => usize::from(head & 0x0f),
        0xdc => big(take(2)?),
        0xdd => big(take(4)?),
        _ => return None,
    };
    if count % 2 != 0 {
        return None;
    }
    let mut fields = Vec::with_capacity(count / 2);
    let mut name = None;
    for _ in 0..count {
        let len = match take(1)?[0] {
            head @ 0xa0..=0xbf => usize::from(head & 0x1f),
            0xd9 | 0xc4 => big(take(1)?),
            0xda | 0xc5 => big(take(2)?),
            0xdb | 0xc6 => big(take(4)?),
            _ => return None,
        };
        let part = take(len)?.to_vec();
        match name.take() {
            None => name = Some(part),
            Some(name) => fields.push((name, part)),
        }
    }
    (at == packed.len()).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_the_ones_cmsgpack_writes() {
        // Bytes as Redis 7's cmsgpack.pack wrote them for these sizes.
        let field = |len: usize| vec![(vec![b'x'; len], b"ab".to_vec())];
        assert_eq!(packed(&field(0))[..3], [0x92, 0xa0, 0xa2]);
        assert_eq!(packed(&field(31))[..2], [0x92, 0xbf]);
        assert_eq!(packed(&field(32))[..3], [0x92, 0xd9, 32]);
        assert_eq!(packed(&field(255))[..3], [0x92, 0xd9, 255]);
        assert_eq!(packed(&field(256))[..4], [0x92, 0xda, 1, 0]);
        assert_eq!(packed(&field(65_535))[..4], [0x92, 0xda, 255, 255]);
        assert_eq!(packed(&field(65_536))[..6], [0x92, 0xdb, 0, 1, 0, 0]);
        let eight: RawFields = (0..8).map(|_| (b"a".to_vec(), b"a".to_vec())).collect();
        assert_eq!(packed(&eight)[..3], [0xdc, 0, 16]);
        let many: RawFields = (0..32_768)
            .map(|_| (b"a".to_vec(), b"a".to_vec()))
            .collect();
        assert_eq!(packed(&many)[..5], [0xdd, 0, 1, 0, 0]);
        assert_eq!(packed(&Vec::new()), [0x90]);
    }

    #[test]
    fn packing_comes_apart_as_it_was_and_broken_packing_does_not() {
        let fields: RawFields = vec![
            (b"event_type".to_vec(), b"request".to_vec()),
            (Vec::new(), b"\xff\x00 anything".to_vec()),
            (vec![b'n'; 300], vec![b'v'; 70_000]),
        ];
        let bytes = packed(&fields);
        assert_eq!(decode(&bytes), Some(fields));
        for cut in [1, 5, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        // An odd number of strings, or not an array.
        assert_eq!(decode(&[0x91, 0xa1, b'a']), None);
        assert_eq!(decode(&[0xa1, b'a']), None);
        assert_eq!(decode(&[]), None);
    }
}
