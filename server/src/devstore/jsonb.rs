//! Normalises JSON text the way PostgreSQL's `jsonb` returns it.
//!
//! Monoskope stores event data and metadata in `jsonb` columns (docs/MONOSKOPE.md §2.1,
//! §3.2): input must be one valid JSON value in UTF-8, `\u0000` is refused, and reads return the
//! database's normalised text — object keys ordered shorter-first then bytewise, duplicate keys
//! collapsed to the last one, `": "` and `", "` separators, escapes of non-ASCII characters
//! decoded to UTF-8, numbers in `numeric` notation (exponents expanded). The embedded EventStore
//! stores that normalised text, so `Retrieve` answers as the real store does.

use std::fmt::Write as _;

/// Why a byte string is not storable as `jsonb`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input syntax for type json: {0}")]
pub struct InvalidJson(pub &'static str);

enum Node {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

const MAX_DEPTH: usize = 512;

/// How object keys are ordered in the stored form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyOrder {
    /// PostgreSQL's `jsonb`: shorter keys first, then bytewise.
    #[default]
    Postgres,
    /// Bytewise, as CockroachDB's `JSONB` orders them (docs/MONOSKOPE.md §3.4).
    Bytewise,
}

/// Parses `input` as one JSON value and renders it as PostgreSQL's `jsonb` output.
pub fn normalize(input: &[u8]) -> Result<String, InvalidJson> {
    normalize_with(input, KeyOrder::Postgres)
}

/// The JSON value of `input` in a form that is equal exactly when the values are: keys sorted
/// bytewise, numbers without trailing fractional zeros (`1.50` and `1.5`, `1.0` and `1`). What a
/// drill compares, so stores that order keys differently (PostgreSQL, CockroachDB) agree.
pub fn canonical(input: &[u8]) -> Result<String, InvalidJson> {
    let node = reorder(plain_numbers(parse(input)?), KeyOrder::Bytewise);
    let mut out = String::with_capacity(input.len());
    render(&node, &mut out);
    Ok(out)
}

/// `input` as exactly one JSON value (PostgreSQL's jsonb rules: UTF-8, no `\u0000`, nothing after
/// the value but whitespace), keys deduplicated and in jsonb's order.
fn parse(input: &[u8]) -> Result<Node, InvalidJson> {
    let text = std::str::from_utf8(input).map_err(|_| InvalidJson("not UTF-8"))?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    let node = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(InvalidJson("trailing characters after the JSON value"));
    }
    Ok(node)
}

/// Numbers without trailing fractional zeros.
fn plain_numbers(node: Node) -> Node {
    match node {
        Node::Number(n) if n.contains('.') && !n.contains(['e', 'E']) => {
            let t = n.trim_end_matches('0').trim_end_matches('.');
            Node::Number(if t == "-0" { "0".into() } else { t.to_string() })
        }
        Node::Array(v) => Node::Array(v.into_iter().map(plain_numbers).collect()),
        Node::Object(v) => {
            Node::Object(v.into_iter().map(|(k, v)| (k, plain_numbers(v))).collect())
        }
        other => other,
    }
}

/// `node` with every object's keys in `order` (keys are unique already).
fn reorder(node: Node, order: KeyOrder) -> Node {
    match node {
        Node::Array(v) => Node::Array(v.into_iter().map(|n| reorder(n, order)).collect()),
        Node::Object(v) => {
            let mut v: Vec<(String, Node)> =
                v.into_iter().map(|(k, n)| (k, reorder(n, order))).collect();
            if order == KeyOrder::Bytewise {
                v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            }
            Node::Object(v)
        }
        other => other,
    }
}

