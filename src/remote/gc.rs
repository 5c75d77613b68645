//! `gc` of a remote: delete the pack objects no live remote version needs and rewrite packs that
//! became mostly garbage, safely beside pushes to the same remote.
//!
//! **What is live.** Every chunk of every remote manifest that no remote event deletes (a
//! delete up to a version of its path, or a delete by version id, exactly as in a store), and
//! the delta base of the home copy (below) of every live chunk. Manifests and events are never
//! deleted: a
//! deleted version's manifest is its tombstone (it is small), and lets every store tell a remote
//! delete from a version the remote never saw. A manifest gc cannot read stops it (it cannot
//! know which chunks that version needs); an event it cannot read is left out, which only keeps
//! more. Packs whose index cannot be read are never touched.
//!
//! **Where a chunk lives.** A live chunk may have copies in several packs. Its home is the
//! copy gc keeps: among the copies that decode in the fewest delta steps (so the homes' chains
//! end at whole records and never loop), a copy no mark names before one that is marked, one
//! not reported rotten (`damaged/`) before one that is, then the pack holding the most live
//! bytes. Other copies may lose their delta base; pushes, pulls and remote reads use, by the
//! same measure, only copies that decode. A pack with no
//! home is garbage; a pack at least `rewrite_threshold` garbage has its homes copied into a new
//! pack (each record checked first: damage is never copied forward), and is then garbage too.
//! While a live chunk has copies only in marked packs, none of those packs goes (two gc runs at
//! once may choose different homes).
//!
//! **Two phases and a grace period.** A run never deletes a pack it has just found to be
//! garbage. It names such packs in a mark, `gc/<id>.mark`, and a later run deletes a marked
//! pack once the mark is older than the grace period (default one hour, by the server's clock)
//! (and by the time the gc that wrote it put in it) and only if that run, listing the manifests
//! afresh, still finds no home in it. Pushes take part: a push treats every chunk in a marked
//! pack as missing (and sends it again), and just before it uploads manifests (and again every
//! minute while it uploads them) it reads the marks and lists the packs once more, sending
//! again every chunk it relies on whose pack has been marked or deleted meanwhile. A pack is
//! thus deleted only after every push that could rely on it has either seen its mark or put
//! its manifests on the remote, where the deleting run sees them; the one assumption is that a
//! batch of manifests goes up within the grace period of the check before it. Packs younger than
//! the grace period are not marked (they may belong to a push whose manifests are not up yet).
//! A grace period of zero deletes at once: only for a remote no one pushes to meanwhile.
//!
//! Crash safety: new packs are complete before the packs they replace are marked; a pack is
//! deleted before its mark. A run cut short leaves marks a later run finishes, or a second
//! copy of some chunks a later run collects.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::push::ObjectWriter;
use super::{BAD_RECORDS, Remote, RemotePack, SMALL_CONCURRENCY};
use crate::error::{Error, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::manifest::{self, Event, Manifest};
use crate::format::names::FileKey;
use crate::format::pack;
use crate::format::rpack;
use crate::format::usize_from;
use crate::store::findings::{Finding, GcKind};

/// Where marks live: `gc/<id>.mark`.
pub(crate) const MARKS: &str = "gc";
/// No mark is larger (one names at most `MARK_PACKS` packs).
const MAX_MARK_LEN: u64 = 16 << 20;
const MARK_PACKS: usize = 100_000;
/// New packs written by rewrites end at about this size.
const PACK_TARGET: u64 = 64 << 20;
/// The largest ranged GET of a rewrite.
const MAX_RANGE: u64 = 8 << 20;

/// How `Remote::gc` runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RemoteGcOptions {
    /// Report what would be deleted, rewritten and marked; change nothing (default false).
    pub dry_run: bool,
    /// How old a mark must be before the packs it names are deleted, and a garbage pack before
    /// it is marked (default one hour). Zero deletes garbage at once: only when no push runs.
    pub grace: Duration,
    /// Rewrite a pack when at least this fraction of its record bytes is garbage (default 0.5).
    pub rewrite_threshold: f64,
}

impl Default for RemoteGcOptions {
    fn default() -> Self {
        RemoteGcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            rewrite_threshold: 0.5,
        }
    }
}

impl RemoteGcOptions {
    /// The defaults: a grace period of one hour, rewrite packs at least half garbage.
    pub fn new() -> RemoteGcOptions {
        RemoteGcOptions::default()
    }
    /// Report only (default false).
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
    /// The grace period (default one hour).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// Rewrite a pack when at least this fraction is garbage (clamped to 0..=1).
    pub fn rewrite_threshold(mut self, t: f64) -> Self {
        self.rewrite_threshold = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) };
        self
    }
}

