//! Secrets inside URLs never reach a log, a record or an answer. Every URL the service takes
//! (Pushgateway, events database, catalog, S3 endpoint, gateway, JWKS) may carry a password
//! (`scheme://user:password@host`) or a secret query parameter (`?password=…`); what is shown
//! of it goes through [`url`], and every log line and error line goes through [`text`] as a
//! last net (the log writer applies it to each line).

use std::borrow::Cow;

/// What stands in for a removed secret.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets (libpq's `password` and `sslpassword`, tokens and
/// signatures of presigned URLs).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "sslpassword",
    "secret",
    "token",
    "access_token",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
];

/// A URL as it may be shown: without its password (the user stays) and without its query
/// (which may hold `password=`, `sslkey=` and the like).
pub fn url(u: &str) -> String {
    let no_query = u.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = match no_query.find("://") {
        Some(i) => (&no_query[..i + 3], &no_query[i + 3..]),
        None => ("", no_query),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or("");
            format!("{scheme}{user}@{}{path}", &authority[at + 1..])
        }
        None => no_query.to_string(),
    }
}

/// Whether `u` holds a password in its user information or its query.
pub fn has_password(u: &str) -> bool {
    text(u) != u
}

/// `s` with every password inside a URL's user information (`://user:password@`) and every
/// secret query parameter's value replaced by [`MASK`]. Borrowed when there was nothing to hide.
pub fn text(s: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // user information: ://USER:PASSWORD@HOST, the password up to the last '@' before the
        // authority ends
        if bytes[i..].starts_with(b"://") {
            let start = i + 3;
            let end = s[start..]
                .find(|c: char| {
                    c == '/'
                        || c == '?'
                        || c == '#'
                        || c.is_whitespace()
                        || "\"'<>`,;)]}".contains(c)
                })
                .map_or(s.len(), |n| start + n);
            if let Some(at) = s[start..end].rfind('@') {
                let at = start + at;
                if let Some(colon) = s[start..at].find(':') {
                    let colon = start + colon;
                    if colon + 1 < at {
                        let o = out.get_or_insert_with(String::new);
                        o.push_str(&s[copied..=colon]);
                        o.push_str(MASK);
                        copied = at;
                    }
                }
            }
            i = end.max(start);
            continue;
        }
        // a secret query parameter: [?&;]NAME=VALUE
        if matches!(bytes[i], b'?' | b'&' | b';' | b' ') {
            let name_start = i + 1;
            if let Some(eq) = s[name_start..].find('=') {
                let name = &s[name_start..name_start + eq];
                if SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                    let value_start = name_start + eq + 1;
                    let value_end = s[value_start..]
                        .find(|c: char| {
                            c == '&' || c == '#' || c.is_whitespace() || "\"',;".contains(c)
                        })
                        .map_or(s.len(), |n| value_start + n);
                    if value_end > value_start {
                        let o = out.get_or_insert_with(String::new);
                        o.push_str(&s[copied..value_start]);
                        o.push_str(MASK);
                        copied = value_end;
                    }
                    i = value_end.max(value_start);
                    continue;
                }
            }
        }
        i += 1;
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
    }
}

/// A writer that passes each write through [`text`]: the log subscriber writes one whole line
/// per call, so no URL is split between two writes.
pub struct Writer<W>(pub W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => self.0.write_all(text(s).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_user_information_and_queries_are_masked() {
        for (input, want) in [
            (
                "http://user:s3cr3t@push:9091/metrics/job/x",
                "http://user:***@push:9091/metrics/job/x",
            ),
            (
                "postgres://eventstore:pa:ss@db:26257/m8?sslmode=verify-full&password=s3cr3t",
                "postgres://eventstore:***@db:26257/m8?sslmode=verify-full&password=***",
            ),
            (
                "error: cannot reach \"https://a:b@jwks/keys\", retrying",
                "error: cannot reach \"https://a:***@jwks/keys\", retrying",
            ),
            ("url=http://u:p@h", "url=http://u:***@h"),
            (
                "no secrets http://u@h:1/x?sslmode=require",
                "no secrets http://u@h:1/x?sslmode=require",
            ),
            (
                "postgres://h/db?user=u&sslpassword=k",
                "postgres://h/db?user=u&sslpassword=***",
            ),
        ] {
            assert_eq!(text(input), want, "{input}");
        }
        assert!(matches!(text("plain line"), Cow::Borrowed(_)));
        assert!(has_password("postgres://u:p@h/db"));
        assert!(!has_password("postgres://u@h/db"));
    }

    #[test]
    fn url_keeps_the_user_and_drops_password_and_query() {
        assert_eq!(
            url("postgres://u:p@h:5432/db?sslmode=require&password=x"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(url("http://h:9091/"), "http://h:9091/");
        assert_eq!(url("u:p@h:9000"), "u@h:9000");
    }
}
