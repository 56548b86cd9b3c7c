//! The parser against hostile and ordinary entries, and its cost.

use super::*;
use crate::event::{ENTRY_MAX_BYTES, ENTRY_MAX_BYTES_TEXT, EntryId, FIELDS_MAX};

#[test]
fn values_that_would_grow_past_the_limit_as_json_are_refused() {
    let id = EntryId::ZERO;
    let long = format!("[{}]", "0,".repeat(40_000) + "0");
    let err = parse(
        id,
        &[
            ("event_type", "request"),
            ("image_dimensions", long.as_str()),
        ],
    )
    .unwrap_err();
    assert!(err.contains("longer than the 64 KiB"), "{err}");
    let controls = "\u{1}".repeat(3 << 20);
    let err = parse(
        id,
        &[("event_type", "request"), ("note", controls.as_str())],
    )
    .unwrap_err();
    assert!(err.contains("as JSON text"), "{err}");
    let fine = "x".repeat(3 << 20);
    assert!(parse(id, &[("event_type", "request"), ("note", fine.as_str())]).is_ok());
}

#[test]
fn the_entry_limit_reads_as_it_is() {
    assert_eq!(
        ENTRY_MAX_BYTES_TEXT,
        format!("{} MiB", ENTRY_MAX_BYTES >> 20)
    );
}
use chrono::TimeZone;
use proptest::prelude::*;

const ID: EntryId = EntryId {
    ms: 1_795_821_600_000,
    seq: 0,
};

fn ok(pairs: &[(&str, &str)]) -> Event {
    parse(ID, pairs).unwrap()
}

fn rejected(pairs: &[(&str, &str)]) -> String {
    parse(ID, pairs).unwrap_err()
}

fn at(text: &str) -> DateTime<Utc> {
    ok(&[("event_type", "request"), ("timestamp", text)]).timestamp
}

#[test]
fn timestamps_naive_utc_with_and_without_fraction_or_zone() {
    let base = Utc.with_ymd_and_hms(2026, 11, 27, 14, 3, 7).unwrap();
    assert_eq!(at("2026-11-27T14:03:07"), base);
    assert_eq!(
        at("2026-11-27T14:03:07.123456"),
        base + chrono::Duration::microseconds(123_456)
    );
    assert_eq!(at("2026-11-27T14:03:07Z"), base);
    assert_eq!(at("2026-11-27T16:03:07+02:00"), base);
    assert_eq!(at("2026-11-27T19:33:07+0530"), base);
    assert_eq!(at("2026-11-27 19:33:07.000+0530"), base);
    assert_eq!(
        at("2026-11-27T14:03:07.5-01:30"),
        base + chrono::Duration::minutes(90) + chrono::Duration::milliseconds(500)
    );
    assert_eq!(at("2026-11-27 14:03:07"), base);
    assert_eq!(
        at("9999-12-31T23:59:59"),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
    );
}

