//! `ml-dash serve`: one process that owns a store and answers the ml-dash server API (the REST
//! routes and GraphQL documents the ml-dash 0.11 client sends), so that the real client, our
//! own CLI and Python module, and many jobs at once can write to one store.
//!
//! Layout: `lib.rs` starts the server (binding, the refusal of an open non-loopback bind,
//! logging, signals); `auth.rs` checks bearer tokens; `catalog.rs` maps the API's node ids to
//! the store's names; `api.rs` has the REST handlers, `upload.rs` the streaming multipart
//! upload (`multipart.rs` its parser, `crc32c.rs` its transfer check), `download.rs` the streaming download; `graphql/` parses and answers the queries;
//! `push.rs` the write-behind to a remote; `web/` the web pages. Every call into the store runs on tokio's blocking
//! pool: the store's API is synchronous and does its own I/O.

#![warn(missing_docs)]

mod api;
mod auth;
mod catalog;
pub mod crc32c;
mod download;
mod error;
mod graphql;
pub mod multipart;
#[cfg(feature = "remote")]
mod push;
mod upload;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// Parse a node id as clients send it (public for the fuzz target).
pub use catalog::parse_id;
/// Parse a single `Range: bytes=` header against a length (public for the fuzz target).
pub use download::parse_range;
use error::ApiError;
/// The parser of GraphQL query documents (public for its fuzz target).
pub use graphql::parse as graphql_parse;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The store directory (created if missing).
    pub root: PathBuf,
    /// Address to listen on (`127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Push committed versions (and deletes and record updates) there in the background
    /// (`s3://BUCKET/PREFIX`). Journals (parameters, logs, metrics) are not pushed.
    pub remote: Option<String>,
    /// On SIGTERM/SIGINT, how long requests in flight may still run before the process exits
    /// (an upload cut off then leaves nothing behind).
    pub shutdown_grace: Duration,
    /// Uploads ingested at once; more wait their turn (bounds memory whatever the client count).
    pub upload_slots: usize,
    /// Write-behind: the longest a committed version waits before a push starts.
    pub push_interval: Duration,
}

impl ServeConfig {
    /// Serve `root` on `listen` with the defaults.
    pub fn new(root: impl Into<PathBuf>, listen: SocketAddr) -> ServeConfig {
        ServeConfig {
            root: root.into(),
            listen,
            remote: None,
            shutdown_grace: Duration::from_secs(30),
            upload_slots: 8,
            push_interval: Duration::from_secs(2),
        }
    }
}

/// What every handler shares.
pub(crate) struct App {
    pub store: ml_dash::Store,
    pub catalog: catalog::Catalog,
    /// One permit per upload being ingested.
    pub upload_slots: tokio::sync::Semaphore,
    #[cfg(feature = "remote")]
    pub push: Option<push::WriteBehind>,
    pub started: Instant,
    /// Browser sessions of the web pages.
    pub sessions: web::session::Sessions,
    /// Storage figures of the web pages.
    pub web_cache: web::WebCache,
}

pub(crate) type Shared = Arc<App>;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] ml_dash::Error),
    /// Binding, the runtime or the listener failed.
    #[error("{0}")]
    Io(String),
    /// The configuration is refused (e.g. a public bind without tokens).
    #[error("{0}")]
    Refused(String),
}

/// Serve until SIGTERM or SIGINT. Prints `listening on http://ADDR` on stderr once the socket
/// is bound (tests wait for that line), one line per request after it.
pub fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ml-dash-serve")
        .build()
        .map_err(|e| ServeError::Io(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run(cfg))
}

