//! `upload`, `list` and `download` against `ml-dash serve` (`--server URL`), for a machine
//! without a local store. The same output as the local commands: the server answers each file
//! with the record `list --json` prints.
//!
//! An upload streams the file in a multipart body with a CRC-32C of it in a part after the file
//! (computed as it is sent): the server stores the bytes only if what it received matches, and
//! records the SHA-256 it computed over them. A file that changes while it is sent is not
//! stored (its size and mtime are compared at the end, as the local upload does). A download lands
//! under a temporary name, is checked against the record's SHA-256, then renamed into place.
//! The token comes from `--token`, `ML_DASH_TOKEN`, or the ml-dash client's own file
//! (`$ML_DASH_CONFIG_DIR/tokens.json`, default `~/.dash/tokens.json`, key `ml-dash-token`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ml_dash::{FileRecord, validate};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::{ExpArgs, ScopeArgs};

/// A connection to a server.
pub struct Server {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// The token the ml-dash client would use.
fn client_token() -> Option<String> {
    let dir = std::env::var_os("ML_DASH_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".dash")))?;
    let bytes = std::fs::read(dir.join("tokens.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("ml-dash-token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// Percent-encode a query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Server {
    pub fn new(url: &str, token: Option<String>) -> Result<Server> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--server must be an http:// or https:// URL, not {url:?}");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Large bodies go in large pieces: fewer system calls on both sides.
            .input_buffer_size(PIECE)
            .output_buffer_size(PIECE)
            .build()
            .into();
        Ok(Server {
            base: url.trim_end_matches('/').to_string(),
            token: token.or_else(client_token),
            agent,
        })
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => r.header("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// Turn a response into its JSON body, or an error with the server's message.
    fn answer(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = resp.with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = resp.status();
        let body: Value = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            bail!("{what}: the server answered {status}: {msg}");
        }
        Ok(body)
    }

    fn post_json(&self, path: &str, body: &Value, what: &str) -> Result<Value> {
        let r = self
            .auth(self.agent.post(&format!("{}{path}", self.base)))
            .send_json(body);
        self.answer(what, r)
    }

    fn get(&self, path: &str, what: &str) -> Result<Value> {
        let r = self
            .auth(self.agent.get(&format!("{}{path}", self.base)))
            .call();
        self.answer(what, r)
    }

    /// The experiment's id, made if missing (its status left as it is).
    fn experiment(&self, e: &ExpArgs) -> Result<String> {
        let v = self.post_json(
            &format!("/api/namespaces/{}/nodes", enc(&e.namespace)),
            &json!({"type": "EXPERIMENT", "name": e.experiment, "projectSlug": e.project,
                    "parentId": "ROOT", "keepStatus": true}),
            "open the experiment",
        )?;
        v["experiment"]["id"]
            .as_str()
            .map(str::to_string)
            .context("the server's answer has no experiment id")
    }

    /// The folder node of `prefix` in the experiment (made if missing), or the experiment.
    fn folder(&self, ns: &str, exp_id: &str, prefix: &str) -> Result<String> {
        let mut parent = exp_id.to_string();
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            let v = self.post_json(
                &format!("/api/namespaces/{}/nodes", enc(ns)),
                &json!({"type": "FOLDER", "experimentId": exp_id, "parentId": parent,
                        "name": seg}),
                "make a folder",
            )?;
            parent = v["node"]["id"]
                .as_str()
                .context("the server's answer has no folder id")?
                .to_string();
        }
        Ok(parent)
    }

    /// Store one file; returns its record.
    #[allow(
        clippy::too_many_arguments,
        reason = "the fields of one upload, as the CLI has them"
    )]
    pub fn upload(
        &self,
        e: &ExpArgs,
        src: &Path,
        dir: &str,
        filename: &str,
        description: Option<&str>,
        tags: &[String],
        metadata: &Value,
    ) -> Result<FileRecord> {
        let exp_id = self.experiment(e)?;
        let parent = self.folder(&e.namespace, &exp_id, dir)?;
        // The file is checked (CRC-32C) as it is copied into the request, and the check follows
        // it: the server stores the bytes only if they arrived as they were read, and records
        // the SHA-256 it computed over them.
        let f = File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
        let m = f
            .metadata()
            .with_context(|| format!("cannot read {}", src.display()))?;
        let len = m.len();
        let boundary = boundary_for(src);
        let mut head = String::new();
        let mut field = |name: &str, value: &str| {
            head.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        };
        field("type", "FILE");
        field("experimentId", &exp_id);
        field("parentId", &parent);
        field("name", filename);
        field("trailer", "crc32c");
        if let Some(d) = description {
            field("description", d);
        }
        if !tags.is_empty() {
            if tags.iter().any(|t| t.contains(',')) {
                bail!("a tag sent to a server cannot contain ','");
            }
            field("tags", &tags.join(","));
        }
        if !metadata.is_null() {
            field("metadata", &metadata.to_string());
        }
        let quoted: String = filename
            .chars()
            .map(|c| if c == '"' || c.is_control() { '_' } else { c })
            .collect();
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{quoted}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        ));
        let mut body = CheckedBody {
            head: io::Cursor::new(head.into_bytes()),
            file: f,
            was: (len, m.modified().ok()),
            left: len,
            crc: ml_dash_server::crc32c::Crc32c::new(),
            tail: None,
            boundary: boundary.clone(),
        };
        let total = body.head.get_ref().len() as u64 + len + body.tail_len();
        let r = self
            .auth(self.agent.post(&format!(
                "{}/api/namespaces/{}/nodes",
                self.base,
                enc(&e.namespace)
            )))
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .header("Content-Length", &total.to_string())
            .send(ureq::SendBody::from_reader(&mut body));
        let v = self.answer(&format!("upload {}", src.display()), r)?;
        serde_json::from_value(v["node"]["record"].clone())
            .context("the server's answer has no file record")
    }

    /// Versions matching a filter, as `list` selects them (every page): the server's file
    /// objects, each with its node `id` and its `record`.
    fn search(&self, query: &[(&str, String)]) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let mut q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", enc(v)))
                .collect();
            q.push("order=path".into());
            q.push("limit=10000".into());
            q.push(format!("offset={}", out.len()));
            let v = self.get(&format!("/api/search/files?{}", q.join("&")), "list")?;
            let files = v["files"].as_array().cloned().unwrap_or_default();
            let n = files.len();
            out.extend(files);
            if n == 0 || v["hasMore"] != Value::Bool(true) {
                return Ok(out);
            }
        }
    }

    /// Records of the versions matching a filter.
    pub fn list(&self, query: &[(&str, String)]) -> Result<Vec<FileRecord>> {
        self.search(query)?
            .into_iter()
            .map(|f| {
                serde_json::from_value(f["record"].clone())
                    .context("the server's answer has no file record")
            })
            .collect()
    }

    /// Write one version's bytes to `out`, checking them against its SHA-256 as they arrive
    /// (the caller keeps them only if this returns Ok).
    pub fn download(
        &self,
        e: &ExpArgs,
        full: &str,
        version: Option<u32>,
        out: &mut dyn Write,
    ) -> Result<FileRecord> {
        let query = [
            ("namespace", e.namespace.clone()),
            ("project", e.project.clone()),
            ("experiment", e.experiment.clone()),
            ("path", full.to_string()),
            ("allVersions", version.is_some().to_string()),
        ];
        let found = self
            .search(&query)?
            .into_iter()
            .find(|f| version.is_none_or(|v| f["version"].as_u64() == Some(u64::from(v))));
        let (node, rec) = match found {
            Some(f) => (
                f["id"].as_str().unwrap_or_default().to_string(),
                serde_json::from_value::<FileRecord>(f["record"].clone())
                    .context("the server's answer has no file record")?,
            ),
            None => bail!(
                "not found: {}/{}/{}{full}{}",
                e.namespace,
                e.project,
                e.experiment,
                version.map(|v| format!(" version {v}")).unwrap_or_default()
            ),
        };
        let mut resp = self
            .auth(
                self.agent
                    .get(&format!("{}/api/nodes/{node}/download", self.base)),
            )
            .call()
            .with_context(|| format!("download: cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            bail!(
                "download: the server answered {status}: {}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
            );
        }
        // Received on this thread, hashed on another (the SHA-256 is the slower of the two).
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut hasher = BgHasher::start();
        let mut got = 0u64;
        loop {
            let mut buf = hasher.buffer();
            let mut filled = 0;
            while filled < buf.len() {
                let n = reader
                    .read(&mut buf[filled..])
                    .context("download: the transfer failed")?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            if buf.is_empty() {
                break;
            }
            got += buf.len() as u64;
            let buf = std::sync::Arc::new(buf);
            out.write_all(&buf)?;
            hasher.hash(buf)?;
        }
        let sum = hasher.finish()?;
        if got != rec.size_bytes || sum != rec.checksum.to_string() {
            bail!(
                "download of {full}: received {got} bytes with SHA-256 {sum}, the record says {} \
                 bytes with {}",
                rec.size_bytes,
                rec.checksum
            );
        }
        Ok(rec)
    }
}

