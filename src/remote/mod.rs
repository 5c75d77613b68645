//! Push and pull a store to S3-compatible object storage (or a directory, `file://`).
//!
//! The remote layout (marker, packs, manifests, events, `damaged/`, `files/`) is in
//! docs/format.md, "Remote layout". Every name is immutable and unique, so machines pushing to
//! one PREFIX at the same time never overwrite each other's data.
//!
//! Push order: packs (each complete before it is visible), then manifests, then events; so a
//! manifest on the remote implies its chunks are there. A push computes what the remote lacks
//! (chunk ids from the pack indexes, cached locally under `cache/remote/`), so a second push of
//! an unchanged store writes nothing, and an interrupted push resends at most the packs that
//! were in flight. A pull fetches manifests and events it lacks, then only the chunk records
//! it lacks (coalesced ranged GETs), checks each against its BLAKE3 id, writes them to local
//! packs, and commits the versions and events with the same write order as an upload.

mod files;
mod gc;
mod journals;
mod lazy;
mod pull;
mod push;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use lazy::{FetchStats, RemoteFile};

use crate::error::{Error, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::rpack;
use crate::format::usize_from;
use crate::store::findings::{Finding, PullKind};

pub use files::FilesReport;
pub use gc::{RemoteGcOptions, RemoteGcReport};
pub use pull::PullReport;
pub use push::PushReport;

const MARKER: &str = "ml-dash-remote.json";
/// Version 2: remote pack indexes may hold delta entries (codec 4 with a base). Version 3:
/// packs may hold Huffman-coded byte planes (codec 5). An older remote is re-marked 3 by the
/// first push to it, so older versions refuse it cleanly.
const MARKER_BODY: &str = "{\"format\":\"ml-dash remote\",\"version\":3}\n";
/// The marker is a line of JSON: anything longer is not one (and is never read whole).
const MAX_MARKER_LEN: u64 = 4096;
/// Requests in flight for small objects (manifests, events, pack index tails).
const SMALL_CONCURRENCY: usize = 16;

/// Where a remote is and how to reach it. Secrets are never shown by `Debug`.
#[derive(Clone, Default)]
pub struct RemoteConfig {
    /// `s3://BUCKET[/PREFIX]` or `file:///DIR[/PREFIX]`.
    pub url: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:3900` (default: `AWS_ENDPOINT_URL`, then AWS).
    pub endpoint: Option<String>,
    /// Default: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Default: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Default: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &"<not shown>")
            .finish()
    }
}

impl RemoteConfig {
    /// A remote at `url` (`s3://BUCKET[/PREFIX]` or `file:///DIR`), everything else from the
    /// environment.
    pub fn new(url: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            ..RemoteConfig::default()
        }
    }

    /// Is the URL one a remote can be opened at? (Nothing is sent.)
    pub fn check(&self) -> Result<()> {
        parse_url(&self.url).map(|_| ())
    }
}

