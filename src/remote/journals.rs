//! Journals (parameters, log lines, metric points) on a remote:
//! `PREFIX/journals/<journal name>/<segment>.jsonl`, where a segment is lines as a store holds
//! them and its name is the first 32 hex digits of the BLAKE3 of its bytes (immutable, so
//! pushers never overwrite each other).
//!
//! A push sends, per journal, one segment with the lines no segment on the remote holds yet
//! (it learns the line ids of segments it has not seen by reading them once; the ids are cached
//! under `cache/remote/<r>/journals/`), so a second push of an unchanged journal sends nothing.
//! A pull reads the segments it has not merged, checks them like user input (segment name
//! against its bytes, each line's checksum, names, limits) and merges their lines by the rules
//! of `store::journal_sync`; a segment is marked merged only when all its lines went in, so a
//! conflict is reported at every pull until it is resolved.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use crate::error::Result;
use crate::remote::Remote;
use crate::store::Store;
use crate::store::findings::{Finding, PullKind};
use crate::store::journal_sync::{self, LineId, StoredLine};

const DIR: &str = "journals";
/// A push cuts a journal's new lines into segments of about this many bytes (a line is at most
/// a few hundred KiB, so a segment stays far below `MAX_SEGMENT`).
const SEGMENT_TARGET: usize = 64 << 20;

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One segment's lines, or why it cannot be used.
enum Segment {
    Lines {
        lines: Vec<StoredLine>,
        refused: Vec<String>,
    },
    Unusable(PullKind, String),
}

impl Store {
    fn journal_cache(&self, remote: &Remote) -> PathBuf {
        self.remote_cache(remote).join(DIR)
    }

    /// The remote's journal segments: journal name → (segment name, size).
    fn remote_segments(remote: &Remote) -> Result<BTreeMap<String, Vec<(String, u64)>>> {
        let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (name, size) in remote.rt.block_on(remote.list_dir(DIR))? {
            let Some((j, file)) = name.split_once('/') else {
                continue;
            };
            let Some(seg) = file.strip_suffix(".jsonl") else {
                continue;
            };
            if is_hex32(j) && is_hex32(seg) {
                out.entry(j.to_string())
                    .or_default()
                    .push((seg.to_string(), size));
            }
        }
        Ok(out)
    }

    /// Fetch and check one segment; cache its line ids.
    fn fetch_segment(&self, remote: &Remote, journal: &str, seg: &str, size: u64) -> Segment {
        let what = format!("{DIR}/{journal}/{seg}.jsonl");
        if size > journal_sync::MAX_SEGMENT as u64 {
            return Segment::Unusable(PullKind::TooLarge, format!("{what}: {size} bytes"));
        }
        let bytes = match remote.rt.block_on(remote.get_bytes(&remote.key(&what))) {
            Ok(b) => b,
            Err(e) => return Segment::Unusable(PullKind::Undecodable, format!("{what}: {e}")),
        };
        if blake3::hash(&bytes).to_hex()[..32] != *seg {
            return Segment::Unusable(
                PullKind::Undecodable,
                format!("{what}: its bytes do not match its name"),
            );
        }
        let (lines, refused) = journal_sync::parse_foreign(&bytes, journal);
        let ids: Vec<u8> = lines.iter().flat_map(|l| l.id).collect();
        let cache = self.journal_cache(remote);
        // The cache is derived: failing to write it costs a later read, nothing else.
        if std::fs::create_dir_all(&cache).is_ok() {
            let _ = crate::store::durable::write_atomic(
                &cache.join(format!("{seg}.ids")),
                &ids,
                &self.opts.faults,
            );
        }
        let refused = refused
            .into_iter()
            .map(|r| format!("{what}: {r}"))
            .collect();
        Segment::Lines { lines, refused }
    }

    /// The line ids a segment holds: from the cache, else read from the remote.
    fn segment_ids(&self, remote: &Remote, journal: &str, seg: &str, size: u64) -> Vec<LineId> {
        if let Ok(b) = std::fs::read(self.journal_cache(remote).join(format!("{seg}.ids")))
            && b.len() % 16 == 0
        {
            return b
                .chunks_exact(16)
                .map(|c| c.try_into().expect("16 bytes"))
                .collect();
        }
        match self.fetch_segment(remote, journal, seg, size) {
            Segment::Lines { lines, .. } => lines.iter().map(|l| l.id).collect(),
            Segment::Unusable(..) => Vec::new(),
        }
    }

