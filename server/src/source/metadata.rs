//! An event's metadata as the events table holds it — a JSON object of strings (`jsonb`, printed
//! as text) — read into the sorted pairs a record encodes, borrowing the text wherever a string
//! has no escape (almost always: PostgreSQL prints non-ASCII characters as they are). Accepts and
//! rejects what `serde_json` does for a `map<string, string>` (a property test compares them),
//! plus `null`, which Monoskope's store reads as no metadata.

use std::borrow::Cow;

/// Why the metadata is not an object of strings.
#[derive(Debug, thiserror::Error)]
#[error("event metadata is not a JSON object of strings: {0}")]
pub struct BadMetadata(String);

fn bad(what: impl Into<String>) -> BadMetadata {
    BadMetadata(what.into())
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The index of the first byte at or after `i` that ends a run of plain string characters: a
/// quote, a backslash or a control character (`b.len()` if none). Eight bytes at a time: a
/// metadata string is a few dozen bytes, and this scan is most of what reading one costs.
fn string_end(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `x` that is zero (exact for the lowest such byte: a
    /// borrow can mark bytes above it, never below).
    fn zero(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGH
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while matches!(b.get(i), Some(c) if *c != b'"' && *c != b'\\' && *c >= 0x20) {
        i += 1;
    }
    i.min(b.len())
}

/// The JSON string starting at `s[at]` (an opening quote): its value and the index after it.
fn string(s: &str, at: usize) -> Result<(Cow<'_, str>, usize), BadMetadata> {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'"') {
        return Err(bad(format!("expected a string at byte {at}")));
    }
    let start = at + 1;
    let mut i = start;
    let mut escaped = false;
    loop {
        i = string_end(b, i);
        match b.get(i) {
            None => return Err(bad("unterminated string")),
            Some(b'"') => break,
            Some(b'\\') => {
                escaped = true;
                i += 2;
            }
            Some(_) => return Err(bad("control character in a string")),
        }
    }
    let end = i;
    let value = if escaped {
        // Escapes are rare here: serde_json decodes them (surrogate pairs and all).
        Cow::Owned(serde_json::from_str::<String>(&s[at..=end]).map_err(|e| bad(e.to_string()))?)
    } else {
        // Cut at two quotes: character boundaries of text already checked to be UTF-8.
        Cow::Borrowed(&s[start..end])
    };
    Ok((value, end + 1))
}

/// Metadata pairs, borrowed from the text where no escape had to be decoded.
pub type Pairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// The pairs of a metadata object, sorted by key, each key once (the last one wins, as when
/// JSON is read into a map). `null` is no metadata.
pub fn pairs(text: &[u8]) -> Result<Pairs<'_>, BadMetadata> {
    // UTF-8 checked once for the whole text, not string by string: one pass over a few
    // hundred bytes costs less than a dozen over a few dozen.
    let s = std::str::from_utf8(text).map_err(|e| bad(e.to_string()))?;
    let b = text;
    let mut at = skip_ws(b, 0);
    let mut out = Pairs::with_capacity(8);
    if b[at..].starts_with(b"null") {
        at = skip_ws(b, at + 4);
    } else {
        if b.get(at) != Some(&b'{') {
            return Err(bad("not an object"));
        }
        at = skip_ws(b, at + 1);
        if b.get(at) == Some(&b'}') {
            at += 1;
        } else {
            loop {
                let (k, next) = string(s, at)?;
                at = skip_ws(b, next);
                if b.get(at) != Some(&b':') {
                    return Err(bad(format!("expected ':' at byte {at}")));
                }
                at = skip_ws(b, at + 1);
                let (v, next) = string(s, at)?;
                out.push((k, v));
                at = skip_ws(b, next);
                match b.get(at) {
                    Some(b',') => at = skip_ws(b, at + 1),
                    Some(b'}') => {
                        at += 1;
                        break;
                    }
                    _ => return Err(bad(format!("expected ',' or '}}' at byte {at}"))),
                }
            }
        }
        at = skip_ws(b, at);
    }
    if at != b.len() {
        return Err(bad(format!("trailing characters at byte {at}")));
    }
    // Stable: of equal keys the last stays last, and only it is kept.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let mut i = 0;
    while i + 1 < out.len() {
        if out[i].0 == out[i + 1].0 {
            out.remove(i);
        } else {
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn owned(text: &[u8]) -> Option<BTreeMap<String, String>> {
        pairs(text).ok().map(|p| {
            p.into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
    }

    #[test]
    fn reads_what_postgres_prints() {
        let text = br#"{"x-auth-id": "a1", "component_name": "monoctl", "x-auth-email": "ad\"m\u00e9n@x\n"}"#;
        let p = pairs(text).expect("valid");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["component_name", "x-auth-email", "x-auth-id"]);
        assert_eq!(p[1].1, "ad\"mén@x\n");
        assert!(matches!(p[0].1, Cow::Borrowed(_)));
        assert!(pairs(b"null").expect("null").is_empty());
        assert!(pairs(b" {} ").expect("empty").is_empty());
        assert_eq!(owned(br#"{"a":"1","a":"2"}"#).expect("dup")["a"], "2");
        for wrong in [
            &br#"{"a": 1}"#[..],
            br#"{"a": null}"#,
            br#"["a"]"#,
            br#"{"a": "b"} x"#,
            br#"{"a": "b",}"#,
            br#"{"a" "b"}"#,
            b"{\"a\": \"b\x01\"}",
            b"{\"a\": \"\xff\"}",
            br#"{"a": "\ud800"}"#,
            b"",
            br#"{"a": "b""#,
        ] {
            assert!(pairs(wrong).is_err(), "{}", String::from_utf8_lossy(wrong));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Any map, written by serde_json or in PostgreSQL's layout, reads back equal.
        #[test]
        fn reads_any_map(map in proptest::collection::btree_map("\\PC{0,10}|[\\x00-\\x1f\"\\\\]{0,4}", "\\PC{0,16}|[\\x00-\\x1f\"\\\\/]{0,4}", 0..6)) {
            let compact = serde_json::to_vec(&map).expect("json");
            prop_assert_eq!(owned(&compact), Some(map.clone()));
            let spaced = serde_json::to_string_pretty(&map).expect("json");
            prop_assert_eq!(owned(spaced.as_bytes()), Some(map.clone()));
        }

        /// The eight-bytes-at-a-time scan stops where a byte-by-byte one does, wherever the
        /// stopping byte lies in its word and whatever bytes (non-ASCII too) precede it.
        #[test]
        fn string_end_is_the_first_special_byte(b in proptest::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xff, 0x20u8..0x7f, 0x20u8..0x7f], 0..40), from in 0usize..45) {
            let naive = (from..b.len()).find(|&i| b[i] == b'"' || b[i] == b'\\' || b[i] < 0x20).unwrap_or(b.len());
            prop_assert_eq!(string_end(&b, from), naive);
        }

        /// On any text it accepts and rejects what serde_json does, with the same pairs.
        #[test]
        fn agrees_with_serde_json(text in "[{}\":, a-c\\\\u0-9\\x01\\n]{0,24}|\\{\"[a\\\\\"]{0,4}\": ?\"[\\\\ud83dce0a-f\"]{0,14}\"\\}") {
            let ours = owned(text.as_bytes());
            let theirs = serde_json::from_str::<BTreeMap<String, String>>(&text).ok();
            if text.trim() == "null" {
                prop_assert_eq!(ours, Some(BTreeMap::new()));
            } else {
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