/// Bytes per piece read, sent and hashed.
const PIECE: usize = 1 << 20;

/// SHA-256 on a thread of its own, fed pieces that are recycled once hashed.
struct BgHasher {
    tx: Option<std::sync::mpsc::SyncSender<std::sync::Arc<Vec<u8>>>>,
    back: std::sync::mpsc::Receiver<std::sync::Arc<Vec<u8>>>,
    done: Option<std::thread::JoinHandle<String>>,
}

impl BgHasher {
    fn start() -> BgHasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(4);
        let (back_tx, back) = std::sync::mpsc::channel();
        let done = std::thread::spawn(move || {
            let mut h = sha2::Sha256::new();
            for piece in rx {
                h.update(piece.as_slice());
                let _ = back_tx.send(piece);
            }
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        });
        BgHasher {
            tx: Some(tx),
            back,
            done: Some(done),
        }
    }

    /// A buffer of `PIECE` bytes (its contents undefined): one the hasher is done with, or a
    /// new one (so that no piece is zeroed before it is overwritten).
    fn buffer(&mut self) -> Vec<u8> {
        while let Ok(p) = self.back.try_recv() {
            if let Ok(mut v) = std::sync::Arc::try_unwrap(p) {
                v.resize(PIECE, 0);
                return v;
            }
        }
        vec![0; PIECE]
    }

    fn hash(&mut self, piece: std::sync::Arc<Vec<u8>>) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(piece).ok())
            .ok_or_else(|| io::Error::other("the hashing thread stopped"))
    }

    /// The SHA-256 of everything hashed, as 64 hex digits.
    fn finish(mut self) -> io::Result<String> {
        drop(self.tx.take());
        self.done
            .take()
            .and_then(|d| d.join().ok())
            .ok_or_else(|| io::Error::other("the hashing thread panicked"))
    }
}

