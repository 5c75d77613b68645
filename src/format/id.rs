//! Unique, time-ordered ids for versions, events and packs.
//!
//! An id is 16 bytes: 48 bits of Unix milliseconds, 16 bits of a per-process sequence, then 64
//! random bits. Within a process ids strictly increase (the clock is never allowed to step back);
//! across processes the store lock serializes writers and the index refuses a duplicate, so ids
//! never collide (unlike ml-dash's 12 random bits). Shown as 32 lowercase hex digits, so string
//! order is time order.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::format::digest::{hex_decode, hex_encode};

/// A version, event or pack id: 48 bits of Unix milliseconds, a 16-bit sequence, 64 random
/// bits; shown as 32 hex digits, so string order is time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub [u8; 16]);

static LAST: Mutex<(u64, u16)> = Mutex::new((0, 0));

fn random_u64() -> u64 {
    // RandomState is seeded from the OS per process; mix in a counter so each call differs.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

impl Id {
    /// A new id, greater than every id this process made before.
    pub fn generate() -> Id {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "milliseconds since 1970 fit a u64 until the year 584 million"
        )]
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (ms, seq) = {
            let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
            let next = if now > last.0 {
                (now, 0)
            } else if last.1 < u16::MAX {
                (last.0, last.1 + 1)
            } else {
                (last.0 + 1, 0)
            };
            *last = next;
            next
        };
        Id::from_parts(ms, seq, random_u64())
    }

    /// An id that is strictly after `floor` (used to keep ids ordered across processes).
    pub fn generate_after(floor: Option<Id>) -> Id {
        let id = Id::generate();
        match floor {
            Some(f) if id <= f => {
                let (ms, seq) = (f.millis(), f.seq());
                let (ms, seq) = if seq < u16::MAX {
                    (ms, seq + 1)
                } else {
                    (ms + 1, 0)
                };
                let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
                if (ms, seq) > *last {
                    *last = (ms, seq);
                }
                Id::from_parts(ms, seq, random_u64())
            }
            _ => id,
        }
    }

    fn from_parts(ms: u64, seq: u16, rand: u64) -> Id {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6..8].copy_from_slice(&seq.to_be_bytes());
        b[8..].copy_from_slice(&rand.to_be_bytes());
        Id(b)
    }

    /// The Unix time (milliseconds) the id was made at.
    pub fn millis(&self) -> u64 {
        let mut m = [0u8; 8];
        m[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(m)
    }

    fn seq(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl FromStr for Id {
    type Err = Error;
    fn from_str(s: &str) -> Result<Id, Error> {
        hex_decode::<16>(s)
            .map(Id)
            .ok_or_else(|| Error::invalid("id", s, "expected 32 hex digits"))
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_and_roundtrip() {
        let mut prev = Id::generate();
        for _ in 0..100_000 {
            let id = Id::generate();
            assert!(id > prev, "{prev} then {id}");
            prev = id;
        }
        assert_eq!(prev.to_string().parse::<Id>().unwrap(), prev);
    }

    #[test]
    fn generate_after_respects_floor() {
        let future = Id::from_parts(Id::generate().millis() + 10_000, 7, 0);
        let id = Id::generate_after(Some(future));
        assert!(id > future);
        assert!(Id::generate() > id);
    }
}
