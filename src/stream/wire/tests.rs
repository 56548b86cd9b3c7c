//! The parser against every way a reply can arrive: cut anywhere, past
//! the budget, broken, hostile.

use std::fmt::Write as _;

use proptest::prelude::*;

use super::*;
use crate::event::{CUT_KEEP_BYTES, CUT_KEEP_FIELDS, CUT_STRING, EntryId, RawFields};

/// A connection to a "server" that sends `bytes` and hangs up: the
/// worst a server (or a cut connection) can hand the parser.
fn fed(bytes: &[u8]) -> Wire {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        if let Ok((mut socket, _)) = listener.accept() {
            let _ = socket.write_all(&bytes);
        }
    });
    let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).expect("url");
    Wire::open(&url, Duration::from_secs(5), Duration::from_secs(5)).expect("open")
}

/// A "server" whose every read hands out at most the rest of one
/// chunk, so the reader's buffer ends exactly where a chunk does,
/// however busy the machine (no socket, no timing).
struct Chunked(std::collections::VecDeque<Vec<u8>>);

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(chunk) = self.0.front_mut() else {
            return Ok(0);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.0.pop_front();
        }
        Ok(n)
    }
}

impl Write for Chunked {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `bytes` cut at `cuts` (positions past the end or repeated are
/// dropped).
fn chunked(bytes: &[u8], cuts: &[usize]) -> Wire {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c < bytes.len()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = std::collections::VecDeque::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        if cut > from {
            chunks.push_back(bytes[from..cut].to_vec());
            from = cut;
        }
    }
    Wire {
        io: BufReader::with_capacity(BUFFER, Box::new(Chunked(chunks))),
        db: 0,
        broken: false,
        line: Vec::new(),
        generic_held: 0,
    }
}

fn entry(id: &str, fields: &[(&str, &str)]) -> String {
    let mut out = format!("*2\r\n${}\r\n{id}\r\n*{}\r\n", id.len(), fields.len() * 2);
    for (name, value) in fields {
        let _ = write!(
            out,
            "${}\r\n{name}\r\n${}\r\n{value}\r\n",
            name.len(),
            value.len()
        );
    }
    out
}

#[test]
fn a_reply_past_the_budget_is_read_past_and_the_next_reply_still_reads() {
    let big = "x".repeat(300_000);
    let reply = format!(
        "*3\r\n{}{}{}+OK\r\n",
        entry("1-1", &[("event_type", "request")]),
        entry("1-2", &[("error_message", &big)]),
        entry("1-3", &[("a", "b")]),
    );
    let mut wire = fed(reply.as_bytes());
    let taken = wire.entries(10, 10).expect("entries");
    assert_eq!(taken.total, 3);
    assert!(taken.cut());
    assert_eq!(taken.entries.len(), 1);
    assert_eq!(taken.entries[0].id, "1-1".parse::<EntryId>().unwrap());
    assert_eq!(
        taken.entries[0].fields,
        vec![(b"event_type".to_vec(), b"request".to_vec())]
    );
    assert_eq!(wire.value().expect("in step"), Value::Okay);
}

#[test]
fn a_reply_cut_at_any_one_or_two_places_reads_the_same() {
    let reply = format!(
        "*2\r\n{}{}:-12\r\n*-1\r\n:999999999999999999\r\n:-1234567890123456789\r\n+OK\r\n",
        entry(
            "1700000000000-12",
            &[("event_type", "request"), ("", "\r\n")]
        ),
        entry("1-1", &[("a", &"b".repeat(12))]),
    );
    let reply = reply.as_bytes();
    let read = |mut wire: Wire| {
        let taken = wire.entries(usize::MAX, usize::MAX).expect("entries");
        let entries: Vec<_> = taken
            .entries
            .into_iter()
            .map(|e| (e.id, e.fields))
            .collect();
        let after: Vec<Value> = (0..5).map(|_| wire.value().expect("value")).collect();
        (entries, after)
    };
    let whole = read(chunked(reply, &[]));
    assert_eq!(whole.0.len(), 2);
    assert_eq!(
        whole.1,
        [
            Value::Int(-12),
            Value::Nil,
            Value::Int(999_999_999_999_999_999),
            Value::Int(-1_234_567_890_123_456_789),
            Value::Okay
        ]
    );
    for first in 1..reply.len() {
        assert_eq!(read(chunked(reply, &[first])), whole, "cut at {first}");
        for second in first + 1..reply.len() {
            assert_eq!(
                read(chunked(reply, &[first, second])),
                whole,
                "cut at {first} and {second}"
            );
        }
    }
}

/// Whether a header read where it lies in the buffer (the buffer
/// holding `bytes` up to the first cut) reads as the line reader reads
/// the same bytes in one piece: the same kind and number and the same
/// bytes left, or an error from both.
fn read_alike(bytes: &[u8], cuts: &[usize]) -> Result<(), String> {
    let mut buffered = chunked(bytes, cuts);
    // From an empty buffer a header goes to the line reader whatever
    // it holds: fill it first.
    buffered.io.fill_buf().expect("in memory");
    let mut by_line = chunked(bytes, &[]);
    let shown = || format!("{:?} cut at {cuts:?}", String::from_utf8_lossy(bytes));
    match (buffered.header(), by_line.line_header()) {
        (Ok(got), Ok(want)) => {
            let mut left = (Vec::new(), Vec::new());
            buffered.io.read_to_end(&mut left.0).expect("in memory");
            by_line.io.read_to_end(&mut left.1).expect("in memory");
            if got != want || left.0 != left.1 {
                return Err(format!("{}: read {got:?}, by line {want:?}", shown()));
            }
        }
        (Err(_), Err(_)) => {}
        (got, want) => return Err(format!("{}: read {got:?}, by line {want:?}", shown())),
    }
    Ok(())
}

#[test]
fn length_lines_at_the_edges_read_alike_in_the_buffer_and_by_line() {
    let lines: &[&[u8]] = &[
        b"*0\r\n",
        b"*-0\r\n",
        b"*+0\r\n",
        b"*+5\r\n",
        b"*-+5\r\n",
        b"*+-5\r\n",
        b"*--5\r\n",
        b"*++5\r\n",
        b"$-1\r\n",
        b"$-\r\n",
        b"$+\r\n",
        b":\r\n",
        b":-\r\n",
        b"*\r\n",
        b"* 1\r\n",
        b"*1 \r\n",
        b"*1\r\r\n",
        b"*1\n\r\n",
        b"*1\r",
        b"*1",
        b":999999999999999999\r\n",
        b":-999999999999999999\r\n",
        b":0000000000000000001\r\n",
        b":000000000000000000\r\n",
        b":9223372036854775807\r\n",
        b":9223372036854775808\r\n",
        b":-9223372036854775808\r\n",
        b":-9223372036854775809\r\n",
        b":9999999999999999999\r\n",
        b":99999999999999999999999\r\n",
        b"*1\xd9\xa3\r\n",
        b"*\xef\xbc\x91\r\n",
        b"+OK\r\n",
        b"-ERR no\r\n",
        b"%1\r\n",
    ];
    for line in lines {
        let bytes = [*line, b"*1\r\n:7\r\n"].concat();
        for cut in 1..=bytes.len() {
            if let Err(differs) = read_alike(&bytes, &[cut]) {
                panic!("{differs}");
            }
        }
    }
}

proptest! {
    #[test]
    fn any_length_line_reads_alike_in_the_buffer_and_by_line(
        line in prop_oneof![
            "[*$:+%-][-+]{0,2}[0-9]{0,21}[ x]?(\r\n|\r|\n|\r\r\n|\n\r\n|)",
            // Around 18 and 19 digits, where the buffered read stops.
            "[*$:][-+]?[0-9]{17,20}\r\n",
            "[*$:][-+]?9{17,20}\r\n",
            "[*$:][-+]?92233720368547758[0-9]{2}\r\n",
        ],
        rest in "[*$:0-9\r\n-]{0,8}",
        cuts in proptest::collection::vec(0usize..40, 0..4),
    ) {
        let bytes = [line.as_bytes(), rest.as_bytes()].concat();
        if let Err(differs) = read_alike(&bytes, &cuts) {
            prop_assert!(false, "{}", differs);
        }
    }
}

#[test]
fn a_whole_reply_is_kept_within_the_budget_with_any_bytes() {
    let mut reply = b"*1\r\n*2\r\n$3\r\n7-0\r\n*2\r\n$0\r\n\r\n$4\r\n\0\xff\r\n\r\n".to_vec();
    reply.extend_from_slice(b"*0\r\n*-1\r\n");
    let mut wire = fed(&reply);
    let taken = wire.entries(usize::MAX, usize::MAX).expect("entries");
    assert!(!taken.cut());
    assert_eq!(
        taken.entries[0].fields,
        vec![(Vec::new(), b"\0\xff\r\n".to_vec())]
    );
    assert_eq!(wire.entries(0, 0).expect("empty").total, 0);
    assert_eq!(wire.entries(0, 0).expect("nil").total, 0);
}

#[test]
fn an_error_inside_a_transactions_replies_gives_the_connection_up() {
    let mut wire = fed(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n-WRONGTYPE no\r\n*0\r\n");
    let mut reader = crate::stream::reader::BoundedReader::default();
    let request = crate::stream::reader::ReadRequest {
        after: "1-1".parse().unwrap(),
        until: None,
        count: 10,
        budget: 1 << 20,
        giant_budget: 1 << 20,
        anchor: Some(crate::event::Fingerprint::from_digest([0; 20])),
    };
    let err = reader.read(&mut wire, "k", &request).expect_err("an error");
    assert_eq!(err.code(), Some("WRONGTYPE"));
    // The range's reply is still unread: nothing may follow on it.
    assert!(!redis::ConnectionLike::is_open(&wire));
}

#[test]
fn a_server_error_keeps_the_connection_and_names_its_code() {
    let mut wire = fed(b"-WRONGTYPE Operation against a key\r\n:5\r\n");
    let err = wire.entries(100, 100).expect_err("an error");
    assert_eq!(err.code(), Some("WRONGTYPE"));
    assert!(redis::ConnectionLike::is_open(&wire));
    assert_eq!(wire.value().expect("in step"), Value::Int(5));
}

#[test]
fn broken_replies_are_errors_that_break_the_connection_not_panics() {
    let deep = "*1\r\n".repeat(100);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "cut in a string",
            b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$10\r\nabc".to_vec(),
        ),
        (
            "a length no server sends",
            b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$99999999999999\r\nab".to_vec(),
        ),
        (
            "a negative count",
            b"*1\r\n*2\r\n$3\r\n1-1\r\n*-7\r\n".to_vec(),
        ),
        (
            "an odd number of strings",
            b"*1\r\n*2\r\n$3\r\n1-1\r\n*1\r\n$1\r\na\r\n".to_vec(),
        ),
        ("not an ID", b"*1\r\n*2\r\n$3\r\nabc\r\n*0\r\n".to_vec()),
        (
            "no CRLF after a string",
            b"*1\r\n*2\r\n$3\r\n1-1XY*0\r\n".to_vec(),
        ),
        ("a line without CR", b"*1\n".to_vec()),
        ("an unknown type", b"%2\r\n".to_vec()),
        ("a length that is no number", b"*x\r\n".to_vec()),
        ("nothing at all", Vec::new()),
        ("a line longer than Redis sends", {
            let mut line = vec![b'+'];
            line.resize(2 << 20, b'a');
            line
        }),
        ("nested too deep", deep.clone().into_bytes()),
    ];
    for (what, bytes) in cases {
        let mut wire = fed(&bytes);
        assert!(
            wire.entries(usize::MAX, usize::MAX).is_err(),
            "{what}: entries"
        );
        assert!(!redis::ConnectionLike::is_open(&wire), "{what}: still open");
        assert!(wire.value().is_err(), "{what}: used after breaking");
    }
    let mut wire = fed(deep.as_bytes());
    assert!(wire.value().is_err(), "a generic reply nested too deep");
}

