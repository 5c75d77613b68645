//! `verify`: check every pack, every manifest and every record, and name damaged files.
//! Delta chunks are decoded through their chains of bases.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::manifest;
use crate::store::Store;
use crate::store::findings::{Finding, VerifyKind};
use crate::store::packs;
use crate::store::recover::list_ids;

/// What `verify` found. Healthy when `damaged_files` and `problems` are both empty.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// No damage and no problem found.
    pub ok: bool,
    /// Packs checked.
    pub packs: usize,
    /// Chunks checked.
    pub chunks: usize,
    /// Versions checked.
    pub versions: usize,
    /// Events checked.
    pub events: usize,
    /// `ns/project/experiment/path/name vN` of every version whose bytes cannot be read back.
    pub damaged_files: Vec<Finding<VerifyKind>>,
    /// Damage that does not (yet) affect a file, and inconsistencies, one line each.
    pub problems: Vec<Finding<VerifyKind>>,
    /// Harmless leftovers (a torn pack tail after a crash), reported for information.
    pub notes: Vec<Finding<VerifyKind>>,
    /// Versions whose whole bytes this run hashed to their record's SHA-256 and that were not
    /// proven before (pulled, re-indexed, or finished by crash recovery): their proofs are now
    /// recorded, so later reads rely on the chunk ids and skip the SHA-256.
    pub proofs_recorded: usize,
}

