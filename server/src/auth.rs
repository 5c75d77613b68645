//! Bearer tokens. A store with no token serves everyone (it can then only listen on loopback:
//! `serve` refuses anything else); once a token exists, every request needs a valid one, and a
//! token limited to some namespaces reaches only those (anything else is 403). Secrets are
//! never logged or echoed: the store keeps their SHA-256 only.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Shared;
use crate::error::ApiError;

/// Who is asking: attached to every request by `authenticate`.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The store has no token: everything is open (loopback only).
    Open,
    /// A valid token.
    Token(ml_dash::TokenInfo),
}

impl Caller {
    /// May the caller read and write `namespace`? Else 403.
    pub fn check(&self, namespace: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(t) if t.allows(namespace) => Ok(()),
            Caller::Token(_) => Err(ApiError::forbidden(namespace)),
        }
    }

    pub fn allows(&self, namespace: &str) -> bool {
        self.check(namespace).is_ok()
    }

    /// The name `me { username }` answers.
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "local",
            Caller::Token(t) => &t.name,
        }
    }
}

/// Check the `Authorization: Bearer` header, else a browser session's cookie (for the pages,
/// and for API reads such as a download link; never for API writes, which a cookie would
/// expose to requests made by other sites). `/health` is answered to anyone, and a page
/// without either shows the sign-in form.
pub async fn authenticate(State(app): State<Shared>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path();
    let health = path == "/health";
    let api = path.starts_with("/api/") || path == "/graphql";
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let cookie = crate::web::session::cookie_id(req.headers())
        .filter(|_| !api || read)
        .and_then(|id| app.sessions.get(&id))
        .and_then(|s| s.secret);
    let app2 = app.clone();
    let caller = crate::blocking(move || {
        let tokens = app2.store.tokens()?;
        if tokens.is_empty() {
            return Ok(Some(Caller::Open));
        }
        let secret = header
            .as_deref()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .map(str::to_string)
            .or(cookie);
        match secret {
            Some(s) if !s.is_empty() => Ok(app2.store.check_token(&s)?.map(Caller::Token)),
            _ => Ok(None),
        }
    })
    .await;
    match caller {
        Ok(Some(c)) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Ok(None) if health || !api => next.run(req).await,
        Ok(None) => ApiError::unauthorized().into_response(),
        Err(e) => e.into_response(),
    }
}
