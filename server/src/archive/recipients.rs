//! Public-key (write-only) protection through the age format's X25519 recipients (the `age`
//! crate): a service that holds only recipients can write archives it cannot read; reading takes
//! one of the matching identities. Key ids: `age-` and the first 8 bytes (hex) of SHA-256 of the
//! recipient's text (`age1…`), for a recipient and for the identity that opens it alike.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::error::ArchiveError;

fn id_of(recipient_text: &str) -> String {
    let d = Sha256::digest(recipient_text.as_bytes());
    format!(
        "age-{}",
        d[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A recipient (an X25519 public key, `age1…`).
#[derive(Clone)]
pub struct Recipient {
    pub(crate) inner: age::x25519::Recipient,
    id: String,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient").field("id", &self.id).finish()
    }
}

impl Recipient {
    /// Parses `age1…`.
    pub fn parse(text: &str) -> Result<Self, ArchiveError> {
        let inner = age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
            ArchiveError::InvalidKey(format!("not an age X25519 recipient (age1…): {e}"))
        })?;
        Ok(Self {
            id: id_of(&inner.to_string()),
            inner,
        })
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The recipient as text (`age1…`), for a recipients file.
    pub fn to_text(&self) -> String {
        self.inner.to_string()
    }
}

/// An identity (an X25519 private key, `AGE-SECRET-KEY-1…`). Never printed.
#[derive(Clone)]
pub struct Identity {
    pub(crate) inner: age::x25519::Identity,
    id: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity.
    pub fn generate() -> Self {
        Self::from_inner(age::x25519::Identity::generate())
    }

    fn from_inner(inner: age::x25519::Identity) -> Self {
        Self {
            id: id_of(&inner.to_public().to_string()),
            inner,
        }
    }

    /// The id of the recipient this identity opens.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its recipient (public key).
    pub fn recipient(&self) -> Recipient {
        Recipient::parse(&self.inner.to_public().to_string())
            .expect("an identity's own public key parses")
    }

    /// The file an identity is kept in, as the `age` tool writes and reads it.
    pub fn to_file_text(&self, created: &str) -> String {
        use age::secrecy::ExposeSecret;
        format!(
            "# created: {created}\n# public key: {}\n{}\n",
            self.inner.to_public(),
            self.inner.to_string().expose_secret()
        )
    }
}

/// Parses a file of recipients: one `age1…` a line; blank lines and lines starting with `#`
/// are ignored. An empty file is an error (it would encrypt to nobody).
pub fn parse_recipients(text: &str) -> Result<Vec<Recipient>, ArchiveError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let r = Recipient::parse(l).map_err(|e| {
            ArchiveError::InvalidKey(format!("line {} of the recipient file: {}", i + 1, why(e)))
        })?;
        if !out.iter().any(|o: &Recipient| o.id == r.id) {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(ArchiveError::InvalidKey(
            "the recipient file lists no recipient".into(),
        ));
    }
    Ok(out)
}

/// Parses an identity file: `AGE-SECRET-KEY-1…` lines; blank lines and `#` comments ignored.
/// An empty file is an error.
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, ArchiveError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let inner = age::x25519::Identity::from_str(l).map_err(|_| {
            ArchiveError::InvalidKey(format!(
                "line {} of the identity file: not an age X25519 identity (AGE-SECRET-KEY-1…)",
                i + 1
            ))
        })?;
        out.push(Identity::from_inner(inner));
    }
    if out.is_empty() {
        return Err(ArchiveError::InvalidKey(
            "the identity file holds no identity".into(),
        ));
    }
    Ok(out)
}

fn why(e: ArchiveError) -> String {
    match e {
        ArchiveError::InvalidKey(m) => m,
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_recipients_and_identities() {
        let a = Identity::generate();
        let b = Identity::generate();
        assert_eq!(a.id(), a.recipient().id());
        assert_ne!(a.id(), b.id());
        assert!(
            a.id().starts_with("age-") && a.id().len() == 20,
            "{}",
            a.id()
        );
        assert!(!format!("{a:?}").contains("AGE-SECRET-KEY"));
        let text = format!(
            "# operator\n{}\n\n# break-glass, offline\n{}\n{}\n",
            a.recipient().to_text(),
            b.recipient().to_text(),
            a.recipient().to_text()
        );
        let rs = parse_recipients(&text).expect("recipients");
        assert_eq!(rs.len(), 2, "duplicates once");
        assert_eq!(rs[0].id(), a.id());
        let ids = parse_identities(&a.to_file_text("2026-12-06T00:00:00Z")).expect("identities");
        assert_eq!(ids[0].id(), a.id());

        assert!(parse_recipients("# none\n\n").is_err());
        assert!(parse_identities("").is_err());
        let e = parse_recipients(&format!("{}\nage1nope\n", a.recipient().to_text()))
            .expect_err("bad line");
        assert!(
            e.to_string().contains("line 2 of the recipient file"),
            "{e}"
        );
        // A truncated identity file (half a key) is refused, naming the line.
        let file = a.to_file_text("x");
        let secret = file.lines().nth(2).expect("secret line");
        let e = parse_identities(&secret[..secret.len() / 2]).expect_err("truncated");
        assert!(e.to_string().contains("line 1 of the identity file"), "{e}");
        // An identity is not a recipient and the other way round.
        assert!(parse_recipients(secret).is_err());
        assert!(parse_identities(&a.recipient().to_text()).is_err());
    }
}
