//! Arbitrary requests straight into the server's router, on a scratch store: whatever the
//! method, path, headers and body, the answer is never a panic or a 5xx, and every error is
//! the JSON `{"error", "code"}`. Bytes that were never declared cannot end up stored: every
//! upload here declares a checksum its body does not have, or none.
#![no_main]
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Env {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    exp: String,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (router, exp) = rt.block_on(async {
            let r = ml_dash_server::open_router(&dir.path().join("store")).unwrap();
            // An experiment to aim at, so that requests reach past the id lookup.
            let req = Request::post("/api/namespaces/ns/nodes")
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"type":"EXPERIMENT","name":"e","projectSlug":"p","parentId":"ROOT"}"#,
                ))
                .unwrap();
            let resp = r.clone().oneshot(req).await.unwrap();
            assert!(resp.status().is_success());
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (r, v["experiment"]["id"].as_str().unwrap().to_string())
        });
        Env {
            rt,
            router,
            exp,
            _dir: dir,
        }
    })
}

const PATHS: [&str; 10] = [
    "/api/namespaces/ns/nodes",
    "/api/nodes/",
    "/api/experiments/",
    "/graphql",
    "/api/search/files?",
    "/api/experiments/EXP/metrics/",
    "/api/experiments/EXP/logs?",
    "/api/experiments/EXP/parameters",
    "/api/nodes/EXP",
    "/health",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let e = env();
    let method = [Method::GET, Method::POST, Method::PATCH, Method::DELETE][usize::from(data[0] % 4)].clone();
    let path_len = usize::from(data[2] % 64).min(data.len() - 3);
    let (tail, body) = data[3..].split_at(path_len);
    let tail: String = String::from_utf8_lossy(tail)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect();
    let path = format!("{}{tail}", PATHS[usize::from(data[1] % 10)]).replace("EXP", &e.exp);
    let ct = match data[1] / 10 % 3 {
        0 => "application/json".to_string(),
        1 => "multipart/form-data; boundary=XyZ".to_string(),
        _ => String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned(),
    };
    let Ok(req) = Request::builder()
        .method(method)
        .uri(&path)
        .header("content-type", ct)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let resp = e.rt.block_on(e.router.clone().oneshot(req)).unwrap();
    let status = resp.status();
    assert!(!status.is_server_error(), "{path}: {status}");
    if status.is_client_error() {
        let bytes = e
            .rt
            .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{path}: {status} with a body that is not JSON"));
        assert!(v["error"].is_string() && v["code"].is_string(), "{path}: {v}");
    }
});
