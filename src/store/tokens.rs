//! Access tokens for clients of a store served over HTTP: each has a name, the namespaces it may
//! write to (none listed: every namespace) and the SHA-256 of its secret. The secret itself is
//! shown once, when the token is made, and never stored.
//!
//! `<root>/tokens.json`, replaced atomically (write, fsync, rename) under the store lock:
//! `{"format":1,"tokens":[{"name","sha256","namespaces","createdAt"}]}`. Checking a token reads
//! it without the lock (a reader sees the file before or after a change, never half of one).

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::{Error, IoContext, Result};
use crate::store::Store;

const TOKENS_FILE: &str = "tokens.json";
const FORMAT: u32 = 1;
/// Secrets are this prefix and 64 hex digits (256 random bits).
const PREFIX: &str = "mld_";

/// A token as `Store::tokens` lists it: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Unique among the store's tokens.
    pub name: String,
    /// Namespaces the token may write to; empty: every namespace.
    pub namespaces: Vec<String>,
    /// When it was made (ISO-8601 UTC).
    pub created_at: String,
}

impl TokenInfo {
    /// May this token write to `namespace`?
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    info: TokenInfo,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct TokensFile {
    format: u32,
    tokens: Vec<Stored>,
}

fn digest_hex(secret: &str) -> String {
    let d = sha2::Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit (the time taken does not say how much of a guess matched).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Store {
    fn tokens_path(&self) -> PathBuf {
        self.root.join(TOKENS_FILE)
    }

    fn read_tokens(&self) -> Result<TokensFile> {
        let path = self.tokens_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TokensFile {
                    format: FORMAT,
                    tokens: Vec::new(),
                });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let file: TokensFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(path.display().to_string(), e.to_string()))?;
        if file.format != FORMAT {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("format {} (this version reads {FORMAT})", file.format),
            ));
        }
        Ok(file)
    }

    fn write_tokens(&self, file: &TokensFile) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(file).map_err(|e| Error::Internal(format!("tokens: {e}")))?;
        crate::store::durable::write_atomic(&self.tokens_path(), &bytes, &self.opts.faults)
    }

    /// Make a token named `name` that may write to `namespaces` (empty: every namespace).
    /// Returns its secret, which is not stored and cannot be shown again.
    pub fn add_token(&self, name: &str, namespaces: &[String]) -> Result<String> {
        crate::format::names::segment("token name", name)?;
        for ns in namespaces {
            crate::format::names::segment("namespace", ns)?;
        }
        self.check_poison()?;
        let _lock = self.lock()?;
        let mut file = self.read_tokens()?;
        if file.tokens.iter().any(|t| t.info.name == name) {
            return Err(Error::invalid(
                "token name",
                name,
                "is taken (revoke it first)",
            ));
        }
        let mut random = [0u8; 32];
        let urandom = std::path::Path::new("/dev/urandom");
        std::fs::File::open(urandom)
            .and_then(|mut f| f.read_exact(&mut random))
            .at(urandom)?;
        let secret: String = std::iter::once(PREFIX.to_string())
            .chain(random.iter().map(|b| format!("{b:02x}")))
            .collect();
        let mut namespaces = namespaces.to_vec();
        namespaces.sort();
        namespaces.dedup();
        file.tokens.push(Stored {
            info: TokenInfo {
                name: name.to_string(),
                namespaces,
                created_at: crate::format::time::now_iso(),
            },
            sha256: digest_hex(&secret),
        });
        self.poison(self.write_tokens(&file))?;
        Ok(secret)
    }

    /// Every token, by name (secrets are not stored).
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut v: Vec<TokenInfo> = self
            .read_tokens()?
            .tokens
            .into_iter()
            .map(|t| t.info)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Revoke the token named `name`; `false` if there is none.
    pub fn revoke_token(&self, name: &str) -> Result<bool> {
        self.check_poison()?;
        let _lock = self.lock()?;
        let mut file = self.read_tokens()?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.info.name != name);
        if file.tokens.len() == before {
            return Ok(false);
        }
        self.poison(self.write_tokens(&file))?;
        Ok(true)
    }

    /// The token whose secret is `secret`, if any.
    pub fn check_token(&self, secret: &str) -> Result<Option<TokenInfo>> {
        if !secret.starts_with(PREFIX) {
            return Ok(None);
        }
        let want = digest_hex(secret);
        let mut found = None;
        for t in self.read_tokens()?.tokens {
            if same(t.sha256.as_bytes(), want.as_bytes()) {
                found = Some(t.info);
            }
        }
        Ok(found)
    }
}
