//! Durable descriptions of versions (manifests) and of later changes to them (events).
//!
//! Both are small files written once through `durable::write_atomic` and never modified:
//! `manifests/<version id>.manifest` and `events/<event id>.event`. Each file is
//! `<magic> <BLAKE3 hex of body>\n<body JSON>`, so any damage is detected before the body is
//! trusted. Together with the packs they are the whole truth of a store: the sled index is
//! rebuilt from them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::record::FileRecord;

pub const MANIFEST_MAGIC: &str = "MLDMAN1";
pub const EVENT_MAGIC: &str = "MLDEVT1";
pub const FORMAT: u32 = 1;
/// Refuse to parse anything larger (a 5 GB file at 16 KiB chunks is ~30 MB of manifest).
pub const MAX_FILE_LEN: usize = 256 << 20;

/// One version: its record as of upload and its ordered chunk list `(id, raw length)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub record: FileRecord,
    pub chunks: Vec<(ChunkId, u32)>,
}

/// A change to existing versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    /// Soft delete: hides every version of the path up to and including `up_to_version`.
    #[serde(rename_all = "camelCase")]
    Delete {
        id: Id,
        namespace: String,
        project: String,
        experiment: String,
        path: String,
        filename: String,
        up_to_version: u32,
        at: String,
    },
    /// New description / tags / metadata for one version (absent fields stay as they were).
    #[serde(rename_all = "camelCase")]
    Update {
        id: Id,
        version_id: Id,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "double_option"
        )]
        description: Option<Option<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<Vec<String>>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        metadata: Option<serde_json::Value>,
        at: String,
    },
    /// Soft delete of exactly these versions (what a retention policy drops); `reason` says
    /// why, for people (`retention`).
    #[serde(rename_all = "camelCase")]
    DeleteVersions {
        id: Id,
        version_ids: Vec<Id>,
        reason: String,
        at: String,
    },
}

/// At most this many versions in one `DeleteVersions` event (a bigger drop is split), so that
/// every event stays below `MAX_EVENT_LEN`.
pub const MAX_EVENT_VERSIONS: usize = 20_000;

/// No event file is larger (a delete names one path; an update carries at most 64 KiB of
/// metadata, 256 tags of 256 bytes and a 64 KiB description; a delete by id at most
/// `MAX_EVENT_VERSIONS` ids): pulls and remote gc do not read a larger one.
#[cfg_attr(
    not(feature = "remote"),
    allow(dead_code, reason = "read by remote/ only")
)]
pub const MAX_EVENT_LEN: u64 = 1 << 20;

/// `null` → `Some(None)` (set to null), absent → `None` (unchanged).
fn double_option<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A present value (even `null`) → `Some`; absent → `None` via `default`.
fn present<'de, D>(d: D) -> std::result::Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    serde_json::Value::deserialize(d).map(Some)
}

impl Event {
    /// The path a delete event names.
    pub fn file_key(&self) -> Option<crate::format::names::FileKey> {
        match self {
            Event::Delete {
                namespace,
                project,
                experiment,
                path,
                filename,
                ..
            } => Some(crate::format::names::FileKey {
                namespace: namespace.clone(),
                project: project.clone(),
                experiment: experiment.clone(),
                path: path.clone(),
                filename: filename.clone(),
            }),
            Event::Update { .. } | Event::DeleteVersions { .. } => None,
        }
    }

    /// For an update of version `r.id`: its new fields written into `r`; true if it was one.
    pub fn apply_update(&self, r: &mut FileRecord) -> bool {
        let Event::Update {
            version_id,
            description,
            tags,
            metadata,
            at,
            ..
        } = self
        else {
            return false;
        };
        if *version_id != r.id {
            return false;
        }
        if let Some(d) = description {
            r.description.clone_from(d);
        }
        if let Some(t) = tags {
            r.tags.clone_from(t);
        }
        if let Some(m) = metadata {
            r.metadata = m.clone();
        }
        r.updated_at.clone_from(at);
        true
    }

    pub fn id(&self) -> Id {
        match self {
            Event::Delete { id, .. }
            | Event::Update { id, .. }
            | Event::DeleteVersions { id, .. } => *id,
        }
    }
}

