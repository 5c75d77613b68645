//! Shared helpers: temp dirs, deterministic data, the built binary, and on-disk inspection.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ml_dash::Scope;
use ml_dash::{Experiment, FileRecord, ListFilter, Store};
use sha2::Digest as _;

/// The `ml-dash` binary (package `ml-dash-cli`, a workspace member of its own), built with
/// this test run's profile the first time a test asks for it: a no-op when `cargo test` at the
/// workspace root already built it, and never a stale binary when only the engine's tests run.
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile dir>/deps/it-<hash> → target/<profile dir>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps");
        let profile = if dir.file_name().is_some_and(|n| n == "release") {
            "release"
        } else {
            "test"
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "ml-dash-cli",
                "--bin",
                "ml-dash",
                "--profile",
                profile,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo to build the ml-dash binary");
        assert!(st.success(), "cargo could not build the ml-dash binary");
        let bin = dir.join("ml-dash");
        assert!(bin.is_file(), "no binary at {}", bin.display());
        bin
    })
}

/// A fresh temporary directory (removed on drop).
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ml-dash-it-")
        .tempdir()
        .expect("create temp dir")
}

pub use ml_dash::testing::{XorShift, random_bytes, usize_from};

/// SHA-256 as 64 lowercase hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = sha2::Sha256::digest(data);
    ml_dash::testing::digest::hex_encode(d.as_slice())
}

/// Write `data` to `dir/name` (creating parent directories) and return the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap();
    p
}

/// Open experiment `experiment` of `project` (namespace `local`) in the store at `root`.
pub fn experiment(root: &Path, project: &str, experiment: &str) -> Experiment {
    Experiment::new(experiment, project)
        .local_path(root)
        .open()
        .expect("open experiment")
}

/// Every version in the store, deleted ones included.
pub fn list_everything(store: &Store) -> Vec<FileRecord> {
    store
        .list(&ListFilter {
            scope: Scope::default(),
            all_versions: true,
            include_deleted: true,
            ..Default::default()
        })
        .expect("list")
}

/// Latest live version of every path in the store.
pub fn list_live(store: &Store) -> Vec<FileRecord> {
    store.list(&ListFilter::default()).expect("list")
}

/// Read a whole version through the `Read` implementation.
pub fn read_via_reader(exp: &Experiment, full_path: &str, version: Option<u32>) -> Vec<u8> {
    use std::io::Read;
    let mut r = exp.open(full_path, version).expect("open for reading");
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read_to_end");
    v
}

/// Read a whole version through the parallel download path.
pub fn read_via_download(exp: &Experiment, full_path: &str, version: Option<u32>) -> Vec<u8> {
    let mut v = Vec::new();
    exp.download_to(full_path, version, &mut v)
        .expect("download_to");
    v
}

// ---------------------------------------------------------------------------------------------
// The binary.

/// Exit code, stdout, stderr of one run.
pub type Run = (i32, String, String);

fn command(root: Option<&Path>, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("ML_DASH_ROOT").current_dir(cwd);
    if let Some(r) = root {
        c.arg("--root").arg(r);
    }
    c.args(args);
    c
}

fn code_of(s: std::process::ExitStatus) -> i32 {
    // Killed by a signal (e.g. an abort) shows as -1, which no assertion accepts as success.
    s.code().unwrap_or(-1)
}

/// Run the binary with `--root root`, in `root`'s parent directory, stdin empty.
pub fn run(root: &Path, args: &[&str]) -> Run {
    let (code, out, err) = run_bytes(root, args, None);
    (code, String::from_utf8(out).expect("stdout is UTF-8"), err)
}

/// Like `run`, with stdout as raw bytes and optional bytes on stdin.
pub fn run_bytes(root: &Path, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
    let cwd = root.parent().expect("root has a parent");
    run_cmd(command(Some(root), cwd, args), stdin)
}