/// A multipart boundary unlikely to occur in any file: 32 hex digits of a hash of this
/// process, the time and the source path.
fn boundary_for(src: &Path) -> String {
    let mut h = sha2::Sha256::new();
    h.update(std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(src.as_os_str().as_encoded_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("mldash{}", &hex[..32])
}

/// The body of an upload: the text parts, the file, then the `crc32c` part (computed as the
/// file is copied into the request) and the closing boundary. A file that grows, shrinks or
/// is written to while it is sent (its size or mtime differ at the end, as the local upload
/// checks) fails the read, so the request is cut off and the server stores nothing; bytes
/// damaged on the way fail the server's CRC check.
struct CheckedBody {
    head: io::Cursor<Vec<u8>>,
    file: File,
    /// The file's size and mtime when it was opened.
    was: (u64, Option<std::time::SystemTime>),
    /// File bytes still to send.
    left: u64,
    crc: ml_dash_server::crc32c::Crc32c,
    tail: Option<io::Cursor<Vec<u8>>>,
    boundary: String,
}

impl CheckedBody {
    fn tail_text(&self, crc: u32) -> String {
        let b = &self.boundary;
        format!(
            "\r\n--{b}\r\nContent-Disposition: form-data; name=\"crc32c\"\r\n\r\n{crc:08x}\r\n--{b}--\r\n"
        )
    }

    fn tail_len(&self) -> u64 {
        self.tail_text(0).len() as u64
    }
}

impl Read for CheckedBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.head.read(out)?;
        if n > 0 {
            return Ok(n);
        }
        if let Some(tail) = &mut self.tail {
            return tail.read(out);
        }
        if self.left > 0 {
            let want = usize::try_from(self.left.min(out.len() as u64)).unwrap_or(out.len());
            let n = self.file.read(&mut out[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ));
            }
            self.crc.update(&out[..n]);
            self.left -= n as u64;
            return Ok(n);
        }
        let m = self.file.metadata()?;
        if self.file.read(&mut [0u8])? > 0 || (m.len(), m.modified().ok()) != self.was {
            return Err(io::Error::other("the file changed while it was sent"));
        }
        let tail = self.tail_text(self.crc.value());
        let mut tail = io::Cursor::new(tail.into_bytes());
        let n = tail.read(out)?;
        self.tail = Some(tail);
        Ok(n)
    }
}

