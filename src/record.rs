//! The file record: what a user gets back from an upload and what `list --json` prints.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::id::Id;
use crate::path::FileKey;

/// One version of one file. Serialized with exactly the keys of the CLI contract, in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    pub id: Id,
    pub namespace: String,
    pub project: String,
    pub experiment: String,
    /// The prefix: `/models`, root `/`.
    pub path: String,
    pub filename: String,
    /// 1 for the first upload of this path, then 2, 3, ...
    pub version: u32,
    pub size_bytes: u64,
    pub checksum: Sha256,
    pub content_type: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// A JSON object, or null.
    pub metadata: serde_json::Value,
    pub uploaded_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    /// Bytes this upload added to the store after dedup and compression.
    pub new_bytes: u64,
}

impl FileRecord {
    pub fn key(&self) -> FileKey {
        FileKey {
            namespace: self.namespace.clone(),
            project: self.project.clone(),
            experiment: self.experiment.clone(),
            path: self.path.clone(),
            filename: self.filename.clone(),
        }
    }

    pub fn full_path(&self) -> String {
        crate::path::join(&self.path, &self.filename)
    }

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