/// An open connection to a remote: an object store, a key prefix and a runtime to drive it.
pub struct Remote {
    pub(crate) os: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    pub(crate) rt: tokio::runtime::Runtime,
    /// A `file://` directory (`object_store`'s `LocalFileSystem` reserves some file names).
    local: bool,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// Split `scheme://BUCKET/PREFIX` into `(bucket, prefix)`; the prefix is normalized to
/// segments without empty, `.` or `..` parts.
pub fn parse_url(url: &str) -> Result<(&'static str, String, String)> {
    let bad = |reason: &str| Error::invalid("remote URL", url, reason);
    let (scheme, rest) = if let Some(r) = url.strip_prefix("s3://") {
        ("s3", r)
    } else if let Some(r) = url.strip_prefix("file://") {
        ("file", r)
    } else {
        return Err(bad("expected s3://BUCKET/PREFIX or file:///DIR"));
    };
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(bad("file:// URLs need an absolute directory (file:///DIR)"));
        }
        return Ok((scheme, rest.to_string(), String::new()));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad(
            "bucket names are lowercase letters, digits, '-' and '.'",
        ));
    }
    let mut segs = Vec::new();
    for s in prefix.split('/').filter(|s| !s.is_empty()) {
        if s == "." || s == ".." || s.chars().any(|c| c.is_control()) {
            return Err(bad(
                "prefix segments must not be '.', '..' or hold control characters",
            ));
        }
        segs.push(s);
    }
    Ok((scheme, bucket.to_string(), segs.join("/")))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Remote {
    /// Connect to `cfg.url` (nothing is sent until the first request).
    pub fn open(cfg: &RemoteConfig) -> Result<Remote> {
        let (scheme, bucket, prefix) = parse_url(&cfg.url)?;
        let err = |e: object_store::Error| Error::Remote {
            remote: cfg.url.clone(),
            reason: e.to_string(),
            source: Some(Box::new(e)),
        };
        let os: Arc<dyn ObjectStore> = if scheme == "file" {
            std::fs::create_dir_all(&bucket).map_err(|e| Error::io(&bucket, e))?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&bucket).map_err(err)?)
        } else {
            let endpoint = cfg
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .or_else(|| env("AWS_ENDPOINT"));
            let region = cfg
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_region(region)
                .with_retry(object_store::RetryConfig {
                    backoff: object_store::BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(15),
                        base: 2.0,
                    },
                    max_retries: 8,
                    retry_timeout: Duration::from_secs(180),
                });
            if let Some(e) = endpoint {
                // Self-hosted servers (Garage, MinIO, Ceph) use path-style requests.
                b = b
                    .with_allow_http(e.starts_with("http://"))
                    .with_virtual_hosted_style_request(false)
                    .with_endpoint(e);
            }
            if let Some(k) = &cfg.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(s) = &cfg.secret_access_key {
                b = b.with_secret_access_key(s);
            }
            Arc::new(b.build().map_err(err)?)
        };
        let prefix = if scheme == "file" {
            String::new()
        } else {
            prefix
        };
        Remote::from_object_store(os, prefix, cfg.url.clone())
    }

    /// Use any `ObjectStore` (tests: an in-memory store, or one that misbehaves on purpose)
    /// with keys under `prefix`. Needs the `testing` feature: it ties the caller to the
    /// `object_store` version the engine uses.
    #[cfg(feature = "testing")]
    pub fn with_object_store(
        os: Arc<dyn ObjectStore>,
        prefix: String,
        url: String,
    ) -> Result<Remote> {
        Remote::from_object_store(os, prefix, url)
    }

    fn from_object_store(os: Arc<dyn ObjectStore>, prefix: String, url: String) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ml-dash-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::Remote {
                remote: url.clone(),
                reason: "cannot start the I/O runtime".into(),
                source: Some(Box::new(e)),
            })?;
        let local = url.starts_with("file://");
        Ok(Remote {
            os,
            prefix,
            url,
            rt,
            local,
        })
    }

    /// The URL the remote was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object key for `rel` under the prefix, spelled as given: `OPath::from` would
    /// percent-encode `%`, `#`, `~`, `[`, `?`, ... so `files/.../a%b.txt` became the key
    /// `a%25b.txt`. Names reaching here are checked (`format/names.rs`, `parse_url`): no empty, `.`
    /// or `..` segments, no control characters, so `OPath::parse` accepts them.
    pub(crate) fn key(&self, rel: &str) -> OPath {
        let full = if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        match OPath::parse(&full) {
            // A directory remote cannot hold a file named `...#<digits>` (LocalFileSystem
            // keeps those names for its own temp files): encode that one, as before.
            Ok(p) if !(self.local && local_fs_reserved(&p)) => p,
            _ => OPath::from(full),
        }
    }

    pub(crate) fn err(&self, what: impl fmt::Display, e: object_store::Error) -> Error {
        Error::Remote {
            remote: self.url.clone(),
            reason: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    pub(crate) fn damaged(&self, what: impl fmt::Display, reason: impl fmt::Display) -> Error {
        Error::remote(self.url.clone(), format!("{what} is damaged: {reason}"))
    }

    /// Keys and sizes of every object under `dir/`.
    pub(crate) async fn list_objects(&self, dir: &str) -> Result<Vec<(OPath, u64)>> {
        let metas: Vec<object_store::ObjectMeta> = self
            .os
            .list(Some(&self.key(dir)))
            .try_collect()
            .await
            .map_err(|e| self.err(format!("listing {dir}/"), e))?;
        Ok(metas.into_iter().map(|m| (m.location, m.size)).collect())
    }

    /// Names (the part after `dir/`) and sizes of every object under `dir/`.
    pub(crate) async fn list_dir(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_dir_aged(dir)
            .await?
            .into_iter()
            .map(|(n, size, _)| (n, size))
            .collect())
    }

    /// Names, sizes and last-modified times (milliseconds since the epoch, the server's
    /// clock) of every object under `dir/`.
    pub(crate) async fn list_dir_aged(&self, dir: &str) -> Result<Vec<(String, u64, i64)>> {
        let base = self.key(dir);
        let metas: Vec<_> = self
            .os
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| self.err(format!("listing {dir}/"), e))?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let parts: Vec<_> = m
                .location
                .prefix_match(&base)
                .into_iter()
                .flatten()
                .collect();
            let name = parts
                .iter()
                .map(|p| p.as_ref())
                .collect::<Vec<_>>()
                .join("/");
            out.push((name, m.size, m.last_modified.timestamp_millis()));
        }
        Ok(out)
    }

    /// Ids of objects named `<id>.<ext>` under `dir/`.
    pub(crate) async fn list_ids(&self, dir: &str, ext: &str) -> Result<Vec<(Id, u64)>> {
        Ok(self
            .list_ids_aged(dir, ext)
            .await?
            .into_iter()
            .map(|(id, size, _)| (id, size))
            .collect())
    }

    /// Ids, sizes and last-modified times (as `list_dir_aged`) of objects named `<id>.<ext>`
    /// under `dir/`, in id order.
    pub(crate) async fn list_ids_aged(&self, dir: &str, ext: &str) -> Result<Vec<(Id, u64, i64)>> {
        let mut v: Vec<(Id, u64, i64)> = self
            .list_dir_aged(dir)
            .await?
            .into_iter()
            .filter_map(|(n, size, at)| {
                Some((crate::format::manifest::parse_file_name(&n, ext)?, size, at))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Put an object that must never change: `Create` where the server honours it; an object
    /// already there under an immutable name holds the same bytes.
    pub(crate) async fn put_immutable(&self, key: &OPath, bytes: Vec<u8>) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.os.put_opts(key, PutPayload::from(bytes), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("writing {key}"), e)),
        }
    }

    pub(crate) async fn get_bytes(&self, key: &OPath) -> Result<bytes::Bytes> {
        let r = self
            .os
            .get(key)
            .await
            .map_err(|e| self.err(format!("reading {key}"), e))?;
        r.bytes()
            .await
            .map_err(|e| self.err(format!("reading {key}"), e))
    }

    /// Check the remote's format marker; write it when `create` and it is missing.
    pub(crate) async fn check_marker(&self, create: bool) -> Result<bool> {
        let key = self.key(MARKER);
        match self.os.get(&key).await {
            Ok(r) if r.meta.size > MAX_MARKER_LEN => Err(self.damaged(
                MARKER,
                format!("{} bytes, no marker is that long", r.meta.size),
            )),
            Ok(r) => {
                let b = r
                    .bytes()
                    .await
                    .map_err(|e| self.err(format!("reading {key}"), e))?;
                let v: serde_json::Value =
                    serde_json::from_slice(&b).map_err(|e| self.damaged(MARKER, e.to_string()))?;
                let version = v.get("version").and_then(|f| f.as_u64());
                if v.get("format").and_then(|f| f.as_str()) != Some("ml-dash remote")
                    || !matches!(version, Some(1..=3))
                {
                    return Err(self.damaged(MARKER, "unsupported remote format"));
                }
                if version < Some(3) && create {
                    self.os
                        .put(&key, MARKER_BODY.as_bytes().to_vec().into())
                        .await
                        .map_err(|e| self.err(format!("writing {key}"), e))?;
                }
                Ok(true)
            }
            Err(object_store::Error::NotFound { .. }) if create => {
                self.put_immutable(&key, MARKER_BODY.as_bytes().to_vec())
                    .await?;
                Ok(false)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(format!("reading {key}"), e)),
        }
    }

    /// Every chunk in every remote pack, read from the packs' index blocks (fetched once and
    /// cached under `cache`; a cached block is checked again on every use). A pack whose tail
    /// is damaged is left out and named in `damaged` (its chunks count as missing: a push
    /// sends them again, a pull reports the versions that need them); one bad object must not
    /// stop every push and pull. Records a pull found rotten (`damaged/` reports) are left out
    /// the same way. Network errors still fail.
    pub(crate) async fn chunk_map(&self, cache: &Path) -> Result<RemoteChunks> {
        let packs = self.pack_indexes(cache).await?;
        Ok(RemoteChunks::from_indexes(
            packs.packs.into_iter().map(|p| (p.id, p.index)),
            &packs.bad_records,
        ))
    }

    /// Every remote pack with its size, age and index (or why the index cannot be read), in
    /// id order, and the records reported rotten (`damaged/`).
    pub(crate) async fn pack_indexes(&self, cache: &Path) -> Result<RemotePacks> {
        let packs = self.list_ids_aged("packs", "pack").await?;
        let bad_records: HashSet<(Id, u64)> = self
            .list_dir(BAD_RECORDS)
            .await?
            .into_iter()
            .filter_map(|(name, _)| parse_bad_record_name(&name))
            .collect();
        // The cache is derived data: if its directory cannot be made, work without it.
        let _ = std::fs::create_dir_all(cache);
        let results: Vec<Result<RemotePack>> = futures::stream::iter(packs)
            .map(|(id, size, modified)| async move {
                Ok(RemotePack {
                    id,
                    size,
                    modified,
                    index: self.pack_index(cache, id, size).await?,
                })
            })
            .buffer_unordered(SMALL_CONCURRENCY)
            .collect()
            .await;
        let mut packs: Vec<RemotePack> = results.into_iter().collect::<Result<_>>()?;
        packs.sort_by_key(|p| p.id);
        Ok(RemotePacks { packs, bad_records })
    }

    /// Tell every machine using this remote that the record of `chunk` at `offset` of remote
    /// pack `pack` is rotten (`damaged/<pack id>-<offset>.bad`): pulls then use another copy,
    /// and a push sends the chunk again. Best effort: a remote this machine may only read
    /// keeps the report local.
    pub(crate) async fn report_bad_record(
        &self,
        pack: Id,
        offset: u64,
        chunk: &ChunkId,
        reason: &str,
    ) -> Result<()> {
        let key = self.key(&format!("{BAD_RECORDS}/{}", bad_record_name(pack, offset)));
        let body = serde_json::json!({"pack": pack.to_string(), "offset": offset, "chunk": chunk.to_string(), "reason": reason});
        self.put_immutable(&key, format!("{body}\n").into_bytes())
            .await
    }

    /// The index of pack `id` (an object of `size` bytes): `Err` for a network failure,
    /// `Ok(Err(reason))` when the object is damaged.
    async fn pack_index(&self, cache: &Path, id: Id, size: u64) -> Result<PackIndex> {
        // Cache entry: [16] pack id, u64 object size, [32] BLAKE3 of the index block,
        // u64 index offset, the index block. The id and size tie it to this very object.
        const HEAD: usize = 16 + 8 + 32 + 8;
        let cpath = cache.join(format!("{id}.idx"));
        if let Ok(b) = std::fs::read(&cpath)
            && b.len() >= HEAD
            && b[..16] == id.0
            && b[16..24] == size.to_le_bytes()
        {
            let check: [u8; 32] = b[24..56].try_into().expect("32");
            let off = u64::from_le_bytes(b[56..64].try_into().expect("8"));
            let idx = &b[HEAD..];
            if off.checked_add(idx.len() as u64 + rpack::FOOTER_LEN) == Some(size)
                && let Ok(es) = rpack::decode_index(idx, &check, off)
            {
                return Ok(Ok(es));
            }
            // A damaged or foreign cache entry is just fetched again.
        }
        let key = self.key(&format!("packs/{}", rpack::object_name(id)));
        // Smallest possible pack: header, an empty index block, footer.
        if size < crate::format::pack::PACK_HEADER_LEN + 12 + rpack::FOOTER_LEN {
            return Ok(Err(format!("only {size} bytes, too short for a pack")));
        }
        let tail_len = size.min(1 << 20);
        let tail = self
            .os
            .get_range(&key, size - tail_len..size)
            .await
            .map_err(|e| self.err(format!("reading {key}"), e))?;
        if tail.len() as u64 != tail_len {
            return Ok(Err("short read of its tail".into()));
        }
        let footer = &tail[tail.len() - usize_from(rpack::FOOTER_LEN)..];
        let (off, len, check) = match rpack::decode_footer(footer, size) {
            Ok(f) => f,
            Err(r) => return Ok(Err(r)),
        };
        // Bound the allocation by what any pack of this size can need, before reading it.
        let plausible = 12 + (off / crate::format::pack::RECORD_HEADER_LEN as u64 + 1) * 81;
        if len > rpack::MAX_INDEX_LEN || len > plausible {
            return Ok(Err(format!(
                "index block of {len} bytes is implausibly large"
            )));
        }
        let idx = if len + rpack::FOOTER_LEN <= tail_len {
            let start = usize_from(tail_len - rpack::FOOTER_LEN - len);
            tail.slice(start..start + usize_from(len))
        } else {
            self.os
                .get_range(&key, off..off + len)
                .await
                .map_err(|e| self.err(format!("reading {key}"), e))?
        };
        let entries = match rpack::decode_index(&idx, &check, off) {
            Ok(es) => es,
            Err(r) => return Ok(Err(r)),
        };
        let mut c = Vec::with_capacity(HEAD + idx.len());
        c.extend_from_slice(&id.0);
        c.extend_from_slice(&size.to_le_bytes());
        c.extend_from_slice(&check);
        c.extend_from_slice(&off.to_le_bytes());
        c.extend_from_slice(&idx);
        // The cache is derived data: written atomically, not fsynced.
        if let Ok(f) = crate::store::durable::AtomicFile::create(&cpath, &Default::default()) {
            let mut f = f;
            if std::io::Write::write_all(&mut f, &c).is_ok() {
                let _ = f.commit_no_sync();
            }
        }
        Ok(Ok(entries))
    }
}