/// `ml-dash --server URL upload ...`: each file is its own upload (not one commit).
#[allow(
    clippy::too_many_arguments,
    reason = "the arguments of `upload`, as clap parsed them"
)]
pub fn upload(
    s: &Server,
    files: &[PathBuf],
    exp: &ExpArgs,
    prefix: &str,
    to: Option<&str>,
    description: Option<&str>,
    tags: &[String],
    metadata: &Value,
    json: bool,
) -> Result<i32> {
    let prefix = validate::prefix(prefix)?;
    if to.is_some() && files.len() > 1 {
        bail!("--to names one file, but {} files were given", files.len());
    }
    let mut plan = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            bail!("--server uploads files, not standard input");
        }
        let m = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        if m.is_dir() {
            bail!(
                "{} is a directory: through --server, upload its files (a directory is one commit \
                 only into a local store, with --root)",
                f.display()
            );
        }
        if !m.is_file() {
            bail!("{} is not a regular file", f.display());
        }
        let name = match to {
            Some(t) => t.to_string(),
            None => f
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| {
                    format!("{}: no UTF-8 file name; give one with --to", f.display())
                })?
                .to_string(),
        };
        let (dir, filename) = validate::target(&prefix, &name)?;
        plan.push((f, dir, filename));
    }
    let mut out = io::stdout().lock();
    for (f, dir, filename) in plan {
        let r = s.upload(exp, f, &dir, &filename, description, tags, metadata)?;
        crate::commands::print_record(&mut out, &r, json)?;
    }
    Ok(0)
}

/// `ml-dash --server URL list ...`
#[allow(
    clippy::too_many_arguments,
    reason = "the arguments of `list`, as clap parsed them"
)]
pub fn list(
    s: &Server,
    scope: &ScopeArgs,
    prefix: Option<&str>,
    tags: &[String],
    glob: Option<&str>,
    all_versions: bool,
    deleted: bool,
    json: bool,
) -> Result<i32> {
    let mut q: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("namespace", &scope.namespace),
        ("project", &scope.project),
        ("experiment", &scope.experiment),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    if let Some(p) = prefix {
        q.push(("prefix", validate::prefix(p)?));
    }
    if !tags.is_empty() {
        q.push(("tags", tags.join(",")));
    }
    if let Some(g) = glob {
        q.push(("pattern", g.to_string()));
    }
    q.push(("allVersions", all_versions.to_string()));
    q.push(("deleted", deleted.to_string()));
    let recs = s.list(&q)?;
    let mut out = io::stdout().lock();
    crate::commands::print_list(&mut out, &recs, json)?;
    Ok(0)
}

/// `ml-dash --server URL download ...`
pub fn download(
    s: &Server,
    exp: &ExpArgs,
    full: &str,
    version: Option<u32>,
    output: Option<&str>,
    json: bool,
) -> Result<i32> {
    let (_, name) = validate::split_full(full)?;
    if output == Some("-") {
        let mut so = io::BufWriter::with_capacity(1 << 20, io::stdout());
        s.download(exp, full, version, &mut so)?;
        so.flush()?;
        return Ok(0);
    }
    let dest = PathBuf::from(output.unwrap_or(&name));
    if ml_dash::is_special_destination(&dest) {
        // A device or a pipe (`/dev/null`) is written in place: it cannot be renamed over.
        let mut out = OpenLate {
            dest: &dest,
            file: None,
        };
        let r = s.download(exp, full, version, &mut out)?;
        out.flush()?;
        crate::commands::print_downloaded(&r, &dest, json)?;
        return Ok(0);
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    let r = s.download(exp, full, version, &mut tmp.1);
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp.0);
            return Err(e);
        }
    };
    tmp.1.flush()?;
    drop(tmp.1);
    std::fs::rename(&tmp.0, &dest)
        .with_context(|| format!("cannot move the download to {}", dest.display()))?;
    crate::commands::print_downloaded(&r, &dest, json)?;
    Ok(0)
}

