//! The file record: what a user gets back from an upload and what `list --json` prints.

use serde::{Deserialize, Serialize};

use crate::format::digest::Sha256;
use crate::format::id::Id;
use crate::format::names::FileKey;

/// One version of one file. Serialized with exactly the keys of the CLI contract, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    /// The version's id (unique in the store).
    pub id: Id,
    /// Namespace.
    pub namespace: String,
    /// Project.
    pub project: String,
    /// Experiment.
    pub experiment: String,
    /// The prefix: `/models`, root `/`.
    pub path: String,
    /// File name.
    pub filename: String,
    /// 1 for the first upload of this path, then 2, 3, ...
    pub version: u32,
    /// Size of the file (bytes).
    pub size_bytes: u64,
    /// SHA-256 of the file.
    pub checksum: Sha256,
    /// MIME type guessed from the file name.
    pub content_type: String,
    /// Description given at upload (or by an update).
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// A JSON object, or null.
    pub metadata: serde_json::Value,
    /// When it was uploaded (ISO-8601 UTC with microseconds).
    pub uploaded_at: String,
    /// When its record last changed (upload, update or delete).
    pub updated_at: String,
    /// When it was deleted, if it was (soft delete: `gc` reclaims the bytes).
    pub deleted_at: Option<String>,
    /// Bytes this upload added to the store after dedup and compression.
    pub new_bytes: u64,
}

impl FileRecord {
    /// The path this is a version of.
    pub fn key(&self) -> FileKey {
        FileKey {
            namespace: self.namespace.clone(),
            project: self.project.clone(),
            experiment: self.experiment.clone(),
            path: self.path.clone(),
            filename: self.filename.clone(),
        }
    }

    /// `/a/b/name` (or `/name` at the root).
    pub fn full_path(&self) -> String {
        crate::format::names::join(&self.path, &self.filename)
    }

    /// Was this version deleted?
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

/// A content type from the file name; `application/octet-stream` when unknown.
pub fn content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "npy" | "npz" | "pt" | "pth" | "ckpt" | "bin" | "safetensors" | "onnx" | "h5" | "pkl" => {
            "application/octet-stream"
        }
        _ => "application/octet-stream",
    }
}

/// Check user metadata: null or a JSON object, at most 64 KiB serialized and 32 levels deep.
pub fn check_metadata(v: &serde_json::Value) -> crate::Result<()> {
    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let shown = || {
        let s = v.to_string();
        if s.len() > 80 {
            format!("{}...", &s[..s.floor_char_boundary(80)])
        } else {
            s
        }
    };
    if !(v.is_object() || v.is_null()) {
        return Err(crate::Error::invalid(
            "metadata",
            shown(),
            "must be a JSON object",
        ));
    }
    if depth(v) > 32 {
        return Err(crate::Error::invalid(
            "metadata",
            shown(),
            "is nested deeper than 32 levels",
        ));
    }
    if v.to_string().len() > 64 * 1024 {
        return Err(crate::Error::invalid(
            "metadata",
            shown(),
            "is larger than 64 KiB",
        ));
    }
    Ok(())
}

/// Check tags: non-empty, no control characters, at most 256 bytes each, at most 256 of them.
pub fn check_tags(tags: &[String]) -> crate::Result<()> {
    if tags.len() > 256 {
        return Err(crate::Error::invalid(
            "tags",
            format!("{} tags", tags.len()),
            "at most 256",
        ));
    }
    for t in tags {
        if t.is_empty() || t.len() > 256 || t.chars().any(char::is_control) {
            return Err(crate::Error::invalid(
                "tag",
                t.clone(),
                "must be 1-256 bytes without control characters",
            ));
        }
    }
    Ok(())
}

/// The highest version number a path can reach: numbers stay far from `u32::MAX`, so
/// arithmetic on them cannot wrap, whatever a pulled record claims.
pub const MAX_VERSION: u32 = i32::MAX as u32;
/// Longest description (bytes).
pub const MAX_DESCRIPTION: usize = 64 * 1024;

/// Check a description: at most `MAX_DESCRIPTION` bytes.
pub fn check_description(d: &str) -> crate::Result<()> {
    if d.len() > MAX_DESCRIPTION {
        return Err(crate::Error::invalid(
            "description",
            format!("{} bytes", d.len()),
            "is larger than 64 KiB",
        ));
    }
    Ok(())
}

/// A timestamp from outside: as ml-dash writes them (`format::time::is_iso_utc`).
#[cfg(feature = "remote")]
fn check_timestamp(what: &'static str, t: &str) -> crate::Result<()> {
    if !crate::format::time::is_iso_utc(t) {
        return Err(crate::Error::invalid(
            what,
            t,
            "is not an ISO-8601 timestamp",
        ));
    }
    Ok(())
}

/// The highest version number a pulled manifest or delete event may name. An honest store gets
/// there only after a billion uploads of one path; a remote naming a higher number (up to
/// `MAX_VERSION`, which uploads may reach) would leave this store no number for the next upload
/// of that path, for good: the next number is one past the highest version or delete seen.
#[cfg(feature = "remote")]
pub const MAX_PULLED_VERSION: u32 = 1 << 30;