async fn run(cfg: ServeConfig) -> Result<(), ServeError> {
    let root = cfg.root.clone();
    let (store, catalog) = tokio::task::spawn_blocking(move || {
        let store = ml_dash::Store::open(&root)?;
        let catalog = catalog::Catalog::open(&store)?;
        Ok::<_, ml_dash::Error>((store, catalog))
    })
    .await
    .map_err(|e| ServeError::Io(e.to_string()))??;
    if !cfg.listen.ip().is_loopback() && store.tokens()?.is_empty() {
        return Err(ServeError::Refused(format!(
            "refusing to listen on {} without any token: anyone who can reach it could read and \
             write the store. Make one with `ml-dash token add NAME`, or listen on 127.0.0.1",
            cfg.listen
        )));
    }
    #[cfg(feature = "remote")]
    let push = match &cfg.remote {
        Some(url) => Some(push::WriteBehind::start(&store, url, cfg.push_interval)?),
        None => None,
    };
    #[cfg(not(feature = "remote"))]
    if cfg.remote.is_some() {
        return Err(ServeError::Refused(
            "--remote needs ml-dash built with the `remote` feature".into(),
        ));
    }
    let app = Arc::new(App {
        store,
        catalog,
        upload_slots: tokio::sync::Semaphore::new(cfg.upload_slots.max(1)),
        #[cfg(feature = "remote")]
        push,
        started: Instant::now(),
        sessions: web::session::Sessions::default(),
        web_cache: web::WebCache::default(),
    });
    #[cfg(feature = "remote")]
    if let Some(p) = &app.push {
        p.run(Arc::downgrade(&app));
    }
    // Signal handlers are installed before the socket is announced: a SIGTERM right after
    // the "listening" line must stop the server cleanly, not kill it.
    let signals = Signals::install()?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Io(e.to_string()))?;
    eprintln!(
        "ml-dash serve: listening on http://{addr} (store {})",
        cfg.root.display()
    );
    let router = router(app.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        signals.wait().await;
        eprintln!("ml-dash serve: stopping: finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(async move { server.await });
    // After the signal, requests in flight get `shutdown_grace` to finish.
    let mut stop = stop_rx;
    let grace = cfg.shutdown_grace;
    let finished = tokio::select! {
        r = server => Some(r),
        () = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => None,
    };
    match finished {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => return Err(ServeError::Io(format!("server failed: {e}"))),
        Some(Err(e)) => return Err(ServeError::Io(format!("server failed: {e}"))),
        None => eprintln!(
            "ml-dash serve: requests still running after {} s; exiting (an upload cut off \
             stores nothing)",
            grace.as_secs()
        ),
    }
    #[cfg(feature = "remote")]
    if let Some(p) = &app.push {
        p.finish(&app.store).await;
    }
    eprintln!("ml-dash serve: stopped");
    Ok(())
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, ServeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| ServeError::Io(format!("cannot handle signals: {e}"));
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The server's routes over the store at `root`, without a socket or signals (for the fuzz
/// target and tests that send requests straight to the router). Call from a tokio runtime.
pub fn open_router(root: &std::path::Path) -> Result<Router, ServeError> {
    let store = ml_dash::Store::open(root)?;
    let catalog = catalog::Catalog::open(&store)?;
    Ok(router(Arc::new(App {
        store,
        catalog,
        upload_slots: tokio::sync::Semaphore::new(8),
        #[cfg(feature = "remote")]
        push: None,
        started: Instant::now(),
        sessions: web::session::Sessions::default(),
        web_cache: web::WebCache::default(),
    })))
}

fn router(app: Shared) -> Router {
    let api = Router::new()
        .route("/namespaces/{ns}/nodes", post(api::post_nodes))
        .route(
            "/nodes/{id}",
            get(api::get_node)
                .patch(api::patch_node)
                .delete(api::delete_node),
        )
        .route("/nodes/{id}/download", get(download::download))
        .route("/search/files", get(api::search_files))
        .route(
            "/experiments/{id}/parameters",
            get(api::get_params).post(api::post_params),
        )
        .route(
            "/experiments/{id}/logs",
            get(api::get_logs).post(api::post_logs),
        )
        .route("/experiments/{id}/metrics", get(api::list_metrics))
        .route(
            "/experiments/{id}/metrics/{*rest}",
            get(api::get_metric).post(api::post_metric),
        )
        .fallback(api::unknown_route);
    Router::new()
        .merge(web::routes(app.clone()))
        .nest("/api", api)
        .route("/graphql", post(graphql::handler))
        .route("/health", get(api::health))
        .fallback(api::unknown_route)
        // Upload bodies stream into the store: no limit on their size here (JSON bodies are
        // limited where they are read).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .layer(axum::middleware::from_fn(close_after_error))
        .with_state(app)
}

/// An error answered to a request that has a body may leave part of that body unread (an
/// upload refused halfway, a caller refused before it was read); hyper then closes the
/// connection after the response. The response says so (`Connection: close`): a client that
/// kept the connection for its next request would otherwise send it into a socket being
/// closed and get no response at all.
async fn close_after_error(req: Request, next: Next) -> Response {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let headers = req.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = next.run(req).await;
    let status = resp.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        resp.headers_mut()
            .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

/// Errors the framework answers itself (a method a route does not have, a query string or
/// path that does not parse) as JSON `{"error", "code"}` like every other error.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let is_page = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json || is_page {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let code = match status.as_u16() {
        405 => "METHOD_NOT_ALLOWED",
        413 => "TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        404 => "NOT_FOUND",
        s if s >= 500 => "INTERNAL",
        _ => "BAD_REQUEST",
    };
    ApiError::new(status, code, message).into_response()
}

/// One line per request on stderr: method, path (never the query, never a header), status,
/// milliseconds.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    let path: String = path
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(300)
        .collect();
    eprintln!(
        "{method} {path} {} {} ms",
        resp.status().as_u16(),
        t.elapsed().as_millis()
    );
    resp
}

/// Run a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a store task failed: {e}")))?
}
