//! `push --layout files`: the plain layout of the ml-dash Files tutorial, one object per live version and a JSON
//! record beside it, for tools that want plain objects instead of packs.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::path::Path as OPath;
use serde::Serialize;

use super::push::ObjectWriter;
use super::{Remote, SMALL_CONCURRENCY};
use crate::error::{Error, Result};
use crate::format::record::FileRecord;
use crate::store::{ListFilter, Store};

/// What a plain-layout push did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesReport {
    /// The remote's URL.
    pub remote: String,
    /// Live versions in the store.
    pub files: u64,
    /// Objects uploaded (new or differing) and their bytes.
    pub uploaded: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Already present with the same size and SHA-256 and the same record.
    pub skipped: u64,
    /// Data already present, record rewritten (description, tags or metadata changed).
    pub records_updated: u64,
}

/// `files/<ns>/<project>/<experiment>/<file id>` (the data object is `<that>/<filename>`, the
/// record `<that>.json`).
fn base(r: &FileRecord) -> String {
    format!(
        "files/{}/{}/{}/{}",
        r.namespace, r.project, r.experiment, r.id
    )
}

/// Adapts an object upload to `Write` for the store's verified copy.
struct ToObject<'a, 'b>(&'b mut ObjectWriter<'a>, Option<&'b AtomicU64>);

impl Write for ToObject<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(std::io::Error::other)?;
        if let Some(p) = self.1 {
            p.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a candidate's remote record says, compared with the local one.
enum RemoteRecord {
    /// Byte for byte the record this push would write: nothing to do.
    Same,
    /// Same data (checksum), but the record changed since (description, tags, metadata).
    RecordOnly,
    /// Missing, unreadable or for other data: send both.
    Differs,
}

impl Store {
    /// Upload every live version as a plain object with its record beside it, skipping those
    /// already present with the same size and SHA-256 (and rewriting only the record when just
    /// the record changed).
    pub fn push_files(&self, remote: &Remote, progress: Option<&AtomicU64>) -> Result<FilesReport> {
        let recs = self.list(&ListFilter {
            all_versions: true,
            ..ListFilter::default()
        })?;
        // Keys as the object store spells them: compared as keys, not as names.
        let present: HashMap<OPath, u64> = remote
            .rt
            .block_on(remote.list_objects("files"))?
            .into_iter()
            .collect();
        let data_key = |r: &FileRecord| remote.key(&format!("{}/{}", base(r), r.filename));
        let doc_key = |r: &FileRecord| remote.key(&format!("{}.json", base(r)));
        let doc_of = |r: &FileRecord| serde_json::to_vec_pretty(r).expect("a record serializes");
        // Candidates for skipping: data object of the right size and a record beside it.
        let candidates: Vec<&FileRecord> = recs
            .iter()
            .filter(|r| {
                present.get(&data_key(r)) == Some(&r.size_bytes)
                    && present.contains_key(&doc_key(r))
            })
            .collect();
        let states: Vec<RemoteRecord> = remote.rt.block_on(
            futures::stream::iter(candidates.iter())
                .map(|r| async move {
                    let Ok(b) = remote.get_bytes(&doc_key(r)).await else {
                        return RemoteRecord::Differs;
                    };
                    if b[..] == doc_of(r)[..] {
                        return RemoteRecord::Same;
                    }
                    let sum = serde_json::from_slice::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|v| v.get("checksum").and_then(|c| c.as_str()).map(String::from));
                    if sum == Some(r.checksum.to_string()) {
                        RemoteRecord::RecordOnly
                    } else {
                        RemoteRecord::Differs
                    }
                })
                .buffered(SMALL_CONCURRENCY)
                .collect(),
        );
        let state: HashMap<crate::format::id::Id, RemoteRecord> =
            candidates.iter().map(|r| r.id).zip(states).collect();
        let mut rep = FilesReport {
            remote: remote.url.clone(),
            files: recs.len() as u64,
            ..FilesReport::default()
        };
        for r in &recs {
            match state.get(&r.id) {
                Some(RemoteRecord::Same) => {
                    rep.skipped += 1;
                    continue;
                }
                Some(RemoteRecord::RecordOnly) => rep.records_updated += 1,
                Some(RemoteRecord::Differs) | None => {
                    self.upload_data(remote, r, data_key(r), progress)?;
                    rep.uploaded += 1;
                    rep.bytes += r.size_bytes;
                }
            }
            // The record goes up after the data, so a record always describes a whole object.
            let doc = doc_of(r);
            remote.rt.block_on(async {
                use object_store::ObjectStoreExt;
                remote
                    .os
                    .put(&doc_key(r), doc.into())
                    .await
                    .map_err(|e| remote.err(format!("writing {}.json", base(r)), e))
            })?;
        }
        Ok(rep)
    }

    /// Copy version `r`'s verified bytes to `key`, replacing whatever is there (an object this
    /// push found differing, e.g. truncated, must not be kept as "already exists").
    fn upload_data(
        &self,
        remote: &Remote,
        r: &FileRecord,
        key: OPath,
        progress: Option<&AtomicU64>,
    ) -> Result<()> {
        let reader = self.open_version(r.id)?;
        let mut w = ObjectWriter::start(remote, key, r.size_bytes, true)?;
        match reader.copy_to(&mut ToObject(&mut w, progress)) {
            Ok(n) if n == r.size_bytes => w.finish(),
            Ok(n) => {
                w.abort();
                Err(Error::corrupt(
                    r.full_path(),
                    format!("read {n} bytes, the record says {}", r.size_bytes),
                ))
            }
            Err(e) => {
                w.abort();
                Err(e)
            }
        }
    }
}