impl Store {
    /// Read and check everything: O(store size).
    pub fn verify(&self) -> Result<VerifyReport> {
        let s = self.session()?;
        let mut rep = VerifyReport::default();
        // 1. Every record of every pack: header check, decode, BLAKE3.
        let mut good: HashSet<(Id, u64, ChunkId)> = HashSet::new();
        let mut pack_lens: HashMap<Id, u64> = HashMap::new();
        for (pid, path) in list_ids(&self.dir("packs"), "pack")? {
            rep.packs += 1;
            let mut bad_in_pack = Vec::new();
            let scanned = packs::scan(&path, pid, true, |r| {
                if r.data_ok == Some(true) {
                    good.insert((pid, r.offset, r.header.id));
                } else {
                    bad_in_pack.push(Finding::new(
                        VerifyKind::DamagedRecord,
                        format!(
                            "{}: chunk {} at offset {} fails its check",
                            path.display(),
                            r.header.id,
                            r.offset
                        ),
                    ));
                }
            })?;
            rep.problems.extend(bad_in_pack);
            pack_lens.insert(pid, scanned.len);
            let committed = s.index.pack_len(pid)?.unwrap_or(0);
            if let Some(reason) = &scanned.header {
                rep.problems.push(Finding::new(
                    VerifyKind::BadPackHeader,
                    format!(
                        "{}: {reason} (its records are still read; gc rewrites it)",
                        path.display()
                    ),
                ));
            }
            for d in &scanned.damaged {
                if d.start >= committed {
                    rep.notes.push(Finding::new(VerifyKind::UncommittedSpan, format!(
                        "{}: bytes {}..{} after the committed end hold no valid record (interrupted write, harmless)",
                        path.display(),
                        d.start,
                        d.end
                    )));
                } else {
                    rep.problems.push(Finding::new(VerifyKind::DamagedSpan, format!(
                        "{}: bytes {}..{} hold no valid record ({}); the records after them are intact",
                        path.display(),
                        d.start,
                        d.end,
                        d.reason
                    )));
                }
            }
            if let Some(offset) = scanned.torn_tail {
                if offset < committed {
                    rep.problems.push(Finding::new(
                        VerifyKind::Truncated,
                        format!(
                            "{}: truncated at {offset}, index expects {committed} bytes",
                            path.display()
                        ),
                    ));
                } else {
                    rep.notes.push(Finding::new(VerifyKind::TornTail, format!(
                        "{}: incomplete record after offset {offset} (interrupted write, harmless)",
                        path.display()
                    )));
                }
            }
        }
        // 2. Every indexed chunk must sit at a good record. A delta chunk's record was checked
        //    on its own above; decoding it with its chain of bases proves its bytes.
        let mut bad_chunks: HashSet<ChunkId> = HashSet::new();
        let mut deltas = Vec::new();
        for c in s.index.chunks() {
            let (id, loc) = c?;
            rep.chunks += 1;
            if !good.contains(&(loc.pack, loc.offset, id)) {
                bad_chunks.insert(id);
            } else if loc.base.is_some() {
                deltas.push((id, loc));
            }
        }
        let mut located = crate::store::read::Located::new(self.dir("packs"));
        for (id, loc) in deltas {
            let what = || format!("chunk {id} (a delta in pack {})", loc.pack);
            let r = located
                .add(&s.index, &loc, &what)
                .and_then(|()| located.read(&loc, &id, &what));
            if let Err(e) = r {
                rep.problems
                    .push(Finding::new(VerifyKind::DeltaUndecodable, e.to_string()));
                bad_chunks.insert(id);
            }
        }
        // 3. Every version: manifest readable, consistent, all its chunks good, and (read
        //    through) its bytes hash to the record's SHA-256.
        let mut indexed: HashSet<Id> = HashSet::new();
        // Versions with the same chunks and checksum are read once; a good read proves them
        // all (each by the hash of its own manifest file, as loaded here).
        let mut same_bytes: HashMap<[u8; 32], Vec<(Id, [u8; 32])>> = HashMap::new();
        let mut to_read: Vec<(String, crate::FileRecord, [u8; 32])> = Vec::new();
        for r in s.index.scan_versions(&Default::default()) {
            let r = r?;
            rep.versions += 1;
            indexed.insert(r.id);
            let name = format!("{} v{}", r.key().display(), r.version);
            let manifest_exists = self.manifest_path(r.id).exists();
            match crate::store::read::load_manifest_hashed(&s, &r) {
                // A deleted version whose manifest gc already removed: fine.
                Err(_) if r.is_deleted() && !manifest_exists => {}
                Err(e) if r.is_deleted() => {
                    rep.problems.push(Finding::new(
                        VerifyKind::DeletedVersionDamaged,
                        format!("{name} (deleted): {e}"),
                    ));
                }
                Err(e) => {
                    rep.damaged_files.push(Finding::new(
                        VerifyKind::DamagedFile,
                        format!("{name}: {e}"),
                    ));
                }
                // A deleted version's chunks are garbage: gc may already have taken them.
                Ok(_) if r.is_deleted() => {}
                Ok((m, manifest_hash)) => {
                    let same = m.record.key() == r.key()
                        && m.record.version == r.version
                        && m.record.content_type == r.content_type;
                    if !same {
                        rep.damaged_files.push(Finding::new(
                            VerifyKind::DamagedFile,
                            format!("{name}: manifest record differs from the index"),
                        ));
                    } else if let Some((id, _)) = m.chunks.iter().find(|(id, _)| {
                        bad_chunks.contains(id) || s.index.chunk(id).ok().flatten().is_none()
                    }) {
                        rep.damaged_files.push(Finding::new(
                            VerifyKind::DamagedFile,
                            format!("{name}: chunk {id} is damaged or missing"),
                        ));
                    } else {
                        // Every chunk is good: the whole file must still hash to its record.
                        // Versions with the same chunks and checksum are read once.
                        let mut h = blake3::Hasher::new();
                        for (id, len) in &m.chunks {
                            h.update(id.as_bytes());
                            h.update(&len.to_le_bytes());
                        }
                        h.update(r.checksum.0.0.as_slice());
                        let key = *h.finalize().as_bytes();
                        let group = same_bytes.entry(key).or_default();
                        if group.is_empty() {
                            to_read.push((name, r.clone(), key));
                        }
                        group.push((r.id, manifest_hash));
                    }
                }
            }
        }
        let mut proofs = crate::store::index::IndexBatch::default();
        for (name, r, key) in to_read {
            let checked = crate::store::read::open_reader(&s, r).and_then(|reader| {
                reader.copy_to_checking_sha256(&mut std::io::sink())?;
                Ok(reader.manifest_hash())
            });
            match checked {
                Err(e) => rep.damaged_files.push(Finding::new(
                    VerifyKind::DamagedFile,
                    format!("{name}: {e}"),
                )),
                Ok(read_from) => {
                    let group = &same_bytes[&key];
                    // The chunk list read must be the one the group was formed on (a manifest
                    // rewritten between the two loads proves nothing).
                    if group[0].1 != read_from {
                        continue;
                    }
                    for &(id, manifest_hash) in group {
                        if s.index.proof(id)? == Some(manifest_hash) {
                            continue;
                        }
                        proofs.put_proof(id, &manifest_hash);
                        rep.proofs_recorded += 1;
                    }
                }
            }
        }
        // Proofs only speed up later reads: failing to write them (a full disk) must not cost
        // the report.
        if rep.proofs_recorded > 0
            && let Err(e) = s.index.apply(proofs)
        {
            rep.notes.push(Finding::new(
                VerifyKind::ProofsNotRecorded,
                format!(
                    "proofs of {} version(s) not recorded: {e}",
                    rep.proofs_recorded
                ),
            ));
            rep.proofs_recorded = 0;
        }
        // 4. Manifests the index does not know (other than deleted ones gc is removing).
        for (id, path) in list_ids(&self.dir("manifests"), "manifest")? {
            if indexed.contains(&id) {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| manifest::Manifest::decode(&b, "").map_err(|e| e.to_string()))
            {
                Ok(m) if s.index.covered_by_delete(&m.record)? => {}
                Ok(_) => rep.problems.push(Finding::new(
                    VerifyKind::ManifestNotIndexed,
                    format!(
                        "{}: manifest not in the index (run `ml-dash repair`)",
                        path.display()
                    ),
                )),
                Err(e) => rep.problems.push(Finding::new(
                    VerifyKind::Unreadable,
                    format!("{}: unreadable manifest: {e}", path.display()),
                )),
            }
        }
        // 5. Events.
        for (id, path) in list_ids(&self.dir("events"), "event")? {
            rep.events += 1;
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| manifest::decode_event(&b, "").map_err(|e| e.to_string()))
            {
                Ok(e) if e.id() == id => {}
                Ok(_) => rep.problems.push(Finding::new(
                    VerifyKind::Unreadable,
                    format!("{}: event id does not match its name", path.display()),
                )),
                Err(e) => rep.problems.push(Finding::new(
                    VerifyKind::Unreadable,
                    format!("{}: unreadable event: {e}", path.display()),
                )),
            }
        }
        // 6. Journals: every complete line must pass its checksum (a torn last line is harmless).
        for exp in self.journal_experiments()? {
            let j = self.journal_from_disk(&exp)?;
            let name = format!("{}/{}/{}", exp.namespace, exp.project, exp.experiment);
            if j.bad_lines > 0 {
                rep.problems.push(Finding::new(
                    VerifyKind::JournalDamaged,
                    format!("journal of {name}: {} damaged line(s) skipped", j.bad_lines),
                ));
            }
            if j.torn_lines > 0 {
                rep.notes.push(Finding::new(
                    VerifyKind::JournalTorn,
                    format!(
                        "journal of {name}: {} line(s) torn by an interrupted append (harmless)",
                        j.torn_lines
                    ),
                ));
            }
        }
        for (pid, committed) in s.index.packs()? {
            match pack_lens.get(&pid) {
                None => rep.problems.push(Finding::new(
                    VerifyKind::PackMissing,
                    format!("pack {pid} is in the index but missing on disk"),
                )),
                Some(len) if *len < committed => rep.problems.push(Finding::new(
                    VerifyKind::PackMissing,
                    format!("pack {pid} is shorter than the index says"),
                )),
                _ => {}
            }
        }
        // 7. Packs gc moved aside, and packs a rebuild asked gc to keep.
        let qdir = self.dir(crate::store::recover::QUARANTINE_DIR);
        if qdir.is_dir() {
            for (_, path) in list_ids(&qdir, "pack")? {
                rep.problems.push(Finding::new(VerifyKind::Quarantined, format!(
                    "{}: quarantined by gc (it holds bytes gc could not account for); `ml-dash repair` copies back any chunk a file needs, then it can be inspected or removed",
                    path.display()
                )));
            }
        }
        let incoming = list_ids(&self.dir("packs"), crate::format::pack::INCOMING_EXT)?;
        if !incoming.is_empty() {
            rep.notes.push(Finding::new(VerifyKind::IncomingPacks, format!(
                "{} pack(s) of uploads not committed: in flight, or left by a killed upload (`ml-dash gc` removes those)",
                incoming.len()
            )));
        }
        let held = crate::store::recover::read_held(&self.root)?;
        if !held.is_empty() {
            rep.notes.push(Finding::new(VerifyKind::HeldPacks, format!(
                "{} pack(s) hold chunks no manifest references and are kept by gc (listed by `ml-dash repair`; `ml-dash gc --drop-unreferenced` collects them)",
                held.len()
            )));
        }
        rep.damaged_files.sort();
        rep.ok = rep.damaged_files.is_empty() && rep.problems.is_empty();
        self.note_last("verify", &rep);
        Ok(rep)
    }
}