/// A device or named pipe, opened at the first write or flush: a missing file or a refusal by
/// the server is reported before the download waits for a reader of the pipe.
struct OpenLate<'a> {
    dest: &'a Path,
    file: Option<io::BufWriter<File>>,
}

impl OpenLate<'_> {
    fn file(&mut self) -> io::Result<&mut io::BufWriter<File>> {
        if self.file.is_none() {
            let f = ml_dash::special_destination(self.dest)
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::other("no longer a device or a pipe"))?;
            self.file = Some(io::BufWriter::with_capacity(1 << 20, f));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

impl Write for OpenLate<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.file()?.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

/// A new file beside the destination, for the bytes until they are verified.
fn tempfile_in(dir: &Path) -> Result<(PathBuf, io::BufWriter<File>)> {
    for i in 0..100u32 {
        let p = dir.join(format!(".ml-dash-download-{}-{i}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, io::BufWriter::with_capacity(1 << 20, f))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot write in {}", dir.display())),
        }
    }
    bail!("cannot make a temporary file in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::CheckedBody;
    use std::fs::File;
    use std::io::{self, Read, Write};

    fn body(path: &std::path::Path) -> (CheckedBody, u64) {
        let f = File::open(path).unwrap();
        let m = f.metadata().unwrap();
        let b = CheckedBody {
            head: io::Cursor::new(b"HEAD".to_vec()),
            file: f,
            was: (m.len(), m.modified().ok()),
            left: m.len(),
            crc: ml_dash_server::crc32c::Crc32c::new(),
            tail: None,
            boundary: "B".into(),
        };
        let total = 4 + m.len() + b.tail_len();
        (b, total)
    }

    fn scratch(name: &str, data: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ml-dash-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn the_body_is_the_head_the_file_and_its_crc() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let p = scratch("whole.bin", &data);
        let (mut b, total) = body(&p);
        let mut out = Vec::new();
        b.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, total);
        assert!(out.starts_with(b"HEAD"));
        assert_eq!(&out[4..4 + data.len()], &data[..]);
        let crc = format!("{:08x}", ml_dash_server::crc32c::crc32c(&data));
        let tail = String::from_utf8(out[4 + data.len()..].to_vec()).unwrap();
        assert_eq!(
            tail,
            format!(
                "\r\n--B\r\nContent-Disposition: form-data; name=\"crc32c\"\r\n\r\n{crc}\r\n--B--\r\n"
            )
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_file_that_changes_while_it_is_sent_fails_the_body() {
        let data = vec![7u8; 3 << 20];
        // Grows; shrinks; written in place (same size, later mtime).
        for (i, change) in ["grow", "shrink", "rewrite"].into_iter().enumerate() {
            let p = scratch(&format!("change{i}.bin"), &data);
            let (mut b, _) = body(&p);
            let mut buf = vec![0u8; 1 << 20];
            b.read_exact(&mut buf).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            match change {
                "grow" => {
                    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                    f.write_all(b"more").unwrap();
                }
                "shrink" => File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(1 << 20)
                    .unwrap(),
                _ => {
                    let mut f = File::options().write(true).open(&p).unwrap();
                    f.write_all(&[8u8; 16]).unwrap();
                    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
                    f.set_modified(later).unwrap();
                }
            }
            let err = io::copy(&mut b, &mut io::sink()).unwrap_err();
            assert!(
                err.to_string().contains("while it was sent"),
                "{change}: {err}"
            );
            std::fs::remove_file(p).unwrap();
        }
    }
}