#[test]
fn a_leap_second_is_the_next_seconds_start() {
    let midnight = Utc.with_ymd_and_hms(2017, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(
        at("2016-12-31T23:59:60.5"),
        midnight + chrono::Duration::milliseconds(500)
    );
    assert_eq!(at("2016-12-31T23:59:60Z"), midnight);
    // Past the last second genalytics stores: refused, not wrapped.
    let refused = parse(
        ID,
        &[
            ("event_type", "request"),
            ("timestamp", "9999-12-31T23:59:60"),
        ],
    );
    assert!(refused.unwrap_err().contains("outside the years"));
}

#[test]
fn an_empty_or_missing_timestamp_takes_the_entry_id_time() {
    let id_time = Utc.timestamp_millis_opt(1_795_821_600_000).unwrap();
    assert_eq!(at(""), id_time);
    assert_eq!(ok(&[("event_type", "request")]).timestamp, id_time);
}

#[test]
fn booleans_in_every_accepted_spelling() {
    for (text, want) in [
        ("True", true),
        ("true", true),
        ("1", true),
        ("False", false),
        ("false", false),
        ("0", false),
    ] {
        let event = ok(&[("event_type", "completion"), ("success", text)]);
        assert_eq!(event.success, Some(want), "{text}");
    }
    assert!(
        rejected(&[("event_type", "completion"), ("success", "yes")]).contains("success 'yes'")
    );
}

#[test]
fn empty_and_missing_values_are_null() {
    let event = ok(&[
        ("event_type", "completion"),
        ("generation_id", ""),
        ("duration_ms", ""),
        ("success", ""),
        ("error_type", ""),
        ("image_dimensions", ""),
    ]);
    assert_eq!(event.generation_id, None);
    assert_eq!(event.user_id, None);
    assert_eq!(event.duration_ms, None);
    assert_eq!(event.success, None);
    assert_eq!(event.error_type, None);
    assert_eq!(event.image_dimensions, None);
    assert_eq!(event.attributes, None);
}

#[test]
fn the_producers_full_completion() {
    let event = ok(&[
        ("event_type", "completion"),
        ("generation_id", "00000000-0000-0000-0000-00000000002a"),
        ("user_id", "6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11"),
        ("timestamp", "2026-11-27T14:02:40.000001"),
        ("duration_ms", "51230"),
        ("success", "True"),
        ("error_type", ""),
        ("error_message", ""),
        ("queue_wait_time_ms", "1200"),
        ("generation_time_ms", "50030"),
        ("model_checkpoint", "illustriousXL_v01"),
        ("image_dimensions", "{\"width\": 832, \"height\": 1216}"),
        ("batch_size", "2"),
        ("prompt_tokens", "45"),
        ("queue_length", "7"),
        ("gpu", "A100"),
    ]);
    assert_eq!(event.event_type, EventType::Completion);
    assert_eq!(event.generation_id.unwrap().as_u128(), 42);
    assert_eq!(event.duration_ms, Some(51_230));
    assert_eq!(event.queue_wait_time_ms, Some(1_200));
    assert_eq!(event.generation_time_ms, Some(50_030));
    assert_eq!(event.batch_size, Some(2));
    assert_eq!(event.prompt_tokens, Some(45));
    assert_eq!(event.queue_length, Some(7));
    assert_eq!(event.model_checkpoint.as_deref(), Some("illustriousXL_v01"));
    assert_eq!(
        event.image_dimensions,
        Some(serde_json::json!({"width": 832, "height": 1216}))
    );
    assert_eq!(event.attributes, Some(serde_json::json!({"gpu": "A100"})));
}

#[test]
fn numbers_are_integers_that_fit_their_column() {
    let value = |text: &str| {
        parse(ID, &[("event_type", "completion"), ("batch_size", text)]).map(|e| e.batch_size)
    };
    assert_eq!(value("0"), Ok(Some(0)));
    assert_eq!(value(" 007 "), Ok(Some(7)));
    assert_eq!(value("+3"), Ok(Some(3)));
    assert_eq!(value("2147483647"), Ok(Some(i32::MAX)));
    assert_eq!(value("0000000000000000000000002"), Ok(Some(2)));
    assert_eq!(value("-0"), Ok(Some(0)));
    for (text, want) in [
        ("2147483648", "too large"),
        ("99999999999999999999999999999", "too large"),
        ("-1", "negative"),
        ("1e3", "not an integer"),
        ("٣", "not an integer"),
        ("--1", "not an integer"),
    ] {
        let reason = value(text).unwrap_err();
        assert!(reason.contains(want), "{text}: {reason}");
    }
}

#[test]
fn json_numbers_are_kept_exactly_and_checked_against_numeric() {
    let dims = |text: &str| {
        parse(
            ID,
            &[("event_type", "completion"), ("image_dimensions", text)],
        )
        .map(|e| e.image_dimensions.unwrap().to_string())
    };
    assert_eq!(
        dims(
            "{\"w\": 123456789012345678901234567890, \"r\": 0.1000000000000000055511151231257827}"
        ),
        Ok(
            "{\"w\":123456789012345678901234567890,\"r\":0.1000000000000000055511151231257827}"
                .to_string()
        )
    );
    assert_eq!(dims("[1e400]"), Ok("[1e+400]".to_string()));
    assert!(dims("[1e131073]").unwrap_err().contains("numeric"));
    assert!(dims("[1e-16384]").unwrap_err().contains("numeric"));
    assert!(dims("[0e99999999999999999999]").is_ok());
    assert!(fits_numeric("-12.50"));
    assert!(!fits_numeric("1e99999999999999999999"));
}

#[test]
fn malformed_values_are_rejected_with_the_field_and_value() {
    let long = "m".repeat(INDEXED_TEXT_MAX + 1);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("event_type", "retry")], "event_type 'retry'"),
        (&[], "event_type is missing"),
        (
            &[("event_type", "request"), ("user_id", "bob")],
            "user_id 'bob' is not a UUID",
        ),
        (
            &[("event_type", "request"), ("generation_id", "42")],
            "generation_id '42'",
        ),
        (
            &[("event_type", "request"), ("timestamp", "yesterday")],
            "timestamp 'yesterday'",
        ),
        (
            &[
                ("event_type", "request"),
                ("timestamp", "0001-01-01T00:00:00"),
            ],
            "outside",
        ),
        (
            &[
                ("event_type", "request"),
                ("timestamp", "+10000-01-01T00:00:00Z"),
            ],
            "timestamp",
        ),
        (
            &[("event_type", "completion"), ("duration_ms", "-5")],
            "duration_ms '-5' is negative",
        ),
        (
            &[("event_type", "completion"), ("duration_ms", "4.5")],
            "duration_ms '4.5' is not an integer",
        ),
        (
            &[("event_type", "completion"), ("batch_size", "99999999999")],
            "batch_size '99999999999' is too large",
        ),
        (
            &[("event_type", "request"), ("queue_length", "many")],
            "queue_length 'many'",
        ),
        (
            &[
                ("event_type", "completion"),
                ("image_dimensions", "{width: 1}"),
            ],
            "image_dimensions '{width: 1}' is not valid JSON",
        ),
        (
            &[
                ("event_type", "request"),
                ("generation_type", "a-very-long-generation-type"),
            ],
            "longer than 20",
        ),
        (
            &[("event_type", "completion"), ("model_checkpoint", &long)],
            "model_checkpoint",
        ),
        (
            &[("event_type", "completion"), ("error_type", &long)],
            "indexed column",
        ),
        (
            &[("event_type", "request"), ("error_message", "nul\0here")],
            "NUL",
        ),
        (
            &[
                ("event_type", "request"),
                ("image_dimensions", "{\"w\": \"\\u0000\"}"),
            ],
            "NUL",
        ),
        (
            &[("event_type", "request"), ("event_type", "completion")],
            "appears twice",
        ),
        (
            &[("event_type", "request"), ("gpu", "a"), ("gpu", "b")],
            "field 'gpu' appears twice",
        ),
        (
            &[("event_type", "request"), ("nul\0name", "x")],
            "'nul\\0name' contains a NUL",
        ),
    ];
    for (pairs, want) in cases {
        let reason = rejected(pairs);
        assert!(reason.contains(want), "{pairs:?}: {reason}");
        assert!(!reason.contains('\0'), "{reason:?}");
        assert!(reason.len() < 400, "{reason}");
    }
}

