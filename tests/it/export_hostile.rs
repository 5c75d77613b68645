//! `ml-dash export` against someone who can write in the export directory: folders swapped
//! for symbolic links to places outside it (before a run and while it runs), ledgers edited
//! to name files outside it, a file and a folder of the same name in one experiment, and
//! prefixes too long to ever be exported.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};

use ml_dash::{Experiment, NewVersion};

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Every entry under `dir`, not following symbolic links: relative path → what it is
/// (`dir`, `file <sha256> ino <n>`, `link -> <target>`, `other`). A file replaced by a rename
/// shows as a new inode even when the bytes are the same.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(base, &p, out);
                "dir".to_string()
            } else if m.is_file() {
                format!(
                    "file {} ino {}",
                    sha256_hex(&fs::read(&p).unwrap()),
                    m.ino()
                )
            } else {
                "other".to_string()
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Where listings differ (for a readable failure).
fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => d.push(format!("removed {k}")),
            Some(w) if w != v => d.push(format!("changed {k}: {v} -> {w}")),
            _ => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        d.push(format!("new {k}"));
    }
    d
}

#[track_caller]
fn assert_untouched(before: &BTreeMap<String, String>, dir: &Path, when: &str) {
    let d = diff(before, &listing(dir));
    let count = |kind: &str| d.iter().filter(|l| l.starts_with(kind)).count();
    assert!(
        d.is_empty(),
        "{when}: export changed entries outside its directory ({} removed, {} changed, {} new): \
         {:?}",
        count("removed"),
        count("changed"),
        count("new"),
        &d[..d.len().min(20)]
    );
}

