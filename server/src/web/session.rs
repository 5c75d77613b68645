//! Browser sessions: a token pasted once into the sign-in form becomes an `HttpOnly`,
//! `SameSite=Strict` cookie (`mldash_session`) naming a session held in memory (a server
//! restart signs everyone out). Each session has a CSRF token that every form that changes
//! something must carry. The token is checked again on every request, so a revoked token ends
//! its sessions at once.
//!
//! Before sign-in (and on a store without tokens) a browser gets an anonymous session under
//! another cookie (`mldash_anon`), only for the CSRF token of its forms: a link followed from
//! another site arrives without the `SameSite=Strict` session cookie, and the anonymous
//! cookie set then must not replace it. Anonymous sessions are short-lived and capped.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The signed-in session's cookie.
pub const COOKIE: &str = "mldash_session";
/// The anonymous session's cookie.
pub const ANON_COOKIE: &str = "mldash_anon";
/// How long a signed-in session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long an anonymous session lasts.
pub const ANON_LIFETIME: Duration = Duration::from_secs(3600);
/// Most sessions held; beyond it the oldest anonymous ones go first.
const MAX_SESSIONS: usize = 20_000;

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

impl Session {
    fn live(&self) -> bool {
        let life = if self.secret.is_some() {
            LIFETIME
        } else {
            ANON_LIFETIME
        };
        self.created.elapsed() < life
    }
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
        if m.len() >= MAX_SESSIONS {
            m.retain(|_, s| s.live());
        }
        if m.len() >= MAX_SESSIONS {
            // Still full of live sessions: drop the oldest anonymous ones (signed-in ones stay).
            let mut anon: Vec<(Instant, String)> = m
                .iter()
                .filter(|(_, s)| s.secret.is_none())
                .map(|(k, s)| (s.created, k.clone()))
                .collect();
            anon.sort();
            for (_, k) in anon.into_iter().take(MAX_SESSIONS / 10) {
                m.remove(&k);
            }
        }
        m.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session `id` names.
    pub fn get(&self, id: &str) -> Option<Session> {
        let m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(id).filter(|s| s.live()).cloned()
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

/// The signed-in session id in a `Cookie` header.
pub fn cookie_id(headers: &axum::http::HeaderMap) -> Option<String> {
    named_cookie(headers, COOKIE)
}

/// The anonymous session id in a `Cookie` header.
pub fn anon_cookie_id(headers: &axum::http::HeaderMap) -> Option<String> {
    named_cookie(headers, ANON_COOKIE)
}

fn named_cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    for h in headers.get_all(axum::http::header::COOKIE) {
        let Ok(v) = h.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=')
                && k == name
                && val.len() == 64
                && val.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Some(val.to_string());
            }
        }
    }
    None
}

/// The `Set-Cookie` value for a signed-in session (or its removal with `None`).
pub fn set_cookie(id: Option<&str>) -> String {
    cookie(COOKIE, id, LIFETIME)
}

/// The `Set-Cookie` value for an anonymous session (or its removal with `None`).
pub fn set_anon_cookie(id: Option<&str>) -> String {
    cookie(ANON_COOKIE, id, ANON_LIFETIME)
}

fn cookie(name: &str, id: Option<&str>, life: Duration) -> String {
    match id {
        Some(id) => format!(
            "{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            life.as_secs()
        ),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}