/// What a remote gc did (or, with `dry_run`, would do). Bytes are object bytes unless named
/// otherwise.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteGcReport {
    /// The remote's URL.
    pub remote: String,
    /// Nothing was changed.
    pub dry_run: bool,
    /// The grace period, in seconds.
    pub grace_secs: f64,
    /// Live remote versions.
    pub versions: u64,
    /// Remote versions deleted by a remote event (their manifests stay, as tombstones).
    pub deleted_versions: u64,
    /// Pack objects on the remote when the run started.
    pub packs: u64,
    /// Their bytes.
    pub pack_bytes: u64,
    /// Bytes of the chunk records live versions need (one copy each).
    pub live_bytes: u64,
    /// Packs deleted by this run (marked by an earlier run at least the grace period ago, or
    /// at once with a grace period of zero).
    pub packs_deleted: u64,
    /// Bytes of the packs deleted.
    pub bytes_deleted: u64,
    /// Packs rewritten: their live records copied to new packs (the old ones are marked).
    pub packs_rewritten: u64,
    /// Bytes of the new packs.
    pub bytes_uploaded: u64,
    /// Garbage packs this run marked: a run after the grace period deletes them.
    pub packs_marked: u64,
    /// Bytes of the packs marked.
    pub bytes_marked: u64,
    /// Garbage packs an earlier run marked whose grace period has not ended.
    pub packs_pending: u64,
    /// Bytes of the pending packs.
    pub bytes_pending: u64,
    /// Garbage packs younger than the grace period, left for a later run (a push may not have
    /// put up their manifests yet).
    pub packs_young: u64,
    /// Bytes of garbage records left in packs below the rewrite threshold.
    pub garbage_bytes_left: u64,
    /// Marks this run finished and removed.
    pub marks_removed: u64,
    /// What was left alone, one line each.
    pub problems: Vec<Finding<GcKind>>,
}

/// A mark as read: the packs a gc found garbage, and when it was written.
pub(crate) struct Mark {
    pub id: Id,
    /// When the gc that wrote it says it did (its own clock).
    pub at: String,
    /// Last modified, milliseconds since the epoch (the server's clock).
    pub modified: i64,
    pub packs: Vec<Id>,
}

#[derive(Serialize, serde::Deserialize)]
struct MarkBody {
    format: String,
    at: String,
    packs: Vec<String>,
}

const MARK_FORMAT: &str = "ml-dash gc mark";

/// A listed mark: its id, when it was written, and the packs it names (`None`: unreadable).
type MarkRead = (Id, i64, Option<(String, Vec<Id>)>);

impl Remote {
    /// Every mark on the remote. A mark that cannot be read names nothing (a later gc marks
    /// those packs again); `bad` lists them.
    pub(crate) async fn read_marks(&self) -> Result<(Vec<Mark>, Vec<Id>)> {
        let listed = self.list_ids_aged(MARKS, "mark").await?;
        let results: Vec<Result<MarkRead>> = futures::stream::iter(listed)
            .map(|(id, size, modified)| async move {
                if size > MAX_MARK_LEN || size == 0 {
                    return Ok((id, modified, None));
                }
                let key = self.key(&format!("{MARKS}/{id}.mark"));
                let b = match self.os.get_range(&key, 0..size).await {
                    Ok(b) => b,
                    // Finished by another gc since the listing: it names nothing now.
                    Err(object_store::Error::NotFound { .. }) => {
                        return Ok((id, modified, Some((String::new(), Vec::new()))));
                    }
                    Err(e) => return Err(self.err(format!("reading {key}"), e)),
                };
                let packs = serde_json::from_slice::<MarkBody>(&b)
                    .ok()
                    .filter(|m| {
                        m.format == MARK_FORMAT
                            && m.packs.len() <= MARK_PACKS
                            && crate::format::time::is_iso_utc(&m.at)
                    })
                    .and_then(|m| {
                        let packs = m
                            .packs
                            .iter()
                            .map(|p| p.parse::<Id>().ok())
                            .collect::<Option<Vec<Id>>>()?;
                        Some((m.at, packs))
                    });
                Ok((id, modified, packs))
            })
            .buffer_unordered(SMALL_CONCURRENCY)
            .collect()
            .await;
        let mut marks = Vec::new();
        let mut bad = Vec::new();
        for r in results {
            match r? {
                (id, modified, Some((at, packs))) => marks.push(Mark {
                    id,
                    at,
                    modified,
                    packs,
                }),
                (id, _, None) => bad.push(id),
            }
        }
        marks.sort_by_key(|m| m.id);
        Ok((marks, bad))
    }

    /// Every pack some mark names.
    pub(crate) async fn marked_packs(&self) -> Result<HashSet<Id>> {
        let (marks, _) = self.read_marks().await?;
        Ok(marks.into_iter().flat_map(|m| m.packs).collect())
    }

