//! The gateway's public key, as the gateway publishes it: a PEM certificate, a PEM public key
//! (SubjectPublicKeyInfo or PKCS#1), or a JWK. Every form becomes the same [`VerifyingKey`] with
//! the key id the gateway puts in its tokens' `kid`: the lowercase hex SHA-256 of the
//! DER-encoded SubjectPublicKeyInfo.

use anyhow::{bail, Context};
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use sha2::{Digest, Sha256};

/// DER of the rsaEncryption algorithm identifier (OID 1.2.840.113549.1.1.1 with NULL params).
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// One RSA public key that verifies the gateway's RS256 tokens.
#[derive(Clone)]
pub struct VerifyingKey {
    /// Key id: hex SHA-256 of the SubjectPublicKeyInfo (the gateway's `kid`).
    pub kid: String,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .finish()
    }
}

/// One DER element: tag, content, the whole element, and what follows it.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
    rest: &'a [u8],
}

fn tlv(b: &[u8]) -> anyhow::Result<Tlv<'_>> {
    let (&tag, r) = b.split_first().context("DER: unexpected end")?;
    let (&l0, r) = r.split_first().context("DER: unexpected end")?;
    let (len, r) = if l0 < 0x80 {
        (l0 as usize, r)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || r.len() < n {
            bail!("DER: bad length");
        }
        (
            r[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize),
            &r[n..],
        )
    };
    if r.len() < len {
        bail!("DER: element longer than its input");
    }
    let header = b.len() - r.len();
    Ok(Tlv {
        tag,
        content: &r[..len],
        whole: &b[..header + len],
        rest: &r[len..],
    })
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        v.push(0x80 | bytes.len() as u8);
        v.extend(bytes);
    }
    v.extend_from_slice(content);
    v
}

/// The SubjectPublicKeyInfo inside an X.509 certificate.
fn spki_of_certificate(cert: &[u8]) -> anyhow::Result<Vec<u8>> {
    let c = tlv(cert)?;
    let tbs = tlv(c.content)?;
    let mut r = tbs.content;
    let first = tlv(r)?;
    if first.tag == 0xa0 {
        r = first.rest; // explicit version
    }
    // serial, signature algorithm, issuer, validity, subject
    for _ in 0..5 {
        r = tlv(r)?.rest;
    }
    Ok(tlv(r)?.whole.to_vec())
}

/// The key of a SubjectPublicKeyInfo; refuses anything but RSA (the gateway signs RS256 only).
pub fn from_spki(spki: &[u8]) -> anyhow::Result<VerifyingKey> {
    let s = tlv(spki)?;
    let alg = tlv(s.content)?;
    let oid = tlv(alg.content)?;
    if oid.tag != 0x06 || oid.content != RSA_OID {
        bail!("the key is not an RSA key; the gateway signs RS256 only");
    }
    let bits = tlv(alg.rest)?;
    if bits.tag != 0x03 || bits.content.first() != Some(&0) {
        bail!("malformed SubjectPublicKeyInfo");
    }
    Ok(VerifyingKey {
        kid: hex(&Sha256::digest(s.whole)),
        key: DecodingKey::from_rsa_der(&bits.content[1..]),
    })
}

/// The key of a PKCS#1 RSAPublicKey.
fn from_pkcs1(pkcs1: &[u8]) -> anyhow::Result<VerifyingKey> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut body = RSA_ALG_ID.to_vec();
    body.extend(der(0x03, &bits));
    from_spki(&der(0x30, &body))
}

fn integer(unsigned_be: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let i = unsigned_be
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(unsigned_be.len());
        &unsigned_be[i..]
    };
    let mut v = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(trimmed);
    der(0x02, &v)
}

/// The key of an RSA JWK (`kty` RSA, `n`, `e` in base64url).
pub fn from_jwk(jwk: &serde_json::Value) -> anyhow::Result<VerifyingKey> {
    let field = |k: &str| -> anyhow::Result<Vec<u8>> {
        let v = jwk
            .get(k)
            .and_then(|v| v.as_str())
            .with_context(|| format!("JWK has no {k:?}"))?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .with_context(|| format!("JWK {k:?} is not base64url"))
    };
    match jwk.get("kty").and_then(|v| v.as_str()) {
        Some("RSA") => {}
        other => bail!("JWK kty {other:?} is not RSA; the gateway signs RS256 only"),
    }
    if let Some(alg) = jwk.get("alg").and_then(|v| v.as_str()) {
        if alg != "RS256" {
            bail!("JWK alg {alg:?} is not RS256");
        }
    }
    let mut seq = integer(&field("n")?);
    seq.extend(integer(&field("e")?));
    let mut k = from_pkcs1(&der(0x30, &seq))?;
    if let Some(kid) = jwk.get("kid").and_then(|v| v.as_str()) {
        k.kid = kid.to_string();
    }
    Ok(k)
}

/// Parses a key file's contents: PEM (CERTIFICATE, PUBLIC KEY or RSA PUBLIC KEY) or a JWK.
pub fn parse(text: &str) -> anyhow::Result<VerifyingKey> {
    let t = text.trim_start();
    if t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t).context("not a JSON Web Key")?;
        return from_jwk(&v);
    }
    let (label, der) = pem(t)?;
    match label.as_str() {
        "CERTIFICATE" => from_spki(&spki_of_certificate(&der)?),
        "PUBLIC KEY" => from_spki(&der),
        "RSA PUBLIC KEY" => from_pkcs1(&der),
        l if l.contains("PRIVATE KEY") => {
            bail!("this is a private key; give the gateway's public key or certificate")
        }
        l => bail!("PEM block {l:?} is not a certificate or public key"),
    }
}

/// The first PEM block: its label and decoded bytes.
fn pem(text: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let begin = text
        .find("-----BEGIN ")
        .context("neither PEM nor a JSON Web Key")?;
    let after = &text[begin + 11..];
    let label_end = after.find("-----").context("malformed PEM header")?;
    let label = after[..label_end].to_string();
    let body = &after[label_end + 5..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .context("PEM block has no END line")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("PEM body is not base64")?;
    Ok((label, der))
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_round_trip() {
        for n in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let e = der(0x04, &vec![7u8; n]);
            let t = tlv(&e).expect("parse");
            assert_eq!(t.content.len(), n);
            assert!(t.rest.is_empty());
        }
    }

    #[test]
    fn refuses_garbage_and_private_keys() {
        assert!(parse("hello").is_err());
        let e = parse("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .expect_err("private key");
        assert!(e.to_string().contains("private key"), "{e}");
        assert!(parse(r#"{"kty":"EC","crv":"P-256"}"#).is_err());
    }
}