/// An entries reply holding `entries` as Redis writes it.
fn reply_of(entries: &[(&str, &RawFields)]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", entries.len()).into_bytes();
    for (id, fields) in entries {
        out.extend_from_slice(format!("*2\r\n${}\r\n{id}\r\n", id.len()).as_bytes());
        out.extend_from_slice(format!("*{}\r\n", fields.len() * 2).as_bytes());
        for (name, value) in *fields {
            for part in [name, value] {
                out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out
}

#[test]
fn an_entry_too_large_to_store_is_cut_as_it_is_read_and_its_neighbours_are_whole() {
    let small: RawFields = vec![(b"event_type".to_vec(), b"request".to_vec())];
    // A giant value after a name; a giant name; many fields that add up.
    let value: Vec<u8> = (0..20 << 20).map(|n: usize| (n % 251) as u8).collect();
    let giant_value: RawFields = vec![
        (b"event_type".to_vec(), b"request".to_vec()),
        (b"blob".to_vec(), value.clone()),
        (b"after".to_vec(), vec![b'a'; 100 << 10]),
    ];
    let giant_name: RawFields = vec![(vec![b'n'; 17 << 20], b"v".to_vec())];
    let many: RawFields = (0..3_000)
        .map(|n| (format!("f{n}").into_bytes(), vec![b'x'; 8 << 10]))
        .collect();
    // More fields than an event may have, each tiny.
    let countless: RawFields = (0..10_001)
        .map(|n| (format!("{n}").into_bytes(), b"v".to_vec()))
        .collect();
    let entries = [
        ("1-0", &small),
        ("2-0", &giant_value),
        ("3-0", &giant_name),
        ("4-0", &many),
        ("5-0", &small),
        ("6-0", &countless),
    ];
    let bytes = reply_of(&entries);
    // Cut in odd places, so strings straddle the buffer's fills.
    let cuts: Vec<usize> = (1..40).map(|n| n * 1_234_567).collect();
    let taken = chunked(&bytes, &cuts)
        .entries(usize::MAX, usize::MAX)
        .expect("entries");
    assert_eq!(taken.total, 6);
    let read = &taken.entries;
    for (entry, (_, whole)) in read.iter().zip(&entries) {
        // The whole entry's fingerprint, as the trim script computes it.
        assert_eq!(entry.fingerprint(), crate::event::Fingerprint::of(whole));
    }
    assert!(read[0].cut.is_none() && read[0].fields == small);
    assert!(read[4].cut.is_none() && read[4].fields == small);

    let cut = read[1].cut.as_ref().expect("cut");
    assert_eq!(
        cut.bytes,
        (10 + 7 + 4 + (20 << 20) + 5 + (100 << 10)) as u64
    );
    assert_eq!(cut.fields, 3);
    assert_eq!(read[1].fields[0], giant_value[0]);
    assert_eq!(read[1].fields[1].1, value[..CUT_STRING]);
    assert_eq!(read[1].fields[2].1.len(), CUT_STRING);
    let shortened: Vec<(usize, bool, u64)> = cut
        .strings
        .iter()
        .map(|s| (s.field, s.is_name, s.length))
        .collect();
    assert_eq!(shortened, [(1, false, 20 << 20), (2, false, 100 << 10)]);
    assert_eq!(
        cut.strings[0].sha256,
        crate::event::hex(&openssl::sha::sha256(&value))
    );

    let cut = read[2].cut.as_ref().expect("cut");
    assert_eq!(read[2].fields[0].0.len(), CUT_STRING);
    assert_eq!(read[2].fields[0].1, b"v");
    assert_eq!(
        (cut.strings[0].is_name, cut.strings[0].length),
        (true, 17 << 20)
    );

    // Many fields: what is kept stops at the dead letter's size.
    let cut = read[3].cut.as_ref().expect("cut");
    assert_eq!(cut.fields, 3_000);
    let kept: usize = read[3].fields.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert!(kept <= CUT_KEEP_BYTES, "{kept}");
    assert!(read[3].fields.len() <= CUT_KEEP_FIELDS);
    assert_eq!(read[3].fields[0], many[0]);
    assert!(read[3].size() < 2 * CUT_KEEP_BYTES);
    // Cut from its first field on: nothing shortened, fields left out.
    let cut = read[5].cut.as_ref().expect("cut");
    assert_eq!(cut.fields, 10_001);
    assert!(cut.strings.is_empty());
    assert_eq!(read[5].fields, countless[..CUT_KEEP_FIELDS]);
    assert!(
        cut.reason(CUT_KEEP_FIELDS)
            .contains("more than the 10,000 fields")
    );
}