/// A pack's index entries, or why the pack object is damaged.
pub(crate) type PackIndex = std::result::Result<Vec<rpack::Entry>, String>;

/// Would `object_store`'s `LocalFileSystem` refuse `p` (a file name ending in `#<digits>`)?
fn local_fs_reserved(p: &OPath) -> bool {
    p.filename()
        .and_then(|f| f.split_once('#'))
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What a remote holds (`Remote::inventory`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Pack objects.
    pub packs: u64,
    /// Bytes of all pack objects.
    pub pack_bytes: u64,
    /// Chunk records in all packs, and how many distinct chunks they hold.
    pub chunk_records: u64,
    /// Distinct chunk ids among them.
    pub distinct_chunks: u64,
    /// Manifest objects (versions).
    pub manifests: u64,
    /// Event objects (deletes, updates).
    pub events: u64,
    /// Objects of the plain layout (`push --layout files`), data and records.
    pub file_objects: u64,
    /// Bytes of those objects.
    pub file_bytes: u64,
}

impl Remote {
    /// Count what the remote holds, reading every pack's index (not cached).
    pub fn inventory(&self) -> Result<Inventory> {
        self.rt.block_on(async {
            let packs = self.list_ids("packs", "pack").await?;
            let mut inv = Inventory {
                packs: packs.len() as u64,
                pack_bytes: packs.iter().map(|p| p.1).sum(),
                ..Inventory::default()
            };
            let scratch = scratch_dir()?;
            let mut distinct = std::collections::HashSet::new();
            let read = async {
                for (id, size) in packs {
                    let entries = self
                        .pack_index(&scratch, id, size)
                        .await?
                        .map_err(|r| self.damaged(format!("pack {id}"), r))?;
                    for e in entries {
                        inv.chunk_records += 1;
                        distinct.insert(e.id);
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            let _ = std::fs::remove_dir_all(&scratch);
            read?;
            inv.distinct_chunks = distinct.len() as u64;
            inv.manifests = self.list_ids("manifests", "manifest").await?.len() as u64;
            inv.events = self.list_ids("events", "event").await?.len() as u64;
            let files = self.list_dir("files").await?;
            inv.file_objects = files.len() as u64;
            inv.file_bytes = files.iter().map(|f| f.1).sum();
            Ok(inv)
        })
    }
}

fn scratch_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("ml-dash-scratch-{}", Id::generate()));
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    Ok(d)
}

/// Where rotten records are reported: `damaged/<pack id>-<offset>.bad`.
const BAD_RECORDS: &str = "damaged";

fn bad_record_name(pack: Id, offset: u64) -> String {
    format!("{pack}-{offset}.bad")
}

fn parse_bad_record_name(name: &str) -> Option<(Id, u64)> {
    let (pack, offset) = name.strip_suffix(".bad")?.split_once('-')?;
    Some((pack.parse().ok()?, offset.parse().ok()?))
}

/// What the remote holds: each chunk id with one pack holding it (the oldest pack), and
/// further copies of it.
#[derive(Default)]
pub(crate) struct RemoteChunks {
    pub chunks: HashMap<ChunkId, (Id, rpack::Entry)>,
    /// Copies of chunks in other packs (tried when the first turns out rotten).
    pub others: HashMap<ChunkId, Vec<(Id, rpack::Entry)>>,
    /// Records a pull reported rotten: tried last, and a chunk held only in such records
    /// counts as missing (a push sends it again).
    pub suspects: HashMap<ChunkId, Vec<(Id, rpack::Entry)>>,
    pub bad_records: u64,
    pub packs: u64,
    /// Bytes of chunk records in all packs (duplicates included).
    pub bytes: u64,
    /// Pack objects left out because they are damaged, one line each.
    pub damaged: Vec<Finding<PullKind>>,
}

/// One remote pack object, as listed.
pub(crate) struct RemotePack {
    pub id: Id,
    pub size: u64,
    /// Last modified, milliseconds since the epoch (the server's clock).
    pub modified: i64,
    pub index: PackIndex,
}

/// Every remote pack and the records reported rotten.
pub(crate) struct RemotePacks {
    pub packs: Vec<RemotePack>,
    pub bad_records: HashSet<(Id, u64)>,
}

impl RemoteChunks {
    /// The map of `packs` (in id order, so the oldest copy of a chunk comes first), with the
    /// records in `bad` as suspects and packs whose index cannot be read left out.
    pub(crate) fn from_indexes(
        packs: impl IntoIterator<Item = (Id, PackIndex)>,
        bad: &HashSet<(Id, u64)>,
    ) -> RemoteChunks {
        let mut map = RemoteChunks::default();
        for (pack, entries) in packs {
            let entries = match entries {
                Ok(entries) => entries,
                Err(reason) => {
                    map.damaged.push(Finding::new(
                        PullKind::PackLeftOut,
                        format!("packs/{}: {reason} (left out)", rpack::object_name(pack)),
                    ));
                    continue;
                }
            };
            map.packs += 1;
            for e in entries {
                map.bytes += e.record_len();
                if bad.contains(&(pack, e.offset)) {
                    map.bad_records += 1;
                    map.suspects.entry(e.id).or_default().push((pack, e));
                    continue;
                }
                match map.chunks.entry(e.id) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((pack, e));
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {
                        map.others.entry(e.id).or_default().push((pack, e));
                    }
                }
            }
        }
        map.damaged.sort();
        map
    }

    /// Settle which copy of each chunk to use: one whose delta chain decodes in the fewest
    /// steps (so chains always end, and never loop), among those a copy outside `avoid`
    /// (packs a remote gc marked) and then the oldest pack. Copies that do not decode are
    /// dropped; a chunk with none counts as missing (a push sends it again, a pull reports the
    /// versions that need it). `held` says which chunks the caller already has: they decode
    /// in no steps (a pull needs only their deltas' records).
    pub(crate) fn settle(&mut self, avoid: &HashSet<Id>, held: &dyn Fn(&ChunkId) -> bool) {
        // Records reported rotten do not count: a chunk only they hold is missing, and they
        // stay only as a last resort for a chunk that decodes without them.
        let all: Vec<(ChunkId, Option<ChunkId>)> = self
            .chunks
            .values()
            .chain(self.others.values().flatten())
            .map(|(_, e)| (e.id, e.base))
            .collect();
        let depth = decode_depths(&all, held);
        let copy_depth = |e: &rpack::Entry| match e.base {
            None => Some(0),
            Some(b) if held(&b) => Some(1),
            Some(b) => depth.get(&b).map(|d| d + 1),
        };
        let mut ids: Vec<ChunkId> = self
            .chunks
            .keys()
            .chain(self.others.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let mut copies = self.take_copies(&id);
            let Some(&best) = depth.get(&id) else {
                continue;
            };
            copies.retain(|(_, e)| copy_depth(e).is_some());
            copies.sort_by_key(|(p, e)| (copy_depth(e) > Some(best), avoid.contains(p), *p));
            self.put_copies(id, copies);
        }
        // A reported record stays a last resort when it would decode (a whole record, or a
        // delta on a base that decodes without reported records).
        for v in self.suspects.values_mut() {
            v.retain(|(_, e)| copy_depth(e).is_some());
        }
        self.suspects.retain(|_, v| !v.is_empty());
    }

    /// Leave out every copy in `packs` (packs a remote gc marked for deletion): a chunk whose
    /// every copy is there counts as missing, so a push sends it again.
    pub(crate) fn without_packs(&mut self, packs: &HashSet<Id>) {
        if packs.is_empty() {
            return;
        }
        let ids: Vec<ChunkId> = self.chunks.keys().copied().collect();
        for id in ids {
            let mut copies = self.take_copies(&id);
            copies.retain(|(p, _)| !packs.contains(p));
            self.put_copies(id, copies);
        }
        for v in self.suspects.values_mut() {
            v.retain(|(p, _)| !packs.contains(p));
        }
        self.suspects.retain(|_, v| !v.is_empty());
    }
    /// Remove the copies of `id` not reported rotten, the first one first.
    fn take_copies(&mut self, id: &ChunkId) -> Vec<(Id, rpack::Entry)> {
        let mut copies: Vec<(Id, rpack::Entry)> = self.chunks.remove(id).into_iter().collect();
        copies.extend(self.others.remove(id).unwrap_or_default());
        copies
    }

    /// Put back `copies` of `id` in order: the first is the one to use, the rest are tried
    /// after it. No copies: the chunk counts as missing.
    fn put_copies(&mut self, id: ChunkId, copies: Vec<(Id, rpack::Entry)>) {
        let mut it = copies.into_iter();
        if let Some(first) = it.next() {
            self.chunks.insert(id, first);
            let rest: Vec<_> = it.collect();
            if !rest.is_empty() {
                self.others.insert(id, rest);
            }
        }
    }

    /// Every copy of chunk `id`: the first good one, other good ones, then reported ones.
    pub(crate) fn copies(&self, id: &ChunkId) -> impl Iterator<Item = &(Id, rpack::Entry)> {
        self.chunks
            .get(id)
            .into_iter()
            .chain(self.others.get(id).into_iter().flatten())
            .chain(self.suspects.get(id).into_iter().flatten())
    }
}

/// How many delta steps each chunk takes to decode over `copies` (every copy: its chunk and
/// its delta base, `None` for a whole record): 0 with a whole copy or when `held`, else one
/// more than the fewest of its bases, at most `delta::MAX_DEPTH`. Chunks that do not decode
/// (a base is missing, the chain loops or is too long) are absent. Remote gc chooses the copy
/// it keeps by it, and pushes, pulls and remote reads the copy they use, so that neither
/// relies on a copy whose base is gone.
pub(crate) fn decode_depths(
    copies: &[(ChunkId, Option<ChunkId>)],
    held: &dyn Fn(&ChunkId) -> bool,
) -> HashMap<ChunkId, u8> {
    let mut depth: HashMap<ChunkId, u8> = HashMap::new();
    for (c, base) in copies {
        if base.is_none() || held(c) {
            depth.insert(*c, 0);
        }
    }
    for _ in 0..crate::format::delta::MAX_DEPTH {
        let mut changed = false;
        for (c, base) in copies {
            let Some(b) = base else { continue };
            let db = match depth.get(b) {
                Some(d) => *d,
                None if held(b) => 0,
                None => continue,
            };
            let d = db + 1;
            if d <= crate::format::delta::MAX_DEPTH && depth.get(c).is_none_or(|x| d < *x) {
                depth.insert(*c, d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    depth
}

/// Part size for a multipart upload of `len` bytes: at least 8 MiB, and large enough that the
/// upload needs at most 9,000 parts (S3 and compatible servers allow 10,000, each <= 5 GiB).
pub fn part_size_for(len: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let need = len.div_ceil(9_000).div_ceil(MIB) * MIB;
    need.clamp(8 * MIB, 5 * 1024 * MIB) as usize
}

impl Remote {
    /// Collect garbage on this remote: delete pack objects no live remote version needs and
    /// rewrite packs that became mostly garbage, in two phases a grace period apart so that
    /// pushes running meanwhile lose nothing (see `RemoteGcOptions`). Remote manifests and
    /// pack indexes are cached in a scratch directory removed afterwards; `Store::gc_remote`
    /// uses the store's cache instead.
    pub fn gc(&self, o: &RemoteGcOptions) -> Result<RemoteGcReport> {
        let scratch = scratch_dir()?;
        let r = self.gc_with_cache(o, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        r
    }
}

impl crate::store::Store {
    /// `Remote::gc` with this store's cache of the remote's manifests and pack indexes (which
    /// later pushes, pulls and remote reads use too).
    pub fn gc_remote(&self, remote: &Remote, o: &RemoteGcOptions) -> Result<RemoteGcReport> {
        remote.gc_with_cache(o, &self.remote_cache(remote))
    }

    /// Where remote pack indexes are cached for `remote`.
    pub(crate) fn remote_cache(&self, remote: &Remote) -> PathBuf {
        let h = blake3::hash(remote.url.as_bytes());
        self.dir("cache")
            .join("remote")
            .join(crate::format::digest::hex_encode(&h.as_bytes()[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        let (s, b, p) = parse_url("s3://bucket-1/a//b/").unwrap();
        assert_eq!((s, b.as_str(), p.as_str()), ("s3", "bucket-1", "a/b"));
        let (_, b, p) = parse_url("s3://bucket").unwrap();
        assert_eq!((b.as_str(), p.as_str()), ("bucket", ""));
        for bad in [
            "http://x/y",
            "s3://",
            "s3:///p",
            "s3://Bucket/p",
            "s3://b/../p",
            "s3://b/./p",
            "file://relative",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn part_sizes_stay_inside_part_limits() {
        for len in [0u64, 1, 8 << 20, 100 << 30, 1 << 40, 5 << 40] {
            let p = part_size_for(len) as u64;
            assert!(p >= 8 << 20);
            assert!(len.div_ceil(p) <= 9_000, "{len}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = RemoteConfig {
            url: "s3://b/p".into(),
            access_key_id: Some("AKIDSECRET".into()),
            secret_access_key: Some("SUPERSECRET".into()),
            ..RemoteConfig::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("SECRET"), "{s}");
    }
}