#[test]
fn reasons_never_carry_control_characters_or_invalid_text() {
    let reason = parse(
        ID,
        &[
            (b"event_type".to_vec(), b"request".to_vec()),
            (b"event_type".to_vec(), b"completion\0\x1b[2J".to_vec()),
        ],
    )
    .unwrap_err();
    assert!(reason.contains("NUL"), "{reason}");
    let reason = parse(
        ID,
        &[
            (b"event_type".to_vec(), b"request".to_vec()),
            (b"gp\xffu".to_vec(), b"x".to_vec()),
        ],
    )
    .unwrap_err();
    assert_eq!(reason, "the field name 'gp\\xffu' is not valid UTF-8");
    let reason = rejected(&[("event_type", "\u{1b}]0;pwned\u{7}")]);
    assert!(!reason.chars().any(char::is_control), "{reason}");
}

#[test]
fn identical_repeats_are_one_field() {
    let event = ok(&[
        ("event_type", "request"),
        ("event_type", "request"),
        ("gpu", "a"),
        ("gpu", "a"),
    ]);
    assert_eq!(event.attributes, Some(serde_json::json!({"gpu": "a"})));
}

#[test]
fn an_unusable_entry_id_time_is_a_reason_not_a_panic() {
    let id = EntryId {
        ms: 99_999_999_999_999_999,
        seq: 0,
    };
    let reason = parse(id, &[("event_type", "request")]).unwrap_err();
    assert!(reason.contains("entry ID"), "{reason}");
}

#[test]
fn an_oversized_entry_is_refused_before_it_is_copied() {
    let huge = vec![b'x'; ENTRY_MAX_BYTES];
    let reason = parse(
        ID,
        &[
            (b"event_type".to_vec(), b"request".to_vec()),
            (b"blob".to_vec(), huge),
        ],
    )
    .unwrap_err();
    assert!(reason.contains("more than the"), "{reason}");
}

#[test]
fn an_entry_of_too_many_fields_is_refused() {
    let fields = |n: usize| {
        std::iter::once(("event_type".to_string(), "request".to_string()))
            .chain((1..n).map(|i| (format!("extra_{i}"), "v".to_string())))
            .collect::<Vec<_>>()
    };
    let event = parse(ID, &fields(FIELDS_MAX)).unwrap();
    assert_eq!(
        event.attributes.unwrap().as_object().unwrap().len(),
        FIELDS_MAX - 1
    );
    let reason = parse(ID, &fields(FIELDS_MAX + 1)).unwrap_err();
    assert!(reason.contains("10001 fields"), "{reason}");
}