/// Run `export DIR --json`: it may report problems (exit 1) but never fails otherwise.
fn export(root: &Path, dir: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["export", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let r = run(root, &args);
    assert!(!r.2.contains("panicked"), "{}", r.2);
    assert!(r.0 == 0 || r.0 == 1, "export exit {}: {}", r.0, r.2);
    let v = serde_json::from_str(r.1.trim())
        .unwrap_or_else(|_| panic!("export printed {:?}, stderr {:?}", r.1, r.2));
    (r.0, v)
}

fn put(exp: &Experiment, full_path: &str, bytes: &[u8]) {
    let key = exp.file_key(full_path).unwrap();
    exp.store()
        .put_reader(bytes, &key, NewVersion::default(), None)
        .unwrap();
}

fn problems(sum: &Value) -> Vec<String> {
    sum["problems"]
        .as_array()
        .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The two layouts: export arguments and the experiment directory under DIR.
const LAYOUTS: [(&str, &str); 2] = [("tree", "p/e"), ("ml-dash", "local/p/e")];

/// Swap two names atomically (`renameat2(RENAME_EXCHANGE)`): at every instant each name is
/// one of the two things.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    unsafe extern "C" {
        fn renameat2(
            olddirfd: i32,
            oldpath: *const std::ffi::c_char,
            newdirfd: i32,
            newpath: *const std::ffi::c_char,
            flags: u32,
        ) -> i32;
    }
    const AT_FDCWD: i32 = -100;
    const RENAME_EXCHANGE: u32 = 2;
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe { renameat2(AT_FDCWD, a.as_ptr(), AT_FDCWD, b.as_ptr(), RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// Removal through a folder replaced by a symbolic link, with an edited ledger.

fn removal_never_follows_links(layout: &str, exp_rel: &str) {
    let dir = tmp();
    let base = dir.path();
    let root = base.join("store");
    let out = base.join("out");
    let exp = experiment(&root, "p", "e");
    let files = [
        ("/sub/a.bin", random_bytes(1, 3000)),
        ("/sub/b.bin", random_bytes(2, 5000)),
        ("/sub/deep/c.bin", random_bytes(3, 700)),
        ("/keep.bin", random_bytes(4, 100)),
        ("/gone.bin", random_bytes(5, 200)),
    ];
    for (p, b) in &files {
        put(&exp, p, b);
    }
    let (code, sum) = export(&root, &out, &["--layout", layout]);
    assert_eq!(code, 0, "{sum}");
    let e = out.join(exp_rel);

    // A user moves the folder out of DIR and links it back: same names, same bytes.
    let outside = base.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::rename(e.join("files/sub"), outside.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), e.join("files/sub")).unwrap();
    // Someone who can write in DIR links other outside files in and edits the ledger to claim
    // them, by their exact size and SHA-256.
    let victims = outside.join("victims");
    let victim = random_bytes(6, 4096);
    write_file(&victims, "victim.txt", &victim);
    std::os::unix::fs::symlink(&victims, e.join("files/escape")).unwrap();
    std::os::unix::fs::symlink(victims.join("victim.txt"), e.join("files/linkfile")).unwrap();
    let abs = victims
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let up = "../".repeat(exp_rel.split('/').count() + 1);
    if layout == "tree" {
        let ledger = e.join(".ml-dash-records.json");
        let mut recs: Vec<Value> = serde_json::from_slice(&fs::read(&ledger).unwrap()).unwrap();
        let claim = |path: &str, name: &str| {
            let mut r = recs[0].clone();
            r["path"] = json!(path);
            r["filename"] = json!(name);
            r["version"] = json!(99);
            r["sizeBytes"] = json!(victim.len());
            r["checksum"] = json!(sha256_hex(&victim));
            r
        };
        let extra = [
            claim("/escape", "victim.txt"),
            claim("/", "linkfile"),
            claim(&format!("/{abs}"), "victim.txt"),
            claim(&format!("/{up}outside/victims"), "victim.txt"),
            claim("/../../../../../../..", "victim.txt"),
        ];
        recs.extend(extra);
        fs::write(&ledger, serde_json::to_vec_pretty(&recs).unwrap()).unwrap();
    } else {
        let ledger = e.join(".ml-dash-export.json");
        let mut l: Value = serde_json::from_slice(&fs::read(&ledger).unwrap()).unwrap();
        let entry = json!({"size": victim.len(), "sha256": sha256_hex(&victim)});
        for k in [
            "files/escape/victim.txt".to_string(),
            "files/linkfile".to_string(),
            format!("/{abs}/victim.txt"),
            format!("{up}outside/victims/victim.txt"),
            format!("files/{up}{up}outside/victims/victim.txt"),
        ] {
            l["files"][k] = entry.clone();
        }
        fs::write(&ledger, serde_json::to_vec_pretty(&l).unwrap()).unwrap();
    }

    // The versions go, so the next export wants to remove what it wrote for them.
    for p in ["/sub/a.bin", "/sub/b.bin", "/sub/deep/c.bin", "/gone.bin"] {
        exp.delete(p).unwrap();
    }
    let before = listing(&outside);
    assert!(before.len() >= 7, "{before:?}");
    let (_, sum) = export(&root, &out, &["--layout", layout]);
    assert_untouched(&before, &outside, layout);
    assert_eq!(fs::read(victims.join("victim.txt")).unwrap(), victim);

    // What export wrote inside DIR, reached without links, is still removed and kept as before.
    assert!(sum["removed"].as_u64() >= Some(1), "{sum}");
    let keep = fs::read_dir(e.join("files"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect::<Vec<PathBuf>>();
    let gone = |name: &str| {
        !keep.iter().any(|p| {
            p.file_name().unwrap() == name
                || (layout == "ml-dash" && p.is_dir() && !p.is_symlink() && p.join(name).exists())
        })
    };
    assert!(gone("gone.bin"), "the deleted path is removed: {keep:?}");
    assert!(!gone("keep.bin"), "the live path stays: {keep:?}");
    for link in ["sub", "escape", "linkfile"] {
        assert!(
            fs::symlink_metadata(e.join("files").join(link))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{link} left as it was"
        );
    }
}

#[test]
fn tree_removal_never_follows_a_folder_replaced_by_a_link() {
    let (layout, rel) = LAYOUTS[0];
    removal_never_follows_links(layout, rel);
}

#[test]
fn mldash_removal_never_follows_a_folder_replaced_by_a_link() {
    let (layout, rel) = LAYOUTS[1];
    removal_never_follows_links(layout, rel);
}

// ---------------------------------------------------------------------------------------------
// A folder swapped between a real directory and a link to outside while export runs.

const RACE_FILES: usize = 100;
const RACE_RUNS: usize = 6;

fn race_bytes(batch: usize, i: usize) -> Vec<u8> {
    random_bytes((batch * 1000 + i) as u64, 1000 + (i * 37) % 3000)
}

fn race_name(batch: usize, i: usize) -> String {
    format!("r{batch}-{i:03}.bin")
}

fn racing_swaps_never_redirect_export(layout: &str, exp_rel: &str) {
    let dir = tmp();
    let base = dir.path();
    let root = base.join("store");
    let out = base.join("out");
    let exp = experiment(&root, "p", "e");
    put(&exp, "/other.bin", b"beside the raced folder");
    for i in 0..RACE_FILES {
        put(
            &exp,
            &format!("/race/{}", race_name(0, i)),
            &race_bytes(0, i),
        );
    }
    let (code, sum) = export(&root, &out, &["--layout", layout]);
    assert_eq!(code, 0, "{sum}");
    let files = out.join(exp_rel).join("files");
    let real = files.join("race");

    // Outside: a copy of the raced folder (half the files with the same bytes, so a redirected
    // removal would find "its" files; half with other bytes) and, where the names are known in
    // advance, the files of every later run too.
    let outside = base.join("outside");
    let target = outside.join("target");
    fs::create_dir_all(&target).unwrap();
    fs::write(outside.join("canary"), b"beside the target").unwrap();
    let mut k = 0;
    for (rel, _) in listing(&real) {
        let p = real.join(&rel);
        if p.is_dir() {
            fs::create_dir_all(target.join(&rel)).unwrap();
        } else {
            let bytes = if k % 2 == 0 {
                fs::read(&p).unwrap()
            } else {
                b"outside bytes".to_vec()
            };
            write_file(&target, &rel, &bytes);
            k += 1;
        }
    }
    if layout == "tree" {
        for batch in 1..=RACE_RUNS {
            for i in (0..RACE_FILES).step_by(3) {
                let bytes = if i % 2 == 0 {
                    race_bytes(batch, i)
                } else {
                    b"outside bytes".to_vec()
                };
                write_file(&target, &race_name(batch, i), &bytes);
            }
        }
    }
    let link = files.join("race.link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let before = listing(&outside);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, real, link) = (stop.clone(), swaps.clone(), real.clone(), link.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Export may remove the folder when it empties it; keep trying.
                if exchange(&real, &link).is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut raced_problems = 0;
    for run in 1..=RACE_RUNS {
        // Each run writes a new batch into the raced folder and removes the previous one.
        for i in 0..RACE_FILES {
            put(
                &exp,
                &format!("/race/{}", race_name(run, i)),
                &race_bytes(run, i),
            );
            exp.delete(&format!("/race/{}", race_name(run - 1, i)))
                .unwrap();
        }
        let (_, sum) = export(&root, &out, &["--layout", layout]);
        raced_problems += problems(&sum).len();
        assert_untouched(&before, &outside, &format!("{layout} run {run}"));
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    assert!(swaps > 100, "the folder was swapped only {swaps} times");
    if fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_symlink()) {
        exchange(&real, &link).unwrap();
    }
    assert_untouched(&before, &outside, layout);
    eprintln!("{layout}: {swaps} swaps, {raced_problems} problems reported while racing");

    // Without the race, the next export puts the last batch in place.
    let (code, sum) = export(&root, &out, &["--layout", layout]);
    assert_eq!(code, 0, "{sum}");
    assert_untouched(&before, &outside, layout);
    let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (rel, what) in listing(&real) {
        if what.starts_with("file") {
            let name = rel.rsplit('/').next().unwrap().to_string();
            got.insert(name, fs::read(real.join(&rel)).unwrap());
        }
    }
    for i in 0..RACE_FILES {
        let name = race_name(RACE_RUNS, i);
        same_bytes(
            got.get(&name)
                .unwrap_or_else(|| panic!("{name} not exported")),
            &race_bytes(RACE_RUNS, i),
            &name,
        );
    }
}

#[test]
fn tree_racing_link_swaps_never_redirect_writes_or_removals() {
    let (layout, rel) = LAYOUTS[0];
    racing_swaps_never_redirect_export(layout, rel);
}

#[test]
fn mldash_racing_link_swaps_never_redirect_writes_or_removals() {
    let (layout, rel) = LAYOUTS[1];
    racing_swaps_never_redirect_export(layout, rel);
}

// ---------------------------------------------------------------------------------------------
// A file `/a` and a folder `/a/` in one experiment.

#[test]
fn tree_reports_a_file_and_folder_of_the_same_name_and_the_folder_wins() {
    let dir = tmp();
    let root = dir.path().join("store");
    let out = dir.path().join("out");
    let (a, x) = (random_bytes(20, 1000), random_bytes(21, 2000));
    // Both upload orders, in two experiments: the outcome does not depend on it.
    for (name, order) in [("e1", ["/a", "/a/x"]), ("e2", ["/a/x", "/a"])] {
        let exp = experiment(&root, "p", name);
        for p in order {
            put(&exp, p, if p == "/a" { &a } else { &x });
        }
        put(&exp, "/b.bin", b"unrelated");
    }
    for attempt in 0..2 {
        let (code, sum) = export(&root, &out, &[]);
        assert_eq!(code, 1, "{sum}");
        let ps = problems(&sum);
        assert_eq!(ps.len(), 2, "{ps:?}");
        for name in ["e1", "e2"] {
            let p = ps
                .iter()
                .find(|p| p.contains(&format!("p/{name}")))
                .unwrap();
            assert!(
                p.contains("/a ") || p.contains("/a\"") || p.contains("/a:"),
                "{p}"
            );
            assert!(p.contains("/a/x"), "{p}");
            assert!(p.contains("--layout ml-dash"), "{p}");
            let files = out.join("p").join(name).join("files");
            assert!(files.join("a").is_dir(), "the folder wins");
            same_bytes(fs::read(files.join("a/x")).unwrap(), &x, "a/x");
            assert_eq!(fs::read(files.join("b.bin")).unwrap(), b"unrelated");
        }
        assert_eq!(sum["files"], 4, "{sum}");
        assert_eq!(sum["written"], if attempt == 0 { 4 } else { 0 }, "{sum}");
    }

    // An earlier export wrote `/a` as a file; once `/a/x` exists the folder takes its place.
    let exp = experiment(&root, "p", "e3");
    put(&exp, "/a", &a);
    let (code, _) = export(&root, &out, &["--experiment", "e3"]);
    assert_eq!(code, 0);
    let files = out.join("p/e3/files");
    assert_eq!(fs::read(files.join("a")).unwrap(), a);
    put(&exp, "/a/x", &x);
    let (code, sum) = export(&root, &out, &["--experiment", "e3"]);
    assert_eq!(code, 1, "{sum}");
    assert_eq!(problems(&sum).len(), 1, "{sum}");
    same_bytes(fs::read(files.join("a/x")).unwrap(), &x, "a/x");

    // The ml-dash layout keeps both.
    let ml = dir.path().join("ml");
    let (code, sum) = export(&root, &ml, &["--layout", "ml-dash"]);
    assert_eq!(code, 0, "{sum}");
    for name in ["e1", "e2", "e3"] {
        let listed = listing(&ml.join("local/p").join(name).join("files"));
        let shas: Vec<&String> = listed.values().filter(|v| v.starts_with("file")).collect();
        for want in [&a, &x] {
            let sha = sha256_hex(want);
            assert!(shas.iter().any(|v| v.contains(&sha)), "{name}: {listed:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prefixes no export could ever write.

#[test]
fn prefixes_too_long_or_too_deep_are_refused_before_anything_is_stored() {
    let dir = tmp();
    let root = dir.path().join("store");
    let src = write_file(dir.path(), "f.bin", b"payload");
    let src = src.to_str().unwrap();
    let base = ["upload", src, "--project", "p", "--experiment", "e"];
    ok(&run(&root, &[&base[..], &["--prefix", "/first"]].concat()));
    let durable = snapshot_durable(&root);
    let listed = ok(&run(&root, &["list", "--all-versions", "--json"])).to_string();

    let deep = |n: usize| format!("/{}", vec!["d"; n].join("/"));
    // A prefix of exactly `n` bytes, in segments of at most 200.
    let long = |n: usize| {
        let mut p = String::new();
        while p.len() < n {
            let k = (n - p.len() - 1).min(200);
            p.push('/');
            p.push_str(&"x".repeat(k));
        }
        p
    };
    let seg200 = "s".repeat(200);
    let wide = format!("/{}", [seg200.as_str(); 6].join("/")); // 1206 bytes
    for (what, args) in [
        ("65 segments", vec!["--prefix".to_string(), deep(65)]),
        ("1025 bytes", vec!["--prefix".into(), long(1025)]),
        (
            "six 200-byte segments",
            vec!["--prefix".into(), wide.clone()],
        ),
        (
            "a target that makes it 65 deep",
            vec![
                "--prefix".into(),
                deep(60),
                "--to".into(),
                format!("{}/n", ["t"; 5].join("/")),
            ],
        ),
    ] {
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain(args.iter().map(String::as_str))
            .collect();
        let r = run(&root, &args);
        refused(&r, what);
        assert_eq!(r.0, 2, "{what}: {}", r.2);
        assert!(r.2.contains("prefix"), "{what}: {}", r.2);
        assert!(
            r.2.len() < 400,
            "{what}: a short message, got {} bytes",
            r.2.len()
        );
    }
    assert_eq!(snapshot_durable(&root), durable, "store unchanged");
    assert_eq!(
        ok(&run(&root, &["list", "--all-versions", "--json"])),
        listed
    );

    // The library refuses them the same way.
    let exp = experiment(&root, "p", "e");
    for p in [deep(65), long(1025)] {
        let err = exp.file(src).prefix(p).save().unwrap_err();
        assert!(matches!(err, ml_dash::Error::InvalidInput { .. }), "{err}");
    }
    assert_eq!(snapshot_durable(&root), durable, "store unchanged");

    // At the limits: stored and exported.
    for p in [deep(64), long(1024)] {
        ok(&run(&root, &[&base[..], &["--prefix", &p]].concat()));
    }
    let (code, sum) = export(&root, &dir.path().join("out"), &[]);
    assert_eq!((code, sum["written"].as_u64()), (0, Some(3)), "{sum}");
}