    /// The server's clock now, in milliseconds since the epoch: the age of marks and packs is
    /// measured by it, so a machine whose clock is off cannot end a grace period early.
    async fn server_now(&self) -> Result<i64> {
        // Read back from a listing: listings are what ages are measured against, and some
        // servers give whole seconds in a HEAD but milliseconds in a listing.
        let name = format!("{}.clock", Id::generate());
        let key = self.key(&format!("{MARKS}/{name}"));
        self.os
            .put(&key, Vec::new().into())
            .await
            .map_err(|e| self.err(format!("writing {key}"), e))?;
        let listed = self.list_dir_aged(MARKS).await;
        let _ = self.os.delete(&key).await;
        listed?
            .into_iter()
            .find(|(n, ..)| *n == name)
            .map(|(.., at)| at)
            .ok_or_else(|| {
                Error::remote(
                    self.url.clone(),
                    format!("{key} was written but is not listed: cannot tell the server's time"),
                )
            })
    }

    async fn delete_object(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        match self.os.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("deleting {key}"), e)),
        }
    }

    /// Collect garbage on the remote (see the module docs). `cache` is where remote manifests,
    /// events and pack indexes are cached (a store's `cache/remote/<r>/`, or a scratch
    /// directory).
    pub(crate) fn gc_with_cache(
        &self,
        o: &RemoteGcOptions,
        cache: &Path,
    ) -> Result<RemoteGcReport> {
        if !self.rt.block_on(self.check_marker(false))? {
            return Err(Error::remote(
                self.url.clone(),
                "no ml-dash remote here (nothing was pushed to it)",
            ));
        }
        let mut rep = RemoteGcReport {
            remote: self.url.clone(),
            dry_run: o.dry_run,
            grace_secs: o.grace.as_secs_f64(),
            ..RemoteGcReport::default()
        };
        let grace_ms = grace_millis(o.grace);
        let now = if o.dry_run {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        } else {
            self.rt.block_on(self.server_now())?
        };
        // Marks first, then manifests: a push that relied on a pack before it was marked has
        // its manifests listed below if it ended within the grace period.
        let (marks, bad_marks) = self.rt.block_on(self.read_marks())?;
        // Old enough by the server's clock and by the clock of the gc that wrote it (a server
        // of several nodes may stamp a mark with a clock that is behind).
        let cutoff = {
            let t = std::time::SystemTime::now()
                .checked_sub(o.grace)
                .unwrap_or(std::time::UNIX_EPOCH)
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            crate::format::time::format_micros(
                i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                t.subsec_micros(),
            )
        };
        // A mark stamped by a gc whose clock runs ahead still ripens, at twice the grace period.
        let ripe = |m: &Mark| {
            let age = now.saturating_sub(m.modified);
            age >= grace_ms && (m.at <= cutoff || age >= grace_ms.saturating_mul(2))
        };
        let ripe_packs: HashSet<Id> = marks
            .iter()
            .filter(|m| ripe(m))
            .flat_map(|m| m.packs.iter().copied())
            .collect();
        let marked: HashSet<Id> = marks.iter().flat_map(|m| m.packs.iter().copied()).collect();

        let live = self.live_chunks(cache, &mut rep)?;
        let packs = self.rt.block_on(self.pack_indexes(cache))?;
        let plan = plan(
            &packs.packs,
            &packs.bad_records,
            live,
            &marked,
            o,
            now,
            &mut rep,
        );

        // Phase two: garbage packs whose mark is old enough.
        let mut delete: Vec<(Id, u64)> = Vec::new();
        for p in &plan.garbage {
            if o.grace.is_zero() || ripe_packs.contains(&p.0) {
                delete.push(*p);
            } else if marked.contains(&p.0) {
                rep.packs_pending += 1;
                rep.bytes_pending += p.1;
            }
        }
        let mut to_mark: Vec<(Id, u64)> = plan
            .garbage
            .iter()
            .filter(|p| !o.grace.is_zero() && !marked.contains(&p.0))
            .copied()
            .collect();
        if o.dry_run {
            rep.packs_rewritten = plan.rewrite.len() as u64;
            // Records plus their index entries (an estimate: the real run adds one pack header,
            // index header and footer per new pack, and skips records that fail their check).
            rep.bytes_uploaded = plan
                .rewrite
                .iter()
                .map(|r| r.live_len + (r.homes.len() * rpack::ENTRY_LEN) as u64)
                .sum();
            for r in &plan.rewrite {
                if o.grace.is_zero() {
                    delete.push((r.id, r.size));
                } else {
                    to_mark.push((r.id, r.size));
                }
            }
        }
        if !o.dry_run {
            self.delete_packs(&delete, &packs.bad_records)?;
            let rewritten = self.rewrite(&plan.rewrite, &mut rep)?;
            if o.grace.is_zero() {
                self.delete_packs(&rewritten, &packs.bad_records)?;
                delete.extend(rewritten);
            } else {
                to_mark.extend(rewritten);
            }
            self.write_marks(&to_mark)?;
            // Every ripe mark is finished: its packs are deleted, or in use again.
            let done: Vec<Id> = marks
                .iter()
                .filter(|m| ripe(m))
                .map(|m| m.id)
                .chain(bad_marks.iter().copied())
                .collect();
            for id in &done {
                self.rt
                    .block_on(self.delete_object(&format!("{MARKS}/{id}.mark")))?;
            }
            rep.marks_removed = done.len() as u64;
        }
        for id in &bad_marks {
            rep.problems.push(Finding::new(
                GcKind::MarkUnreadable,
                format!("{MARKS}/{id}.mark cannot be read: it names nothing (removed)"),
            ));
        }
        rep.packs_deleted = delete.len() as u64;
        rep.bytes_deleted = delete.iter().map(|d| d.1).sum();
        rep.packs_marked = to_mark.len() as u64;
        rep.bytes_marked = to_mark.iter().map(|d| d.1).sum();
        rep.problems.sort();
        Ok(rep)
    }

    /// The chunks live remote versions use (not yet their delta bases), counting versions into
    /// `rep`. Every manifest must be read: one that cannot be is an error.
    fn live_chunks(&self, cache: &Path, rep: &mut RemoteGcReport) -> Result<HashSet<ChunkId>> {
        let (rman, rev, mdir, edir) = super::lazy::cache_catalog(self, cache)?;

        let mut deleted_up_to: HashMap<FileKey, u32> = HashMap::new();
        let mut dropped: HashSet<Id> = HashSet::new();
        for (id, size) in &rev {
            let what = format!("events/{id}.event");
            // Larger than any event: pulls do not read it, so it deletes nothing anywhere.
            let e = std::fs::read(edir.join(format!("{id}.event")))
                .ok()
                .filter(|_| *size <= manifest::MAX_EVENT_LEN)
                .and_then(|b| manifest::decode_event(&b, &what).ok())
                .filter(|e| e.id() == *id && crate::format::record::check_pulled_event(e).is_ok());
            match e {
                Some(Event::Delete { up_to_version, .. }) => {
                    let key = e
                        .as_ref()
                        .and_then(Event::file_key)
                        .expect("a delete names a file");
                    let d = deleted_up_to.entry(key).or_default();
                    *d = (*d).max(up_to_version);
                }
                Some(Event::DeleteVersions { version_ids, .. }) => dropped.extend(version_ids),
                Some(Event::Update { .. }) => {}
                None => {
                    let _ = std::fs::remove_file(edir.join(format!("{id}.event")));
                    rep.problems.push(Finding::new(
                        GcKind::EventLeftOut,
                        format!("{what} cannot be read (left out: what it deletes stays)"),
                    ));
                }
            }
        }
        let mut live = HashSet::new();
        for (id, size) in &rman {
            let what = format!("manifests/{id}.manifest");
            let path = mdir.join(format!("{id}.manifest"));
            let m = std::fs::read(&path)
                .ok()
                .filter(|_| *size <= manifest::MAX_FILE_LEN as u64)
                .and_then(|b| Manifest::decode(&b, &what).ok())
                .filter(|m| {
                    m.record.id == *id && crate::format::record::check_pulled_manifest(m).is_ok()
                });
            let Some(m) = m else {
                // Fetched again by the next run, in case only the cached copy is bad.
                let _ = std::fs::remove_file(&path);
                return Err(self.damaged(
                    what,
                    "gc cannot read it, so it cannot know which chunks that version needs; nothing was deleted",
                ));
            };
            let r = &m.record;
            if r.version <= deleted_up_to.get(&r.key()).copied().unwrap_or(0)
                || dropped.contains(&r.id)
            {
                rep.deleted_versions += 1;
                continue;
            }
            rep.versions += 1;
            live.extend(m.chunks.iter().map(|(c, _)| *c));
        }
        Ok(live)
    }

    fn delete_packs(&self, packs: &[(Id, u64)], bad: &HashSet<(Id, u64)>) -> Result<()> {
        let gone: HashSet<Id> = packs.iter().map(|p| p.0).collect();
        self.rt.block_on(async {
            futures::stream::iter(packs.iter())
                .map(|(id, _)| async move {
                    self.delete_object(&format!("packs/{}", rpack::object_name(*id)))
                        .await
                })
                .buffer_unordered(SMALL_CONCURRENCY)
                .collect::<Vec<Result<()>>>()
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()?;
            // Reports of rotten records in deleted packs name nothing any more.
            for (pack, offset) in bad.iter().filter(|(p, _)| gone.contains(p)) {
                self.delete_object(&format!(
                    "{BAD_RECORDS}/{}",
                    super::bad_record_name(*pack, *offset)
                ))
                .await?;
            }
            Ok(())
        })
    }

    fn write_marks(&self, packs: &[(Id, u64)]) -> Result<()> {
        for group in packs.chunks(MARK_PACKS) {
            let body = MarkBody {
                format: MARK_FORMAT.into(),
                at: crate::format::time::now_iso(),
                packs: group.iter().map(|p| p.0.to_string()).collect(),
            };
            let mut b = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
            b.push(b'\n');
            let key = self.key(&format!("{MARKS}/{}.mark", Id::generate()));
            self.rt.block_on(self.put_immutable(&key, b))?;
        }
        Ok(())
    }

    /// Copy the homes of `packs` into new packs. Returns the packs whose every home was
    /// copied (now garbage); a pack with a record that fails its check stays as it is.
    fn rewrite(&self, packs: &[Rewrite], rep: &mut RemoteGcReport) -> Result<Vec<(Id, u64)>> {
        let mut done = Vec::new();
        let mut group: Vec<&Rewrite> = Vec::new();
        let (mut group_len, mut group_records) = (0, 0);
        for r in packs {
            // One index lists at most `MAX_RECORDS` (a pushed pack holds no more than that).
            if !group.is_empty() && group_records + r.homes.len() > rpack::MAX_RECORDS {
                done.extend(self.rewrite_group(&group, rep)?);
                group.clear();
                (group_len, group_records) = (0, 0);
            }
            group.push(r);
            group_len += r.live_len;
            group_records += r.homes.len();
            if group_len >= PACK_TARGET {
                done.extend(self.rewrite_group(&group, rep)?);
                group.clear();
                (group_len, group_records) = (0, 0);
            }
        }
        if !group.is_empty() {
            done.extend(self.rewrite_group(&group, rep)?);
        }
        Ok(done)
    }

    fn rewrite_group(
        &self,
        group: &[&Rewrite],
        rep: &mut RemoteGcReport,
    ) -> Result<Vec<(Id, u64)>> {
        let id = Id::generate();
        let key = self.key(&format!("packs/{}", rpack::object_name(id)));
        let count: usize = group.iter().map(|r| r.homes.len()).sum();
        let records: u64 = group.iter().map(|r| r.live_len).sum();
        let total = pack::PACK_HEADER_LEN
            + records
            + 12
            + (count * rpack::ENTRY_LEN) as u64
            + 32 * count as u64
            + rpack::FOOTER_LEN;
        let mut entries = Vec::with_capacity(count);
        let mut failed: HashSet<Id> = HashSet::new();
        ObjectWriter::start(self, key, total, false)?.write_all_with(|w| {
            w.write(&pack::encode_pack_header(id))?;
            let mut offset = pack::PACK_HEADER_LEN;
            for r in group {
                let okey = self.key(&format!("packs/{}", rpack::object_name(r.id)));
                for range in ranges(&r.homes) {
                    let (start, end) = (range[0].offset, range[range.len() - 1].offset);
                    let end = end + range[range.len() - 1].record_len();
                    let b = self
                        .rt
                        .block_on(self.os.get_range(&okey, start..end))
                        .map_err(|e| self.err(format!("reading {okey}"), e))?;
                    if b.len() as u64 != end - start {
                        return Err(
                            self.damaged(format!("remote pack {}", r.id), "short ranged read")
                        );
                    }
                    for e in range {
                        let at = usize_from(e.offset - start);
                        let rec = &b[at..at + usize_from(e.record_len())];
                        if let Err(why) = super::lazy::check_record(e, rec) {
                            failed.insert(r.id);
                            rep.problems.push(Finding::new(
                                GcKind::LiveRecordFails,
                                format!(
                                    "packs/{}: chunk {} at offset {}: {why} (not copied; the pack stays)",
                                    rpack::object_name(r.id),
                                    e.id,
                                    e.offset
                                ),
                            ));
                            continue;
                        }
                        w.write(rec)?;
                        entries.push(rpack::Entry { offset, ..*e });
                        offset += e.record_len();
                    }
                }
            }
            let idx = rpack::encode_index(&entries);
            w.write(&idx)?;
            w.write(&rpack::encode_footer(offset, &idx))?;
            rep.bytes_uploaded += offset + idx.len() as u64 + rpack::FOOTER_LEN;
            Ok(())
        })?;
        rep.packs_rewritten += group.iter().filter(|r| !failed.contains(&r.id)).count() as u64;
        Ok(group
            .iter()
            .filter(|r| !failed.contains(&r.id))
            .map(|r| (r.id, r.size))
            .collect())
    }
}

