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
/// without either shows the sign-in form. Refused first (403): an API write from a page of
/// another origin, and on a store without tokens any request to a host name that is not
/// loopback.
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
    if cross_origin_write(&req, api) {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "CROSS_ORIGIN",
            "a write from a page of another origin is refused",
        )
        .into_response();
    }
    // A store without tokens listens on loopback only; a request naming another host comes
    // from a page whose site name was re-pointed at this machine ("DNS rebinding").
    let foreign_host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| !loopback_host(&h.to_ascii_lowercase()));
    let cookie = crate::web::session::cookie_id(req.headers())
        .filter(|_| !api || read)
        .and_then(|id| app.sessions.get(&id))
        .and_then(|s| s.secret);
    let app2 = app.clone();
    let caller = crate::blocking(move || {
        let tokens = app2.store.tokens()?;
        if tokens.is_empty() {
            if foreign_host {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "HOST",
                    "a store without tokens answers only requests to a loopback host name",
                ));
            }
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

/// A write to the API from a page of another origin: its `Origin` header names another host
/// than the request's `Host` (our clients and the ml-dash client send no `Origin`).
fn cross_origin_write(req: &Request, api: bool) -> bool {
    let write = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let h = req.headers();
    let Some(origin) = h
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|_| api && write)
    else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .to_ascii_lowercase();
    let host = h
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    host.as_deref() != Some(origin_host.as_str())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(n, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        })
    };
    name == "localhost"
        || name.ends_with(".localhost")
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn loopback_names() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]:8080",
            "127.1.2.3:9",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:80",
            "127.0.0.1.evil.example",
            "[::2]:1",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }
}