    fn mark_merged(&self, remote: &Remote, seg: &str) {
        let cache = self.journal_cache(remote);
        if std::fs::create_dir_all(&cache).is_ok() {
            let _ = crate::store::durable::write_atomic(
                &cache.join(format!("{seg}.merged")),
                b"",
                &self.opts.faults,
            );
        }
    }

    fn is_merged(&self, remote: &Remote, seg: &str) -> bool {
        self.journal_cache(remote)
            .join(format!("{seg}.merged"))
            .exists()
    }

    /// Send every journal line the remote lacks: one new segment per journal that has any.
    /// Returns the number of lines sent.
    pub(crate) fn push_journals(&self, remote: &Remote) -> Result<u64> {
        let remote_segs = Self::remote_segments(remote)?;
        let mut sent = 0u64;
        for (name, path) in self.journal_files()? {
            let local = journal_sync::journal_lines(&path)?;
            if local.is_empty() {
                continue;
            }
            let mut there: HashSet<LineId> = HashSet::new();
            for (seg, size) in remote_segs.get(&name).into_iter().flatten() {
                there.extend(self.segment_ids(remote, &name, seg, *size));
            }
            // Segments of at most SEGMENT_TARGET bytes (a pull refuses any over MAX_SEGMENT).
            let mut body = Vec::new();
            let mut ids = Vec::new();
            let missing: Vec<&StoredLine> =
                local.iter().filter(|l| !there.contains(&l.id)).collect();
            for (i, l) in missing.iter().enumerate() {
                body.extend_from_slice(&l.bytes);
                body.push(b'\n');
                ids.extend_from_slice(&l.id);
                if body.len() >= SEGMENT_TARGET || i + 1 == missing.len() {
                    self.put_segment(remote, &name, std::mem::take(&mut body), &ids)?;
                    sent += (ids.len() / 16) as u64;
                    ids.clear();
                }
            }
        }
        Ok(sent)
    }

    fn put_segment(&self, remote: &Remote, name: &str, body: Vec<u8>, ids: &[u8]) -> Result<()> {
        let seg = blake3::hash(&body).to_hex()[..32].to_string();
        let key = remote.key(&format!("{DIR}/{name}/{seg}.jsonl"));
        remote.rt.block_on(remote.put_immutable(&key, body))?;
        let cache = self.journal_cache(remote);
        if std::fs::create_dir_all(&cache).is_ok() {
            let _ = crate::store::durable::write_atomic(
                &cache.join(format!("{seg}.ids")),
                ids,
                &self.opts.faults,
            );
        }
        self.mark_merged(remote, &seg);
        Ok(())
    }

    /// Merge the journal segments of the remote not merged yet. Returns the lines appended;
    /// conflicts and refused lines go to the report.
    pub(crate) fn pull_journals(
        &self,
        remote: &Remote,
        conflicts: &mut Vec<Finding<PullKind>>,
        damaged: &mut Vec<Finding<PullKind>>,
    ) -> Result<u64> {
        let mut appended = 0u64;
        for (name, segs) in Self::remote_segments(remote)? {
            let mut lines = Vec::new();
            let mut fresh = Vec::new();
            let mut clean = true;
            let mut there: HashSet<LineId> = HashSet::new();
            for (seg, size) in &segs {
                if self.is_merged(remote, seg) {
                    there.extend(self.segment_ids(remote, &name, seg, *size));
                    continue;
                }
                match self.fetch_segment(remote, &name, seg, *size) {
                    Segment::Lines { lines: l, refused } => {
                        there.extend(l.iter().map(|x| x.id));
                        lines.extend(l);
                        clean &= refused.is_empty();
                        damaged.extend(
                            refused
                                .into_iter()
                                .map(|r| Finding::new(PullKind::Refused, r)),
                        );
                        fresh.push(seg.clone());
                    }
                    Segment::Unusable(kind, why) => {
                        damaged.push(Finding::new(kind, why));
                    }
                }
            }
            if fresh.is_empty() {
                continue;
            }
            let m = self.merge_journal(&name, lines, &there)?;
            appended += m.appended;
            clean &= m.conflicts.is_empty() && m.kept_out.is_empty();
            conflicts.extend(
                m.conflicts
                    .into_iter()
                    .map(|c| Finding::new(PullKind::JournalConflict, format!("{c} (kept out)"))),
            );
            damaged.extend(m.kept_out.into_iter().map(|c| {
                Finding::new(
                    PullKind::KeptOut,
                    format!("{c} (kept out; a later pull tries again)"),
                )
            }));
            if clean {
                for seg in fresh {
                    self.mark_merged(remote, &seg);
                }
            }
        }
        Ok(appended)
    }
}