/// Run the binary without `--root`, in `cwd`, with extra environment variables.
pub fn run_env(cwd: &Path, envs: &[(&str, &Path)], args: &[&str]) -> Run {
    let mut c = command(None, cwd, args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let (code, out, err) = run_cmd(c, None);
    (code, String::from_utf8(out).expect("stdout is UTF-8"), err)
}

fn run_cmd(mut c: Command, stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn ml-dash");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let input = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let writer = std::thread::spawn(move || {
        // The child may exit without reading (an argument error): ignore a broken pipe.
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for ml-dash");
    writer.join().expect("stdin writer");
    (
        code_of(out.status),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start the binary in the background (stdin closed, output captured).
pub fn spawn(root: &Path, args: &[&str]) -> std::process::Child {
    let cwd = root.parent().expect("root has a parent");
    command(Some(root), cwd, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ml-dash")
}

/// Assert a run succeeded (exit 0), showing its stderr otherwise.
#[track_caller]
pub fn ok(r: &Run) -> &str {
    assert_eq!(r.0, 0, "expected success; stderr: {}", r.2);
    assert!(!r.2.contains("panicked"), "stderr: {}", r.2);
    &r.1
}

/// Assert a run failed cleanly: non-zero exit, exactly one line on stderr, no panic.
#[track_caller]
pub fn refused(r: &Run, what: &str) {
    assert_ne!(
        r.0, 0,
        "{what}: expected failure, got success; stdout: {}",
        r.1
    );
    assert_ne!(r.0, 101, "{what}: exit 101 is a panic; stderr: {}", r.2);
    assert!(!r.2.contains("panicked"), "{what}: panic: {}", r.2);
    let lines: Vec<&str> = r.2.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be one line, got {lines:?}"
    );
    assert!(!lines[0].trim().is_empty(), "{what}: empty error line");
}

/// Parse `--json` output: one JSON object per non-empty line.
#[track_caller]
pub fn json_lines(stdout: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    assert!(
        stdout.is_empty() || stdout.ends_with('\n'),
        "output must end with a newline: {stdout:?}"
    );
    stdout
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("line is not a JSON object: {l:?} ({other:?})"),
        })
        .collect()
}

pub use ml_dash::testing::time::is_iso_utc;

// ---------------------------------------------------------------------------------------------
// On-disk inspection.

/// `<root>/packs/*.pack`, sorted.
pub fn pack_files(root: &Path) -> Vec<PathBuf> {
    files_with_ext(&root.join("packs"), "pack")
}

pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read_dir {}: {e}", dir.display()),
    };
    v.sort();
    v
}

/// Total size of every pack file.
pub fn packs_total(root: &Path) -> u64 {
    pack_files(root)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// Content of packs/, manifests/ and events/ (every file, name → bytes).
pub fn snapshot_durable(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for d in ["packs", "manifests", "events"] {
        let dir = root.join(d);
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            m.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                fs::read(&p).unwrap(),
            );
        }
    }
    m
}

pub const PACK_HEADER_LEN: u64 = 32;
pub const RECORD_HEADER_LEN: u64 = 52;

/// One chunk record of a pack: where its header starts and how many data bytes follow it.
#[derive(Clone, Copy, Debug)]
pub struct PackRecord {
    pub offset: u64,
    pub stored_len: u64,
    pub codec: u8,
}

impl PackRecord {
    pub fn data_start(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN
    }
    pub fn end(&self) -> u64 {
        self.data_start() + self.stored_len
    }
}

/// Walk a pack's complete records (format in docs/format.md); stops at a torn tail.
pub fn pack_records(path: &Path) -> Vec<PackRecord> {
    let b = fs::read(path).unwrap();
    assert!(b.len() as u64 >= PACK_HEADER_LEN, "pack too short");
    assert_eq!(&b[..8], b"MLDPACK\0", "pack magic");
    let mut out = Vec::new();
    let mut off = usize_from(PACK_HEADER_LEN);
    while off + usize_from(RECORD_HEADER_LEN) <= b.len() {
        let h = &b[off..off + usize_from(RECORD_HEADER_LEN)];
        assert_eq!(&h[..4], b"CHNK", "record magic at {off}");
        let stored = u64::from(u32::from_le_bytes(h[12..16].try_into().unwrap()));
        let rec = PackRecord {
            offset: off as u64,
            stored_len: stored,
            codec: h[4],
        };
        if usize_from(rec.end()) > b.len() {
            break;
        }
        off = usize_from(rec.end());
        out.push(rec);
    }
    out
}