#[cfg(feature = "remote")]
fn check_pulled_version(v: u32) -> crate::Result<()> {
    if v == 0 || v > MAX_PULLED_VERSION {
        return Err(crate::Error::invalid(
            "version",
            v.to_string(),
            "must be between 1 and 1073741824 in a pulled record (higher numbers would leave \
             no room for uploads)",
        ));
    }
    Ok(())
}

/// An id made by another machine must not lie far in the future (ids are time-ordered and
/// every later id of this store is made after it): a day of clock skew is allowed.
#[cfg(feature = "remote")]
fn check_foreign_id(what: &'static str, id: Id) -> crate::Result<()> {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "milliseconds since 1970 fit a u64 until the year 584 million"
    )]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if id.millis() > now + 86_400_000 {
        return Err(crate::Error::invalid(
            what,
            id.to_string(),
            "lies more than a day in the future",
        ));
    }
    Ok(())
}

#[cfg(feature = "remote")]
fn check_key(key: &FileKey) -> crate::Result<()> {
    for (what, s) in [
        ("namespace", &key.namespace),
        ("project", &key.project),
        ("experiment", &key.experiment),
        ("file name", &key.filename),
    ] {
        crate::format::names::segment(what, s)?;
    }
    if crate::format::names::prefix(&key.path)? != key.path {
        return Err(crate::Error::invalid(
            "prefix",
            key.path.clone(),
            "is not normalized",
        ));
    }
    Ok(())
}

/// Check a manifest that comes from outside the store (a pull) as strictly as an upload
/// checks its arguments: names, version number, tags, metadata, description, content type,
/// timestamps, ids, chunk lengths.
#[cfg(feature = "remote")]
pub fn check_pulled_manifest(m: &crate::format::manifest::Manifest) -> crate::Result<()> {
    let r = &m.record;
    check_foreign_id("version id", r.id)?;
    check_key(&r.key())?;
    check_pulled_version(r.version)?;
    check_tags(&r.tags)?;
    check_metadata(&r.metadata)?;
    if let Some(d) = &r.description {
        check_description(d)?;
    }
    if r.content_type.is_empty()
        || r.content_type.len() > 255
        || r.content_type.chars().any(char::is_control)
    {
        return Err(crate::Error::invalid(
            "content type",
            r.content_type.clone(),
            "must be 1-255 bytes without control characters",
        ));
    }
    check_timestamp("upload time", &r.uploaded_at)?;
    check_timestamp("update time", &r.updated_at)?;
    if let Some(d) = &r.deleted_at {
        return Err(crate::Error::invalid(
            "deletion time",
            d.clone(),
            "a manifest describes a version as uploaded, never deleted",
        ));
    }
    if let Some((c, len)) = m
        .chunks
        .iter()
        .find(|(_, len)| *len == 0 || *len as usize > crate::format::chunker::MAX_CHUNK_LIMIT)
    {
        return Err(crate::Error::invalid(
            "chunk length",
            format!("{c}: {len}"),
            "must be between 1 byte and 16 MiB",
        ));
    }
    Ok(())
}

/// Check an event that comes from outside the store (a pull) as strictly as `delete` and
/// `update` check their arguments.
#[cfg(feature = "remote")]
pub fn check_pulled_event(e: &crate::format::manifest::Event) -> crate::Result<()> {
    use crate::format::manifest::Event;
    check_foreign_id("event id", e.id())?;
    match e {
        Event::Delete {
            up_to_version, at, ..
        } => {
            check_key(&e.file_key().expect("a delete names a path"))?;
            check_pulled_version(*up_to_version)?;
            check_timestamp("deletion time", at)
        }
        Event::Update {
            description,
            tags,
            metadata,
            at,
            ..
        } => {
            if let Some(Some(d)) = description {
                check_description(d)?;
            }
            if let Some(t) = tags {
                check_tags(t)?;
            }
            if let Some(m) = metadata {
                check_metadata(m)?;
            }
            check_timestamp("update time", at)
        }
        Event::DeleteVersions {
            version_ids,
            reason,
            at,
            ..
        } => {
            if version_ids.is_empty()
                || version_ids.len() > crate::format::manifest::MAX_EVENT_VERSIONS
            {
                return Err(crate::Error::invalid(
                    "deleted versions",
                    version_ids.len().to_string(),
                    "must name 1 to 100000 versions",
                ));
            }
            for id in version_ids {
                check_foreign_id("version id", *id)?;
            }
            check_description(reason)?;
            check_timestamp("deletion time", at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_rules() {
        assert!(check_metadata(&serde_json::json!({"a": 1})).is_ok());
        assert!(check_metadata(&serde_json::Value::Null).is_ok());
        assert!(check_metadata(&serde_json::json!([1])).is_err());
        assert!(check_metadata(&serde_json::json!("x")).is_err());
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "a": deep });
        }
        assert!(check_metadata(&deep).is_err());
        let big = serde_json::json!({ "a": "x".repeat(70_000) });
        assert!(check_metadata(&big).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("config.json"), "application/json");
        assert_eq!(content_type("loss.PNG"), "image/png");
        assert_eq!(content_type("model.pth"), "application/octet-stream");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