/// [`normalize`] with keys in `order`.
pub fn normalize_with(input: &[u8], order: KeyOrder) -> Result<String, InvalidJson> {
    let node = reorder(parse(input)?, order);
    let mut out = String::with_capacity(input.len() + input.len() / 8);
    render(&node, &mut out);
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, InvalidJson> {
        if depth > MAX_DEPTH {
            return Err(InvalidJson("nesting too deep"));
        }
        match self.peek() {
            None => Err(InvalidJson("unexpected end of input")),
            Some(b'n') if self.eat(b"null") => Ok(Node::Null),
            Some(b't') if self.eat(b"true") => Ok(Node::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(Node::Bool(false)),
            Some(b'"') => Ok(Node::Str(self.string()?)),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Node::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Node::Array(items));
                        }
                        _ => return Err(InvalidJson("expected ',' or ']'")),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut fields: Vec<(String, Node)> = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Node::Object(fields));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(InvalidJson("expected a string key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(InvalidJson("expected ':'"));
                    }
                    self.i += 1;
                    self.ws();
                    let v = self.value(depth + 1)?;
                    fields.push((key, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Node::Object(dedup_and_sort(fields)));
                        }
                        _ => return Err(InvalidJson("expected ',' or '}'")),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(InvalidJson("unexpected character")),
        }
    }

    fn string(&mut self) -> Result<String, InvalidJson> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && !matches!(self.s[self.i], b'"' | b'\\' | 0..=0x1f) {
                self.i += 1;
            }
            // The input is valid UTF-8 and we stopped at ASCII bytes, so this slice is too.
            out.push_str(
                std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| InvalidJson("not UTF-8"))?,
            );
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or(InvalidJson("unexpected end of input"))?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let ch = if (0xD800..0xDC00).contains(&hi) {
                                if !self.eat(b"\\u") {
                                    return Err(InvalidJson("unpaired surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(InvalidJson("unpaired surrogate"));
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(InvalidJson("unpaired surrogate"));
                            } else if hi == 0 {
                                // PostgreSQL: "unsupported Unicode escape sequence" (\u0000).
                                return Err(InvalidJson("\\u0000 cannot be converted to text"));
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(ch.ok_or(InvalidJson("invalid unicode escape"))?);
                        }
                        _ => return Err(InvalidJson("invalid escape")),
                    }
                }
                Some(_) => return Err(InvalidJson("control character in string")),
                None => return Err(InvalidJson("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, InvalidJson> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or(InvalidJson("short unicode escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| InvalidJson("invalid unicode escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| InvalidJson("invalid unicode escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn number(&mut self) -> Result<Node, InvalidJson> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return Err(InvalidJson("invalid number")),
        }
        let int_digits = &self.s[int_start..self.i];
        let mut frac_digits: &[u8] = &[];
        if self.peek() == Some(b'.') {
            self.i += 1;
            let fs = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if fs == self.i {
                return Err(InvalidJson("invalid number"));
            }
            frac_digits = &self.s[fs..self.i];
        }
        let mut exp: i64 = 0;
        let mut has_exp = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            has_exp = true;
            self.i += 1;
            let eneg = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let es = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if es == self.i {
                return Err(InvalidJson("invalid number"));
            }
            let e: i64 = std::str::from_utf8(&self.s[es..self.i])
                .ok()
                .and_then(|t| t.parse().ok())
                .filter(|e: &i64| *e <= 100_000)
                .ok_or(InvalidJson("number out of range"))?;
            exp = if eneg { -e } else { e };
        }
        let text = if has_exp {
            numeric_text(neg, int_digits, frac_digits, exp)
        } else {
            let t = std::str::from_utf8(&self.s[start..self.i])
                .map_err(|_| InvalidJson("invalid number"))?;
            if is_zero(int_digits, frac_digits) && neg {
                t[1..].to_string() // numeric has no negative zero
            } else {
                t.to_string()
            }
        };
        Ok(Node::Number(text))
    }
}

fn is_zero(int: &[u8], frac: &[u8]) -> bool {
    int.iter().chain(frac).all(|d| *d == b'0')
}

/// Renders `digits × 10^exp` in plain decimal notation with the scale `numeric` keeps
/// (`max(0, fraction digits − exponent)`), as PostgreSQL prints a `numeric` parsed from
/// exponent notation.
fn numeric_text(neg: bool, int: &[u8], frac: &[u8], exp: i64) -> String {
    let digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let scale = (frac.len() as i64 - exp).max(0);
    // Position of the decimal point counted from the left of `digits`.
    let point = int.len() as i64 + exp;
    let mut intpart = String::new();
    let mut fracpart = String::new();
    if point <= 0 {
        intpart.push('0');
        fracpart.extend(std::iter::repeat_n('0', (-point) as usize));
        fracpart.extend(digits.iter().map(|d| *d as char));
    } else if point as usize >= digits.len() {
        intpart.extend(digits.iter().map(|d| *d as char));
        intpart.extend(std::iter::repeat_n('0', point as usize - digits.len()));
    } else {
        intpart.extend(digits[..point as usize].iter().map(|d| *d as char));
        fracpart.extend(digits[point as usize..].iter().map(|d| *d as char));
    }
    let trimmed = intpart.trim_start_matches('0');
    let intpart = if trimmed.is_empty() { "0" } else { trimmed };
    let mut frac: String = fracpart.chars().take(scale as usize).collect();
    while (frac.len() as i64) < scale {
        frac.push('0');
    }
    let zero = intpart == "0" && frac.chars().all(|c| c == '0');
    let mut out = String::new();
    if neg && !zero {
        out.push('-');
    }
    out.push_str(intpart);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
    out
}