/// XOR one byte of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut b = fs::read(path).unwrap();
    b[usize_from(offset)] ^= 0x5a;
    fs::write(path, b).unwrap();
}

/// Names of the entries of a directory, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Compare byte strings without dumping megabytes on failure: report lengths and the first
/// differing offset.
#[track_caller]
pub fn same_bytes(got: impl AsRef<[u8]>, want: &(impl AsRef<[u8]> + ?Sized), what: &str) {
    let (got, want) = (got.as_ref(), want.as_ref());
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: bytes differ (got {} bytes, want {}; first difference at {:?})",
            got.len(),
            want.len(),
            first.or(Some(got.len().min(want.len())))
        );
    }
}

/// Pack files on disk that the index does not know and that no `repair` held (packs a killed
/// or failed upload left, which gc deletes: `<id>.incoming` packs of uploads outside the store
/// lock, and `.pack` files), and how many packs are held. Call it only while no operation runs
/// on the store (it opens the index).
pub fn unknown_packs(root: &Path) -> Result<(Vec<PathBuf>, usize), String> {
    let held: std::collections::BTreeSet<ml_dash::Id> = fs::read_to_string(root.join("held"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let known: std::collections::BTreeSet<ml_dash::Id> = {
        let ix = ml_dash::testing::Index::open(&root.join("index"))
            .map_err(|e| format!("open the index: {e}"))?;
        ix.packs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    let mut unknown = files_with_ext(&root.join("packs"), "incoming");
    for p in pack_files(root) {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let id = ml_dash::testing::manifest::parse_file_name(&name, "pack")
            .ok_or_else(|| format!("unexpected file in packs/: {}", p.display()))?;
        if !known.contains(&id) && !held.contains(&id) {
            unknown.push(p);
        }
    }
    Ok((unknown, held.len()))
}

/// Make a FIFO at `p` (a source no upload may read).
pub fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().expect("run mkfifo");
    assert!(ok.success(), "mkfifo {}", p.display());
}

/// Run `write` (which writes into the FIFO at `p`) while a thread reads the FIFO to its end;
/// the bytes read, or `None` when `p` is no longer a FIFO afterwards (something renamed a file
/// over it; the reader is left waiting on the pipe it opened). The FIFO is opened for writing
/// here too once `write` returns, so that a `write` that never opened it cannot leave the
/// reader waiting.
pub fn drain_fifo_while(p: &Path, write: impl FnOnce()) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let path = p.to_path_buf();
    let reader = std::thread::spawn(move || {
        let mut got = vec![];
        fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        got
    });
    write();
    if !is_fifo(p) {
        return None;
    }
    // Without blocking: a reader that is gone leaves nobody to open against.
    use std::os::unix::fs::OpenOptionsExt as _;
    let nonblocking = rustix::fs::OFlags::NONBLOCK.bits().cast_signed();
    drop(
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(nonblocking)
            .open(p),
    );
    Some(reader.join().unwrap())
}

/// `p` is still a FIFO (nothing renamed a regular file over it).
fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

/// Random data with compressible stretches, so that a version mixes raw and coded records
/// (and spans several read-ahead batches when it is a few MiB long).
pub fn mixed(seed: u64, len: usize) -> Vec<u8> {
    let mut data = random_bytes(seed, len);
    for (k, block) in data.chunks_mut(768 << 10).enumerate() {
        if k % 3 == 1 {
            for (i, b) in block.iter_mut().enumerate() {
                *b = b"weights and biases "[(i + k) % 19];
            }
        }
    }
    data
}

/// Read everything from the current position with reads of `size` bytes, stopping at the
/// first error: the bytes read, and the error if there was one.
pub fn stream(r: &mut impl std::io::Read, size: usize) -> (Vec<u8>, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; size];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}
