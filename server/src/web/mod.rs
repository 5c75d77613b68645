//! The web pages of `ml-dash serve`, on the same port as the API: server-rendered HTML with a
//! little JavaScript, the stylesheet and script compiled into the binary (`static/`), nothing
//! fetched from elsewhere (the pages work offline), charts drawn as SVG on the server.
//!
//! Pages: `/` (experiments), `/{ns}`, `/{ns}/{project}`, `/{ns}/{project}/{experiment}` with
//! `?tab=files|metrics|params|logs|storage` (an experiment in folders also answers at
//! `/{ns}/{project}/{folder}/.../{name}`), `/-/store`, `/-/search?q=`, `/-/login`; a namespace
//! named like one of the server's own first segments (`api`, `graphql`, `health`, `-`) is at
//! `/-/n/{ns}/...`. Safety: every name shown is escaped; a Content-Security-Policy allows
//! scripts, styles and images from this server only; a browser signs in once with a token and
//! gets an `HttpOnly`, `SameSite=Strict` cookie (`session.rs`); forms carry a CSRF token.

mod chart;
mod html;
mod pages;
pub mod session;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::Shared;

/// The browser's session, attached to every page request by [`sessions`].
#[derive(Clone, Debug)]
pub struct WebSession {
    pub id: String,
    pub csrf: String,
    /// Signed in with a token (not only a session for the CSRF token of a form).
    pub signed_in: bool,
}

/// The page routes.
pub fn routes(app: Shared) -> Router<Shared> {
    Router::new()
        .route("/", get(pages::home))
        .route("/-/login", get(pages::login_form).post(pages::login))
        .route("/-/logout", post(pages::logout))
        .route("/-/delete", post(pages::delete_version))
        .route("/-/tags", post(pages::update_tags))
        .route("/-/store", get(pages::store_page))
        .route("/-/search", get(pages::search))
        .route("/-/raw/{id}", get(pages::raw))
        .route("/-/static/{file}", get(static_file))
        .route("/-/n/{*path}", get(pages::path_page))
        .route("/{*path}", get(pages::path_page))
        .route_layer(axum::middleware::from_fn_with_state(app, sessions))
}

/// Attach the session (an anonymous one, made if the browser has none, for the CSRF tokens of
/// its forms) and the headers every page gets. Static files and raw previews need no session.
async fn sessions(State(app): State<Shared>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/-/static/") || path.starts_with("/-/raw/") {
        let mut resp = next.run(req).await;
        security_headers(&mut resp);
        return resp;
    }
    let signed = session::cookie_id(req.headers()).and_then(|id| {
        app.sessions
            .get(&id)
            .filter(|s| s.secret.is_some())
            .map(|s| (id, s))
    });
    let existing = signed.or_else(|| {
        session::anon_cookie_id(req.headers()).and_then(|id| {
            app.sessions
                .get(&id)
                .filter(|s| s.secret.is_none())
                .map(|s| (id, s))
        })
    });
    let fresh = existing.is_none();
    let (id, s) = existing.unwrap_or_else(|| app.sessions.create(None));
    req.extensions_mut().insert(WebSession {
        id: id.clone(),
        csrf: s.csrf.clone(),
        signed_in: s.secret.is_some(),
    });
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if fresh
        && !h.contains_key(SET_COOKIE)
        && let Ok(v) = HeaderValue::from_str(&session::set_anon_cookie(Some(&id)))
    {
        h.insert(SET_COOKIE, v);
    }
    security_headers(&mut resp);
    resp
}

fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    if !h.contains_key("content-security-policy") {
        h.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                 connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            ),
        );
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

async fn static_file(Path(file): Path<String>) -> Response {
    let (body, ct) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [(CONTENT_TYPE, ct), (CACHE_CONTROL, "public, max-age=300")],
        body,
    )
        .into_response()
}

/// Figures the Storage tab and the store page would otherwise recompute on every view (each
/// reads manifests): a version's storage never changes once written, and a scope's stats are
/// kept until its versions change (their count or last update).
#[derive(Default)]
pub struct WebCache {
    versions: std::sync::Mutex<std::collections::HashMap<ml_dash::Id, ml_dash::VersionStorage>>,
    stats: std::sync::Mutex<std::collections::HashMap<String, (String, ml_dash::Stats)>>,
}

impl WebCache {
    fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How `r` is stored.
    pub fn version_storage(
        &self,
        store: &ml_dash::Store,
        r: &ml_dash::FileRecord,
    ) -> ml_dash::Result<ml_dash::VersionStorage> {
        if let Some(v) = Self::lock(&self.versions).get(&r.id) {
            return Ok(v.clone());
        }
        let v = store.version_storage(r)?;
        Self::lock(&self.versions).insert(r.id, v.clone());
        Ok(v)
    }

    /// `store.stats(scope)`, kept while `recs` (every version of the scope, deleted ones
    /// included or not, as long as the caller always passes the same kind) look the same.
    pub fn stats(
        &self,
        store: &ml_dash::Store,
        scope: &ml_dash::Scope,
        recs: &[ml_dash::FileRecord],
    ) -> ml_dash::Result<ml_dash::Stats> {
        let key = format!(
            "{}\0{}\0{}",
            scope.namespace.as_deref().unwrap_or_default(),
            scope.project.as_deref().unwrap_or_default(),
            scope.experiment.as_deref().unwrap_or_default()
        );
        let newest = recs
            .iter()
            .map(|r| r.updated_at.as_str())
            .max()
            .unwrap_or_default();
        let print = format!("{}\0{newest}", recs.len());
        if let Some((p, st)) = Self::lock(&self.stats).get(&key)
            && *p == print
        {
            return Ok(st.clone());
        }
        let st = store.stats(scope)?;
        Self::lock(&self.stats).insert(key, (print, st.clone()));
        Ok(st)
    }
}