#[test]
fn the_producers_spellings_take_the_fast_read_and_the_rest_fall_through() {
    // The fast read is used for what the producer writes…
    for text in [
        "2026-11-28T19:03:32",
        "2026-11-28 19:03:32",
        "2026-11-28T19:03:32.1",
        "2026-11-28T19:03:32.123456",
        "2026-11-28 19:03:32.123456789",
        "0000-01-01T00:00:00",
        "9999-12-31T23:59:59.999999999",
        "2024-02-29T00:00:00",
    ] {
        let fast = producer_time(text);
        assert!(fast.is_some(), "{text:?} missed the fast read");
        assert_eq!(fast.map(Ok), Some(any_iso_time(text)), "{text:?}");
    }
    // …and leaves everything else to chrono, whatever it makes of it.
    for text in [
        "2016-12-31T23:59:60",
        "2016-12-31T23:59:60.5",
        "2026-11-28T19:03:32.1234567891",
        "2026-11-28T19:03:32.",
        "2026-11-28T19:03:32Z",
        "2026-11-28T19:03:32+00:00",
        "2026-11-28t19:03:32",
        "2026-11-28T24:00:00",
        "2026-02-29T00:00:00",
        "+2026-11-28T19:03:32",
        "-2026-11-28T19:03:32",
        "2026-1-28T19:03:32.12",
        "2026-11-28T19:03:3",
        "2026-11-28T19:03:32 ",
        "2026-11-28T19:03:32.-1",
        "2026-11-28T19:03:32.+1",
        "2026\u{2212}11-28T19:03:32",
        "２０２６-11-28T19:03:32",
    ] {
        assert_eq!(producer_time(text), None, "{text:?}");
    }
}

#[test]
fn any_character_anywhere_in_the_producers_spelling_never_panics() {
    // Multi-byte characters (2, 3 and 4 bytes, and digits that are not
    // ASCII) over each byte, and inserted before each byte, so that the
    // fixed positions 4, 7, 10, 13, 16 and 19 fall inside a character.
    let base = "2026-11-28T19:03:32.123456";
    let odd = [
        "é", "\u{2212}", "٣", "０", "😀", " ", "T", ".", "-", ":", "9", "\0",
    ];
    let mut texts = Vec::new();
    for at in 0..=base.len() {
        for c in odd {
            texts.push(format!("{}{c}{}", &base[..at], &base[at..]));
            if at < base.len() {
                texts.push(format!("{}{c}{}", &base[..at], &base[at + 1..]));
            }
        }
    }
    for text in &texts {
        if let Some(fast) = producer_time(text) {
            assert_eq!(Ok(fast), any_iso_time(text), "{text:?}");
        }
        // The whole path, as an entry's field.
        let _ = parse_timestamp(text);
    }
}

proptest! {
    /// The fast read of the producer's spelling agrees with chrono's
    /// wherever it reads a text (and leaves the rest to it).
    #[test]
    fn the_producers_time_reads_as_chrono_reads_it(
        text in prop_oneof![
            "[0-9]{4}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}[.,0-9Z+-]{0,12}",
            "[0-9T:. +-]{19,30}",
        ],
    ) {
        if let Some(fast) = producer_time(&text) {
            prop_assert_eq!(Ok(fast), any_iso_time(&text), "{:?}", text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reasons_stay_clean(
        ms in proptest::num::u64::ANY,
        pairs in proptest::collection::vec(
            (
                prop_oneof![
                    Just(b"event_type".to_vec()), Just(b"timestamp".to_vec()),
                    Just(b"success".to_vec()), Just(b"duration_ms".to_vec()),
                    Just(b"user_id".to_vec()), Just(b"image_dimensions".to_vec()),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                ],
                prop_oneof![
                    Just(b"request".to_vec()), Just(b"completion".to_vec()),
                    Just(b"True".to_vec()), Just(b"-1".to_vec()),
                    "[0-9]{1,25}".prop_map(String::into_bytes),
                    "\\{.*\\}".prop_map(String::into_bytes),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                ],
            ),
            0..16,
        ),
    ) {
        match parse(EntryId { ms, seq: 0 }, &pairs) {
            Ok(event) => {
                prop_assert!(in_range(event.timestamp).is_some());
            }
            Err(reason) => {
                prop_assert!(!reason.chars().any(char::is_control), "{:?}", reason);
            }
        }
    }

    #[test]
    fn any_valid_naive_timestamp_round_trips(secs in -2_208_988_800i64..4_000_000_000, micros in 0u32..1_000_000) {
        let want = DateTime::from_timestamp(secs, micros * 1000).unwrap();
        let text = crate::traffic::python_isoformat(want);
        prop_assert_eq!(parse_timestamp(&text), Ok(want));
    }
}
