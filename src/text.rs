//! Showing text that came from the data — a stream entry, a model name, an
//! error message — where a person or a terminal reads it. Control
//! characters (ESC, BEL, CR…), bidirectional overrides and bytes that are
//! not UTF-8 are written as visible escapes, so a value can neither drive
//! the terminal nor hide what it holds. Pure, and used by the parser's
//! reasons as well as by the tables.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Longest value a reason quotes before it shortens it.
const QUOTE_MAX_CHARS: usize = 60;

/// Whether `c` must not reach a terminal as itself.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Bidirectional overrides and isolates ("Trojan Source"), marks.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            // Line and paragraph separators start new lines in some terminals.
            | '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if (c as u32) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `text` with every unsafe character escaped; borrowed when there is none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Bytes as readable text: valid UTF-8 as itself (unsafe characters
/// escaped), every byte of an invalid sequence as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return escape_controls(text);
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape_controls(chunk.valid()));
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    Cow::Owned(out)
}

/// A value for a sentence: quoted, escaped, and shortened so one wild
/// value cannot make the sentence unreadable.
pub fn quoted(value: &str) -> String {
    let escaped = escape_controls(value);
    if escaped.chars().count() <= QUOTE_MAX_CHARS {
        format!("'{escaped}'")
    } else {
        let head: String = escaped.chars().take(QUOTE_MAX_CHARS).collect();
        format!("'{head}…' ({} bytes)", value.len())
    }
}

/// [`quoted`] for bytes that may not be UTF-8.
pub fn quoted_bytes(value: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(value) {
        return quoted(text);
    }
    let escaped = escape_bytes(value);
    let head: String = escaped.chars().take(QUOTE_MAX_CHARS).collect();
    if head.len() < escaped.len() {
        format!("'{head}…' ({} bytes)", value.len())
    } else {
        format!("'{head}'")
    }
}

/// At most `max_bytes` of `text`, cut on a character boundary, with a note
/// of how much was left out.
pub fn truncate(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… ({} more bytes)",
        &text[..end],
        text.len() - end
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(escape_controls("plain ü"), "plain ü");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\u{1b}[31mred\u{7}\r\n\t\0"),
            "a\\x1b[31mred\\x07\\r\\n\\t\\0"
        );
        assert_eq!(escape_controls("\u{9b}2J"), "\\x9b2J");
        assert_eq!(escape_controls("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert_eq!(escape_controls("x\u{7f}"), "x\\x7f");
    }

    #[test]
    fn invalid_utf8_bytes_are_escaped_one_by_one() {
        assert_eq!(escape_bytes(b"ok"), "ok");
        assert_eq!(escape_bytes(b"a\xffb\xc3"), "a\\xffb\\xc3");
        assert_eq!(escape_bytes(b"\xc3\xbc\x00\xfe"), "ü\\0\\xfe");
    }

    #[test]
    fn quotes_are_short_and_safe() {
        assert_eq!(quoted("bob"), "'bob'");
        let long = "x".repeat(9_000);
        let shown = quoted(&long);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("(9000 bytes)"), "{shown}");
        assert_eq!(quoted_bytes(b"\xff\x00"), "'\\xff\\0'");
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("üüü", 3), "ü… (4 more bytes)");
    }
}
