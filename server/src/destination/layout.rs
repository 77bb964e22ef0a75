//! Where a backup's objects are under the destination's prefix, and how ids are made.
//!
//! ```text
//! <prefix>/backups/<id>.mbk             the archive (written first, streamed)
//! <prefix>/backups/<id>.mbk.keys        its key file: the data key's wraps (format 1.1)
//! <prefix>/backups/<id>.watermark       the watermark (an archive of aggregate versions)
//! <prefix>/backups/<id>.manifest.json   the manifest (written last: the backup is complete)
//! ```
//! Ids are `YYYYMMDDTHHMMSSmmmZ-<8 hex>`: they sort by creation time and are unique.

/// Folder of backups under the prefix.
pub const BACKUPS_DIR: &str = "backups/";
/// Extension of archives.
pub const ARCHIVE_EXT: &str = ".mbk";
/// Extension of manifests.
pub const MANIFEST_EXT: &str = ".manifest.json";

/// Key of a backup's archive.
pub fn archive_key(id: &str) -> String {
    format!("{BACKUPS_DIR}{id}{ARCHIVE_EXT}")
}

/// Extension of watermarks.
pub const WATERMARK_EXT: &str = ".watermark";

/// Key of a backup's watermark: for every aggregate, the highest version its chain holds.
pub fn watermark_key(id: &str) -> String {
    format!("{BACKUPS_DIR}{id}{WATERMARK_EXT}")
}

/// The backup id of a watermark key.
pub fn parse_watermark_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix(BACKUPS_DIR)?.strip_suffix(WATERMARK_EXT)?;
    valid_id(id).then_some(id)
}

/// Extension of an archive's key file.
pub const KEYS_EXT: &str = ".keys";

/// Key of the key file of the archive stored at `archive_key`.
pub fn keys_key(archive_key: &str) -> String {
    format!("{archive_key}{KEYS_EXT}")
}

/// The backup id of a key file's key (`backups/<id>.mbk.keys`).
pub fn parse_keys_key(key: &str) -> Option<&str> {
    let id = key
        .strip_prefix(BACKUPS_DIR)?
        .strip_suffix(KEYS_EXT)?
        .strip_suffix(ARCHIVE_EXT)?;
    valid_id(id).then_some(id)
}

/// Key of a backup's manifest.
pub fn manifest_key(id: &str) -> String {
    format!("{BACKUPS_DIR}{id}{MANIFEST_EXT}")
}

/// The backup id of an archive or manifest key, and whether it is the manifest.
pub fn parse_key(key: &str) -> Option<(&str, bool)> {
    let name = key.strip_prefix(BACKUPS_DIR)?;
    if let Some(id) = name.strip_suffix(MANIFEST_EXT) {
        return valid_id(id).then_some((id, true));
    }
    let id = name.strip_suffix(ARCHIVE_EXT)?;
    valid_id(id).then_some((id, false))
}

/// A new id for a backup created at `now`.
pub fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix: u32 = rand::random();
    format!("{}-{suffix:08x}", now.format("%Y%m%dT%H%M%S%3fZ"))
}

/// Whether `id` has the shape of a backup id (and so is safe inside an object key).
pub fn valid_id(id: &str) -> bool {
    id.len() == 28 && id_shaped(id)
}

/// Whether `p` can start a backup id (at least 6 characters, e.g. `20261206T16` or a whole
/// date): what operators type instead of the whole id.
pub fn valid_prefix(p: &str) -> bool {
    (6..28).contains(&p.len()) && id_shaped(p)
}

fn id_shaped(id: &str) -> bool {
    id.bytes().enumerate().all(|(i, b)| match i {
        8 => b == b'T',
        18 => b == b'Z',
        19 => b == b'-',
        20..=27 => b.is_ascii_hexdigit(),
        28.. => false,
        _ => b.is_ascii_digit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_parse_back() {
        let a = new_id(chrono::DateTime::from_timestamp(1_700_000_000, 5_000_000).expect("time"));
        let b = new_id(chrono::DateTime::from_timestamp(1_700_000_000, 6_000_000).expect("time"));
        assert!(a < b, "{a} < {b}");
        assert!(valid_id(&a), "{a}");
        assert_eq!(parse_key(&archive_key(&a)), Some((a.as_str(), false)));
        assert_eq!(parse_key(&manifest_key(&a)), Some((a.as_str(), true)));
        assert_eq!(parse_key("backups/../../etc.mbk"), None);
        assert_ne!(new_id(chrono::Utc::now()), new_id(chrono::Utc::now()));
    }
}
