//! `push --layout files`: the seed's plain layout, one object per live version and a JSON
//! record beside it, for tools that want plain objects instead of packs.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use serde::Serialize;

use super::push::ObjectWriter;
use super::{Remote, SMALL_CONCURRENCY};
use crate::error::{Error, Result};
use crate::record::FileRecord;
use crate::store::{ListFilter, Store};

/// What a plain-layout push did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesReport {
    pub remote: String,
    /// Live versions in the store.
    pub files: u64,
    /// Objects uploaded (new or differing) and their bytes.
    pub uploaded: u64,
    pub bytes: u64,
    /// Already present with the same size and SHA-256.
    pub skipped: u64,
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

impl Store {
    /// Upload every live version as a plain object with its record beside it, skipping those
    /// already present with the same size and SHA-256.
    pub fn push_files(&self, remote: &Remote, progress: Option<&AtomicU64>) -> Result<FilesReport> {
        let recs = self.list(&ListFilter {
            all_versions: true,
            ..ListFilter::default()
        })?;
        let present: HashMap<String, u64> = remote
            .rt
            .block_on(remote.list_dir("files"))?
            .into_iter()
            .collect();
        // Candidates for skipping: data object of the right size and a record beside it.
        let candidates: Vec<&FileRecord> = recs
            .iter()
            .filter(|r| {
                let b = base(r);
                let data = format!("{}/{}", &b["files/".len()..], r.filename);
                let doc = format!("{}.json", &b["files/".len()..]);
                present.get(&data) == Some(&r.size_bytes) && present.contains_key(&doc)
            })
            .collect();
        let same: Vec<bool> = remote.rt.block_on(
            futures::stream::iter(candidates.iter())
                .map(|r| async move {
                    let doc = remote.key(&format!("{}.json", base(r)));
                    match remote.get_bytes(&doc).await {
                        Ok(b) => {
                            serde_json::from_slice::<serde_json::Value>(&b)
                                .ok()
                                .and_then(|v| {
                                    v.get("checksum").and_then(|c| c.as_str()).map(String::from)
                                })
                                == Some(r.checksum.to_string())
                        }
                        Err(_) => false,
                    }
                })
                .buffered(SMALL_CONCURRENCY)
                .collect(),
        );
        let skip: std::collections::HashSet<crate::id::Id> = candidates
            .iter()
            .zip(same)
            .filter(|(_, s)| *s)
            .map(|(r, _)| r.id)
            .collect();
        let mut rep = FilesReport {
            remote: remote.url.clone(),
            files: recs.len() as u64,
            skipped: skip.len() as u64,
            ..FilesReport::default()
        };
        for r in recs.iter().filter(|r| !skip.contains(&r.id)) {
            let b = base(r);
            let key = remote.key(&format!("{b}/{}", r.filename));
            let reader = self.open_version(r.id)?;
            let mut w = ObjectWriter::start(remote, key, r.size_bytes)?;
            let copied = reader.copy_to(&mut ToObject(&mut w, progress));
            match copied {
                Ok(n) if n == r.size_bytes => w.finish()?,
                Ok(n) => {
                    w.abort();
                    return Err(Error::corrupt(
                        r.full_path(),
                        format!("read {n} bytes, the record says {}", r.size_bytes),
                    ));
                }
                Err(e) => {
                    w.abort();
                    return Err(e);
                }
            }
            // The record goes up after the data, so a record always describes a whole object.
            let doc = serde_json::to_vec_pretty(r).expect("a record serializes");
            remote.rt.block_on(async {
                use object_store::ObjectStoreExt;
                remote
                    .os
                    .put(&remote.key(&format!("{b}.json")), doc.into())
                    .await
                    .map_err(|e| remote.err(format!("writing {b}.json"), e))
            })?;
            rep.uploaded += 1;
            rep.bytes += r.size_bytes;
        }
        Ok(rep)
    }
}