/// jsonb keeps the last of duplicate keys and orders keys by length, then bytewise.
fn dedup_and_sort(fields: Vec<(String, Node)>) -> Vec<(String, Node)> {
    let mut fields: Vec<(usize, String, Node)> = fields
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (i, k, v))
        .collect();
    // Stable sort by key, later entries after earlier ones, then keep the last of each key.
    fields.sort_by(|a, b| (a.1.len(), a.1.as_bytes(), a.0).cmp(&(b.1.len(), b.1.as_bytes(), b.0)));
    let mut out: Vec<(String, Node)> = Vec::with_capacity(fields.len());
    for (_, k, v) in fields {
        if out.last().is_some_and(|(lk, _)| *lk == k) {
            out.pop();
        }
        out.push((k, v));
    }
    out
}

fn render(node: &Node, out: &mut String) {
    match node {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Number(n) => out.push_str(n),
        Node::Str(s) => render_str(s, out),
        Node::Array(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(it, out);
            }
            out.push(']');
        }
        Node::Object(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_str(k, out);
                out.push_str(": ");
                render(v, out);
            }
            out.push('}');
        }
    }
}

/// PostgreSQL's `escape_json`: quotes, backslashes and control characters only.
fn render_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::{canonical, normalize, normalize_with, KeyOrder};

    fn n(s: &str) -> String {
        normalize(s.as_bytes()).expect("valid json")
    }

    #[test]
    fn orders_keys_shorter_first_then_bytewise_and_keeps_last_duplicate() {
        assert_eq!(
            n(r#"{"bb":1,"a":2,"c":3,"a":4}"#),
            r#"{"a": 4, "c": 3, "bb": 1}"#
        );
    }

    #[test]
    fn separators_and_nesting() {
        assert_eq!(
            n(" [1,{\"x\":[true,null]} ,\"s\"] "),
            r#"[1, {"x": [true, null]}, "s"]"#
        );
        assert_eq!(n("{}"), "{}");
        assert_eq!(n("[]"), "[]");
    }

    #[test]
    fn decodes_unicode_escapes_and_keeps_needed_escapes() {
        assert_eq!(
            n(r#""caf\u00e9 \ud83d\ude00 \/ \" \n""#),
            "\"café 😀 / \\\" \\n\""
        );
        assert_eq!(n("\"\\u001f\""), "\"\\u001f\"");
    }

    #[test]
    fn canonical_forms_are_equal_exactly_when_the_values_are() {
        let c = |s: &str| canonical(s.as_bytes()).expect("json");
        assert_eq!(c(r#"{"b":1,"aa":2.50}"#), c(r#"{"aa": 2.5, "b": 1.0}"#));
        assert_eq!(c(r#"[{"zz":0,"y":-0.0}]"#), c(r#"[{"y":0,"zz":0}]"#));
        assert_ne!(c(r#"{"a":2.51}"#), c(r#"{"a":2.5}"#));
        assert_ne!(c(r#"{"a":"1"}"#), c(r#"{"a":1}"#));
        assert_ne!(c("[1,2]"), c("[2,1]"));
        let bytewise = normalize_with(br#"{"b":1,"aa":2}"#, KeyOrder::Bytewise).expect("json");
        assert_eq!(bytewise, r#"{"aa": 2, "b": 1}"#);
        assert_eq!(
            normalize(br#"{"b":1,"aa":2}"#).expect("json"),
            r#"{"b": 1, "aa": 2}"#
        );
    }

    #[test]
    fn numbers_as_numeric() {
        assert_eq!(n("1.50"), "1.50");
        assert_eq!(n("1e2"), "100");
        assert_eq!(n("1.5E-3"), "0.0015");
        assert_eq!(n("-0"), "0");
        assert_eq!(n("12.5e1"), "125");
        assert_eq!(n("-2.50e-1"), "-0.250");
    }

    #[test]
    fn rejects_what_jsonb_rejects() {
        for bad in [
            "",
            "{",
            "[1,]",
            "nul",
            "\"\\u0000\"",
            "01",
            "1.",
            "{\"a\" 1}",
            "1 2",
            "\"\u{1}\"",
        ] {
            assert!(
                normalize(bad.as_bytes()).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(normalize(&[0xff, 0xfe]).is_err());
    }
}