fn grace_millis(grace: Duration) -> i64 {
    i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)
}

/// Entries in offset order, cut into runs one ranged GET reads.
fn ranges(entries: &[rpack::Entry]) -> Vec<&[rpack::Entry]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=entries.len() {
        let cut = i == entries.len() || {
            let first = &entries[start];
            let prev = &entries[i - 1];
            let e = &entries[i];
            e.offset - (prev.offset + prev.record_len()) > 4096
                || e.offset + e.record_len() - first.offset > MAX_RANGE
        };
        if cut {
            out.push(&entries[start..i]);
            start = i;
        }
    }
    out
}

/// A pack to rewrite: its homes (in offset order) and their bytes.
struct Rewrite {
    id: Id,
    size: u64,
    homes: Vec<rpack::Entry>,
    live_len: u64,
}

struct Plan {
    /// Packs holding no home: `(id, object size)`.
    garbage: Vec<(Id, u64)>,
    rewrite: Vec<Rewrite>,
}

/// Decide every chunk's home and what becomes of every pack (see the module docs).
fn plan(
    packs: &[RemotePack],
    bad: &HashSet<(Id, u64)>,
    mut live: HashSet<ChunkId>,
    marked: &HashSet<Id>,
    o: &RemoteGcOptions,
    now: i64,
    rep: &mut RemoteGcReport,
) -> Plan {
    rep.packs = packs.len() as u64;
    rep.pack_bytes = packs.iter().map(|p| p.size).sum();
    // Every copy of every chunk, by pack position.
    let mut copies: HashMap<ChunkId, Vec<(usize, rpack::Entry)>> = HashMap::new();
    for (i, p) in packs.iter().enumerate() {
        match &p.index {
            Ok(entries) => {
                for e in entries {
                    copies.entry(e.id).or_default().push((i, *e));
                }
            }
            Err(reason) => rep.problems.push(Finding::new(
                GcKind::PackLeftOut,
                format!(
                    "packs/{}: {reason} (its index cannot be read: left alone)",
                    rpack::object_name(p.id)
                ),
            )),
        }
    }
    // Live bytes per pack, counting every copy of a chunk live versions use: homes go where
    // most of a version already is.
    let mut held = vec![0u64; packs.len()];
    for c in &live {
        for (i, e) in copies.get(c).into_iter().flatten() {
            held[*i] += e.record_len();
        }
    }
    let mut homes: Vec<Vec<rpack::Entry>> = vec![Vec::new(); packs.len()];
    // Packs holding a copy of a live chunk that no unmarked pack holds: none of them goes in
    // this run, whichever is the home (two gc runs at once could pick different homes).
    let mut protected = vec![false; packs.len()];
    // Every live chunk gets a home copy, one that decodes in the fewest delta steps (so the
    // homes' chains end at whole records and never loop), and the delta base of a home is live
    // too. The bases of other copies are not: those copies may lose them, and pushes, pulls
    // and remote reads use only copies that decode (`RemoteChunks::settle`).
    // Depths over the copies not reported rotten; a chunk only rotten-reported copies decode
    // keeps those (a report may be forged: it never costs the only copy).
    let is_bad = |i: usize, e: &rpack::Entry| bad.contains(&(packs[i].id, e.offset));
    let pairs = |good_only: bool| -> Vec<(ChunkId, Option<ChunkId>)> {
        copies
            .values()
            .flatten()
            .filter(|(i, e)| !good_only || !is_bad(*i, e))
            .map(|(_, e)| (e.id, e.base))
            .collect()
    };
    let good = super::decode_depths(&pairs(true), &|_| false);
    let any = super::decode_depths(&pairs(false), &|_| false);
    let copy_depth = |i: usize, e: &rpack::Entry, in_good: bool| {
        if in_good && is_bad(i, e) {
            return None;
        }
        let depth = if in_good { &good } else { &any };
        match e.base {
            None => Some(0),
            Some(b) => depth.get(&b).map(|d| d + 1),
        }
    };
    let mut todo: Vec<ChunkId> = live.iter().copied().collect();
    while let Some(c) = todo.pop() {
        // A live chunk in no readable pack, or with no copy that decodes: nothing gc can do
        // (a push from a store that holds it sends it again).
        let Some(cs) = copies.get(&c) else { continue };
        let (in_good, d) = match (good.get(&c), any.get(&c)) {
            (Some(d), _) => (true, *d),
            (None, Some(d)) => (false, *d),
            (None, None) => continue,
        };
        let best = cs
            .iter()
            .filter(|(i, e)| copy_depth(*i, e, in_good) == Some(d))
            .min_by_key(|(i, e)| {
                let p = &packs[*i];
                (
                    marked.contains(&p.id),
                    bad.contains(&(p.id, e.offset)),
                    std::cmp::Reverse(held[*i]),
                    p.id,
                )
            })
            .expect("a copy at the chunk's own depth");
        homes[best.0].push(best.1);
        if marked.contains(&packs[best.0].id) {
            for (i, _) in cs {
                protected[*i] = true;
            }
        }
        if let Some(b) = best.1.base
            && live.insert(b)
        {
            todo.push(b);
        }
    }
    let mut plan = Plan {
        garbage: Vec::new(),
        rewrite: Vec::new(),
    };
    let grace_ms = grace_millis(o.grace);
    for (i, p) in packs.iter().enumerate() {
        let Ok(entries) = &p.index else { continue };
        let records: u64 = entries.iter().map(rpack::Entry::record_len).sum();
        let live_len: u64 = homes[i].iter().map(rpack::Entry::record_len).sum();
        rep.live_bytes += live_len;
        // Too young to mark (a marked pack was old when it was marked).
        let young = !o.grace.is_zero()
            && now.saturating_sub(p.modified) < grace_ms
            && !marked.contains(&p.id);
        if live_len == 0 && protected[i] {
            // Kept this run; a later run, with the marks finished, picks one home.
        } else if live_len == 0 {
            if young {
                rep.packs_young += 1;
            } else {
                plan.garbage.push((p.id, p.size));
            }
        } else if !young
            && live_len < records
            && (records - live_len) as f64 >= o.rewrite_threshold * records as f64
        {
            let mut hs = std::mem::take(&mut homes[i]);
            hs.sort_by_key(|e| e.offset);
            plan.rewrite.push(Rewrite {
                id: p.id,
                size: p.size,
                homes: hs,
                live_len,
            });
        } else {
            rep.garbage_bytes_left += records - live_len;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::Codec;

    fn entry(id: ChunkId, offset: u64) -> rpack::Entry {
        rpack::Entry {
            id,
            offset,
            stored_len: 1000,
            raw_len: 1000,
            codec: Codec::Raw,
            base: None,
        }
    }

    fn pack(id: Id, chunks: &[ChunkId]) -> RemotePack {
        RemotePack {
            id,
            size: 1000 * chunks.len() as u64,
            modified: 0,
            index: Ok(chunks
                .iter()
                .enumerate()
                .map(|(i, c)| entry(*c, 32 + 1100 * i as u64))
                .collect()),
        }
    }

    fn garbage(packs: &[RemotePack], live: &[ChunkId], marked: &[Id]) -> Vec<Id> {
        garbage_with(packs, live, marked, &HashSet::new())
    }

    fn garbage_with(
        packs: &[RemotePack],
        live: &[ChunkId],
        marked: &[Id],
        bad: &HashSet<(Id, u64)>,
    ) -> Vec<Id> {
        let o = RemoteGcOptions::new().grace(Duration::from_secs(1));
        let mut rep = RemoteGcReport::default();
        let p = plan(
            packs,
            bad,
            live.iter().copied().collect(),
            &marked.iter().copied().collect(),
            &o,
            1_000_000,
            &mut rep,
        );
        p.garbage.into_iter().map(|g| g.0).collect()
    }

    fn delta(id: ChunkId, base: ChunkId, offset: u64) -> rpack::Entry {
        rpack::Entry {
            codec: Codec::Delta,
            base: Some(base),
            ..entry(id, offset)
        }
    }

    fn with(mut p: RemotePack, extra: rpack::Entry) -> RemotePack {
        if let Ok(es) = &mut p.index {
            es.push(extra);
        }
        p
    }

    /// X has a whole copy in a pack holding nothing else live, and a delta copy on Z in a
    /// busier pack; Z's only copy stands on Q, collected earlier. The whole copy is X's home.
    #[test]
    fn a_live_chunks_last_copy_that_decodes_is_kept() {
        let [x, z, q, u, w, v] = [1u8, 2, 3, 4, 5, 6].map(|b| ChunkId::of(&[b]));
        let (whole, busy, zp) = (Id::generate(), Id::generate(), Id::generate());
        let packs = [
            pack(whole, &[x]),
            with(pack(busy, &[u, w]), delta(x, z, 32 + 1100 * 2)),
            with(pack(zp, &[v]), delta(z, q, 32 + 1100)),
        ];
        let g = garbage(&packs, &[x, u, w, v], &[]);
        assert!(!g.contains(&whole), "{g:?}");
    }

    /// Copies that could form a loop of homes (X a delta on Z, Z a delta on X, in the busier
    /// packs): the homes are the whole copies, whose packs stay.
    #[test]
    fn homes_never_form_a_delta_loop() {
        let [x, z, u, w] = [1u8, 2, 3, 4].map(|b| ChunkId::of(&[b]));
        let (pa, pb, pc, pd) = (
            Id::generate(),
            Id::generate(),
            Id::generate(),
            Id::generate(),
        );
        let packs = [
            with(pack(pa, &[u]), delta(x, z, 32 + 1100)),
            with(pack(pb, &[w]), delta(z, x, 32 + 1100)),
            pack(pc, &[x]),
            pack(pd, &[z]),
        ];
        let g = garbage(&packs, &[x, z, u, w], &[]);
        assert!(!g.contains(&pc) && !g.contains(&pd), "{g:?}");
    }

    /// X's whole copy is in a marked pack (a push relied on it before the mark); its other
    /// copy is a delta on a base gc collected. The marked whole copy stays.
    #[test]
    fn a_broken_copy_never_beats_a_marked_whole_one() {
        let [x, z, u] = [1u8, 2, 3].map(|b| ChunkId::of(&[b]));
        let (p1, p2) = (Id::generate(), Id::generate());
        let packs = [with(pack(p1, &[u]), delta(x, z, 32 + 1100)), pack(p2, &[x])];
        let g = garbage(&packs, &[x, u], &[p2]);
        assert!(!g.contains(&p2), "{g:?}");
    }

    /// A whole copy reported rotten does not beat a delta on a good base; a chunk held only in
    /// a record reported rotten (perhaps falsely) keeps it.
    #[test]
    fn copies_reported_rotten_are_the_last_homes() {
        let [x, z] = [1u8, 2].map(|b| ChunkId::of(&[b]));
        let (pa, pb, pc) = (Id::generate(), Id::generate(), Id::generate());
        let packs = [
            pack(pa, &[x]),
            with(pack(pb, &[]), delta(x, z, 32)),
            pack(pc, &[z]),
        ];
        let bad: HashSet<(Id, u64)> = [(pa, 32)].into_iter().collect();
        let g = garbage_with(&packs, &[x], &[], &bad);
        assert_eq!(g, vec![pa], "x lives on as the delta on z");
        let g = garbage_with(&packs[..1], &[x], &[], &bad);
        assert!(g.is_empty(), "the only copy stays: {g:?}");
        // Clients: a delta whose base only a reported record holds is not relied on.
        let mut k = crate::remote::RemoteChunks::from_indexes(
            [
                (pa, Ok(vec![entry(z, 32)])),
                (pb, Ok(vec![delta(x, z, 32)])),
            ],
            &[(pa, 32)].into_iter().collect(),
        );
        k.settle(&HashSet::new(), &|_| false);
        assert!(!k.chunks.contains_key(&x));
    }

    /// The copy pushes and pulls use: X's oldest copy stands on a collected base, X has a
    /// whole copy elsewhere, and Y's only copy is a delta on X: both are usable.
    #[test]
    fn clients_use_copies_that_decode() {
        let [x, y, z] = [1u8, 2, 3].map(|b| ChunkId::of(&[b]));
        let (p1, p2, p3) = (Id::generate(), Id::generate(), Id::generate());
        let mut k = crate::remote::RemoteChunks::from_indexes(
            [
                (p1, Ok(vec![delta(x, z, 32)])),
                (p2, Ok(vec![entry(x, 32)])),
                (p3, Ok(vec![delta(y, x, 32)])),
            ],
            &HashSet::new(),
        );
        k.settle(&HashSet::new(), &|_| false);
        assert_eq!(k.chunks[&x].0, p2);
        assert_eq!(k.chunks[&y].0, p3);
        assert!(!k.chunks.contains_key(&z));
        // A pull that holds Z may use the delta on it; one holding nothing loses nothing.
        let mut k = crate::remote::RemoteChunks::from_indexes(
            [(p1, Ok(vec![delta(x, z, 32)]))],
            &HashSet::new(),
        );
        k.settle(&HashSet::new(), &|c| *c == z);
        assert!(k.chunks.contains_key(&x));
    }

    /// Two gc runs at once may pick different homes for a chunk held only in marked packs;
    /// so while no unmarked pack holds it, no pack holding it goes.
    #[test]
    fn a_live_chunk_only_in_marked_packs_keeps_every_copy() {
        let [c, d, e] = [1u8, 2, 3].map(|b| ChunkId::of(&[b]));
        let (x, y) = (Id::generate(), Id::generate());
        let packs = [pack(x, &[c, d]), pack(y, &[c, e])];
        assert!(garbage(&packs, &[c], &[x, y]).is_empty());
        // With an unmarked copy, the marked one goes.
        assert_eq!(garbage(&packs, &[c], &[x]), vec![x]);
        // Nothing live: both go.
        assert_eq!(garbage(&packs, &[], &[x, y]).len(), 2);
    }
}