fn frame(magic: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(magic.as_bytes());
    out.push(b' ');
    out.extend_from_slice(blake3::hash(body).to_hex().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn unframe<'a>(magic: &str, bytes: &'a [u8], what: &str) -> Result<&'a [u8]> {
    let bad = |r: &str| Error::corrupt(what.to_string(), r.to_string());
    if bytes.len() > MAX_FILE_LEN {
        return Err(bad("file too large"));
    }
    let head_len = magic.len() + 1 + 64 + 1;
    if bytes.len() < head_len
        || &bytes[..magic.len()] != magic.as_bytes()
        || bytes[magic.len()] != b' '
        || bytes[head_len - 1] != b'\n'
    {
        return Err(bad("bad header"));
    }
    let body = &bytes[head_len..];
    if blake3::hash(body).to_hex().as_bytes() != &bytes[magic.len() + 1..head_len - 1] {
        return Err(bad("checksum mismatch"));
    }
    Ok(body)
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        frame(
            MANIFEST_MAGIC,
            &serde_json::to_vec(self).expect("manifest serializes"),
        )
    }

    /// Decode and check a manifest file's bytes; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Manifest> {
        Manifest::decode_body(unframe(MANIFEST_MAGIC, bytes, what)?, what)
    }

    /// Decode and check a manifest body (the JSON after the checksum line).
    pub fn decode_body(body: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(what.to_string(), e.to_string()))?;
        if m.format != FORMAT {
            return Err(Error::corrupt(
                what.to_string(),
                format!("unsupported manifest format {}", m.format),
            ));
        }
        let sum: u64 = m.chunks.iter().map(|(_, l)| u64::from(*l)).sum();
        if sum != m.record.size_bytes {
            return Err(Error::corrupt(
                what.to_string(),
                "chunk lengths do not add up to the file size",
            ));
        }
        Ok(m)
    }
}

pub fn encode_event(e: &Event) -> Vec<u8> {
    frame(
        EVENT_MAGIC,
        &serde_json::to_vec(e).expect("event serializes"),
    )
}

pub fn decode_event(bytes: &[u8], what: &str) -> Result<Event> {
    decode_event_body(unframe(EVENT_MAGIC, bytes, what)?, what)
}

/// Decode an event body (the JSON after the checksum line).
pub fn decode_event_body(body: &[u8], what: &str) -> Result<Event> {
    serde_json::from_slice(body).map_err(|e| Error::corrupt(what.to_string(), e.to_string()))
}

pub fn manifest_file_name(id: Id) -> String {
    format!("{id}.manifest")
}

pub fn event_file_name(id: Id) -> String {
    format!("{id}.event")
}

/// Parse `<32 hex>.<ext>`.
pub fn parse_file_name(name: &str, ext: &str) -> Option<Id> {
    name.strip_suffix(ext)?.strip_suffix('.')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_delete_event_fits_the_event_limit() {
        let e = Event::DeleteVersions {
            id: Id::generate(),
            version_ids: (0..MAX_EVENT_VERSIONS).map(|_| Id::generate()).collect(),
            reason: "retention".into(),
            at: crate::format::time::now_iso(),
        };
        let len = encode_event(&e).len() as u64;
        assert!(len <= MAX_EVENT_LEN, "{len}");
    }

    pub(crate) fn sample() -> Manifest {
        let data = b"hello";
        Manifest {
            format: FORMAT,
            record: FileRecord {
                id: Id::generate(),
                namespace: "local".into(),
                project: "p".into(),
                experiment: "e".into(),
                path: "/models".into(),
                filename: "m.pth".into(),
                version: 1,
                size_bytes: 5,
                checksum: "0".repeat(64).parse().unwrap(),
                content_type: "application/octet-stream".into(),
                description: None,
                tags: vec!["a".into()],
                metadata: serde_json::json!({"epoch": 1}),
                uploaded_at: crate::format::time::now_iso(),
                updated_at: crate::format::time::now_iso(),
                deleted_at: None,
                new_bytes: 5,
            },
            chunks: vec![(ChunkId::of(data), 5)],
        }
    }

    #[test]
    fn roundtrip_and_any_flip_detected() {
        let m = sample();
        let enc = m.encode();
        assert_eq!(Manifest::decode(&enc, "m").unwrap(), m);
        for i in (0..enc.len()).step_by(7) {
            let mut b = enc.clone();
            b[i] ^= 1;
            assert!(Manifest::decode(&b, "m").is_err(), "flip at {i} undetected");
        }
        assert!(Manifest::decode(&enc[..enc.len() - 1], "m").is_err());
    }

    #[test]
    fn size_mismatch_is_corrupt() {
        let mut m = sample();
        m.record.size_bytes = 6;
        assert!(Manifest::decode(&m.encode(), "m").is_err());
    }

    #[test]
    fn events_roundtrip() {
        let e = Event::Update {
            id: Id::generate(),
            version_id: Id::generate(),
            description: Some(None),
            tags: None,
            metadata: Some(serde_json::json!({"x": 1})),
            at: crate::format::time::now_iso(),
        };
        assert_eq!(decode_event(&encode_event(&e), "e").unwrap(), e);
        assert!(decode_event(&sample().encode(), "e").is_err());
    }
}
