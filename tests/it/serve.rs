//! `ml-dash serve` driven by our own CLI (`--server URL`): the store the server writes is the
//! one the local CLI reads, tokens are required once one exists, a public address without a
//! token is refused, and SIGTERM stops the server cleanly. (The real ml-dash client and raw
//! HTTP are driven by the pytest suite in `tests/serve/`.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::util::{bin, drain_fifo_while, mkfifo, ok, random_bytes, run, tmp};

/// A running server and the URL it listens on; killed on drop.
struct Server {
    child: Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(root: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ml-dash serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("the server says where it listens")
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    Server { child, url, log }
}

/// Run the CLI against a server (in `dir`, with `env`).
fn remote(dir: &Path, url: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .current_dir(dir)
        .env_remove("ML_DASH_TOKEN")
        .env("ML_DASH_CONFIG_DIR", dir.join("no-client-config"))
        .envs(env.iter().copied())
        .args(["--server", url])
        .args(args)
        .output()
        .expect("run ml-dash --server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_cli_uploads_lists_and_downloads_through_a_server_into_the_same_store() {
    let d = tmp();
    let root = d.path().join("store");
    let s = serve(&root, &[]);
    let data = random_bytes(3 << 20, 7);
    let src = d.path().join("model.bin");
    std::fs::write(&src, &data).unwrap();
    let exp = ["--project", "vision", "--experiment", "run-1"];
    let up = |extra: &[&str]| {
        let mut args = vec!["upload", src.to_str().unwrap()];
        args.extend_from_slice(&exp);
        args.extend_from_slice(&["--prefix", "/models", "--json"]);
        args.extend_from_slice(extra);
        remote(d.path(), &s.url, &[], &args)
    };
    let r = up(&["--tag", "best", "--metadata", r#"{"epoch":3}"#]);
    assert_eq!(r.0, 0, "{}", r.2);
    let first = &json_lines(&r.1)[0];
    assert_eq!(first["version"], 1);
    assert_eq!(first["tags"], serde_json::json!(["best"]));
    let r = up(&[]);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(json_lines(&r.1)[0]["version"], 2);

    // The server's list and the local list of the same root agree, record for record (the
    // local list adds how each version is stored, `storage`, which a server does not send).
    let (code, over, err) = remote(d.path(), &s.url, &[], &["list", "--all-versions", "--json"]);
    assert_eq!(code, 0, "{err}");
    let local = ok(&run(&root, &["list", "--all-versions", "--json"])).to_string();
    let mut local = json_lines(&local);
    for l in &mut local {
        let st = l.as_object_mut().and_then(|o| o.remove("storage"));
        assert!(st.is_some_and(|v| v.is_object()), "{l:?}");
    }
    assert_eq!(json_lines(&over), local);
    assert_eq!(json_lines(&over).len(), 2);

    // Download: a version, verified, lands whole.
    let download = |args: &[&str]| {
        let mut all = vec!["download", "--project", "vision", "--experiment", "run-1"];
        all.extend_from_slice(args);
        remote(d.path(), &s.url, &[], &all)
    };
    let out = d.path().join("back.bin");
    let r = download(&[
        "/models/model.bin",
        "--version",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // A named pipe is written in place, not renamed over.
    let fifo = d.path().join("pipe");
    mkfifo(&fifo);
    let got = drain_fifo_while(&fifo, || {
        let r = download(&["/models/model.bin", "-o", fifo.to_str().unwrap()]);
        assert_eq!(r.0, 0, "{}", r.2);
    })
    .expect("the pipe was replaced");
    assert!(got == data, "the pipe got {} bytes", got.len());
    // A file the server does not have is an error, into a pipe at once (without waiting for
    // a reader).
    for extra in [&["-o", fifo.to_str().unwrap()][..], &[]] {
        let mut args = vec!["/models/nope.bin"];
        args.extend_from_slice(extra);
        let r = download(&args);
        assert_ne!(r.0, 0);
        assert!(r.2.contains("not found"), "{}", r.2);
    }
    // Commands that need the store itself are refused with --server.
    let r = remote(d.path(), &s.url, &[], &["verify"]);
    assert_ne!(r.0, 0);
    assert!(r.2.contains("upload, list and download"), "{}", r.2);
    ok(&run(&root, &["verify"]));
    assert!(
        s.log
            .lock()
            .unwrap()
            .contains("POST /api/namespaces/local/nodes 201")
    );
}

#[test]
fn once_a_token_exists_requests_need_one_and_it_never_shows_in_the_log() {
    let d = tmp();
    let root = d.path().join("store");
    let s = serve(&root, &[]);
    let made = ok(&run(
        &root,
        &["token", "add", "ci", "--namespace", "team", "--json"],
    ))
    .to_string();
    let secret = serde_json::from_str::<Value>(&made).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let src = d.path().join("a.txt");
    std::fs::write(&src, b"hello").unwrap();
    let upload = |ns: &str, env: &[(&str, &str)]| {
        remote(
            d.path(),
            &s.url,
            env,
            &[
                "upload",
                src.to_str().unwrap(),
                "--namespace",
                ns,
                "--project",
                "p",
                "--experiment",
                "e",
            ],
        )
    };
    let r = upload("team", &[]);
    assert_ne!(r.0, 0);
    assert!(r.2.contains("401"), "{}", r.2);
    let r = upload("team", &[("ML_DASH_TOKEN", "mld_wrong")]);
    assert!(r.2.contains("401"), "{}", r.2);
    let r = upload("team", &[("ML_DASH_TOKEN", &secret)]);
    assert_eq!(r.0, 0, "{}", r.2);
    // Another namespace: 403, for writes and for reads.
    let r = upload("other", &[("ML_DASH_TOKEN", &secret)]);
    assert!(r.2.contains("403"), "{}", r.2);
    let r = remote(
        d.path(),
        &s.url,
        &[("ML_DASH_TOKEN", &secret)],
        &["list", "--namespace", "other"],
    );
    assert!(r.2.contains("403"), "{}", r.2);
    // The ml-dash client's own token file works too.
    let cfg = d.path().join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("tokens.json"),
        format!(r#"{{"ml-dash-token": "{secret}"}}"#),
    )
    .unwrap();
    let r = upload("team", &[("ML_DASH_CONFIG_DIR", cfg.to_str().unwrap())]);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(
        json_lines(ok(&run(&root, &["list", "--all-versions", "--json"]))).len(),
        2
    );
    // Nothing of the secret in the server's log.
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains(" 401 ") && log.contains(" 403 "), "{log}");
    assert!(!log.contains(&secret[4..]), "{log}");
}

#[test]
fn a_public_address_without_a_token_is_refused_and_sigterm_stops_cleanly() {
    let d = tmp();
    let root = d.path().join("store");
    let r = run(&root, &["serve", "--listen", "0.0.0.0:0"]);
    assert_ne!(r.0, 0);
    assert!(r.2.contains("without any token"), "{}", r.2);
    assert!(!r.2.contains("panicked"));

    let mut s = serve(&root, &[]);
    let pid = s.child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let code = s.child.wait().unwrap();
    assert!(code.success(), "exit {code:?}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        s.log.lock().unwrap().contains("stopped"),
        "{}",
        s.log.lock().unwrap()
    );
}
