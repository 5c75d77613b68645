//! Browser sessions: a token pasted once into the sign-in form becomes an `HttpOnly`,
//! `SameSite=Strict` cookie naming a session held in memory (a server restart signs everyone
//! out). Each session has a CSRF token that every form that changes something must carry.
//! The token is checked again on every request, so a revoked token ends its sessions at once.
//! A store without tokens still gets sessions, for the CSRF tokens of its forms.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "mldash_session";
/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// One browser's session.
#[derive(Clone)]
pub struct Session {
    /// The token it signed in with (none: not signed in, or a store without tokens).
    pub secret: Option<String>,
    /// What its forms must send back.
    pub csrf: String,
    created: Instant,
}

/// Every live session.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as hex, from the kernel.
pub fn random_hex() -> String {
    let mut b = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    // Without the kernel's randomness no session can be made safely.
    assert!(ok.is_ok(), "cannot read /dev/urandom for a session id");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    /// A new session; returns its id.
    pub fn create(&self, secret: Option<String>) -> (String, Session) {
        let id = random_hex();
        let s = Session {
            secret,
            csrf: random_hex(),
            created: Instant::now(),
        };
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, s| s.created.elapsed() < LIFETIME);
        m.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session `id` names.
    pub fn get(&self, id: &str) -> Option<Session> {
        let m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(id)
            .filter(|s| s.created.elapsed() < LIFETIME)
            .cloned()
    }

    /// End a session.
    pub fn remove(&self, id: &str) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.remove(id);
    }
}

/// The session id in a `Cookie` header.
pub fn cookie_id(headers: &axum::http::HeaderMap) -> Option<String> {
    for h in headers.get_all(axum::http::header::COOKIE) {
        let Ok(v) = h.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=')
                && k == COOKIE
                && val.len() == 64
                && val.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Some(val.to_string());
            }
        }
    }
    None
}

/// The `Set-Cookie` value for a session (or its removal with `None`).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}
