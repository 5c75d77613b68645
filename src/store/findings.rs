//! What `verify`, `gc`, `repair` and `pull` found: a kind a program can match on, and a line
//! for people. Reports serialize each finding as its line (the CLI's JSON is a list of
//! strings), and a finding derefs to its line.

use std::fmt;

/// One thing an operation found: `kind` says what, `message` says it for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding<K> {
    /// What was found.
    pub kind: K,
    /// One line naming the file, version, chunk or object and what is wrong.
    pub message: String,
}

impl<K> Finding<K> {
    pub(crate) fn new(kind: K, message: impl Into<String>) -> Finding<K> {
        Finding {
            kind,
            message: message.into(),
        }
    }
}

/// Findings sort by their line, then their kind.
impl<K: Ord> PartialOrd for Finding<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord> Ord for Finding<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.message, &self.kind).cmp(&(&other.message, &other.kind))
    }
}

impl<K> fmt::Display for Finding<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<K> std::ops::Deref for Finding<K> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl<K> PartialEq<str> for Finding<K> {
    fn eq(&self, other: &str) -> bool {
        self.message == other
    }
}

impl<K> PartialEq<String> for Finding<K> {
    fn eq(&self, other: &String) -> bool {
        &self.message == other
    }
}

impl<K> serde::Serialize for Finding<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.message)
    }
}

/// What `verify` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum VerifyKind {
    /// A version whose bytes cannot be read back (`damaged_files`).
    DamagedFile,
    /// A record whose data fails its check.
    DamagedRecord,
    /// A pack whose 32-byte header is damaged or names another pack.
    BadPackHeader,
    /// Bytes inside a pack's committed length that hold no valid record.
    DamagedSpan,
    /// Bytes after a pack's committed length that hold no valid record (harmless).
    UncommittedSpan,
    /// A pack shorter than the index says.
    Truncated,
    /// An incomplete last record after the committed length (harmless).
    TornTail,
    /// Packs under their incoming name: of uploads in flight, or of killed ones (gc removes
    /// those).
    IncomingPacks,
    /// A delta chunk that does not decode through its chain.
    DeltaUndecodable,
    /// The manifest of a deleted version is damaged.
    DeletedVersionDamaged,
    /// A manifest the index does not know.
    ManifestNotIndexed,
    /// A manifest or event that cannot be read or decoded.
    Unreadable,
    /// Journal lines that fail their checksum.
    JournalDamaged,
    /// A journal line torn by an interrupted append (harmless).
    JournalTorn,
    /// A pack the index names that is missing or short on disk.
    PackMissing,
    /// A pack gc moved to `quarantine/`.
    Quarantined,
    /// Packs kept for `repair`'s unreferenced chunks (harmless).
    HeldPacks,
    /// Proofs of the versions hashed whole could not be written (their reads keep hashing
    /// the whole file).
    ProofsNotRecorded,
}

/// What `gc` left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum GcKind {
    /// A pack was not rewritten: one of its live records fails its check.
    LiveRecordFails,
    /// A pack was moved to `quarantine/`: gc could not account for all of it.
    Quarantined,
    /// A remote pack whose index cannot be read was left alone.
    PackLeftOut,
    /// A remote event that cannot be read was left out (the versions it deletes stay live).
    EventLeftOut,
    /// A remote gc mark that cannot be read was removed (it names nothing).
    MarkUnreadable,
}

/// What `repair` (`rebuild_index`) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RebuildKind {
    /// A record whose data fails its check.
    DamagedRecord,
    /// A pack whose header is damaged or names another pack (its records were read).
    BadPackHeader,
    /// Bytes of a pack that hold no valid record.
    DamagedSpan,
    /// A delta record that does not decode to its chunk id.
    DeltaUndecodable,
    /// A manifest or event that cannot be read or decoded.
    Unreadable,
    /// A version whose bytes cannot be read back after the rebuild.
    UnreadableVersion,
    /// A version the old index or an event names whose manifest is gone.
    LostVersion,
    /// A pack holding chunks no manifest references (held from gc).
    Unreferenced,
}

/// What `pull` could not use, or kept out.
#[cfg(feature = "remote")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PullKind {
    /// A remote pack whose footer or index is damaged (left out).
    PackLeftOut,
    /// An object larger than any valid one (not read).
    TooLarge,
    /// A manifest or event that does not decode, or whose id does not match its name.
    Undecodable,
    /// A manifest or event whose fields are refused (names, versions, limits).
    Refused,
    /// A version that needs a chunk the remote lacks, of another length, or a chain too long.
    Unusable,
    /// A remote record that does not hold what it claims (skipped and reported).
    RottenRecord,
    /// A version kept out because a chunk it needs did not arrive intact.
    KeptOut,
    /// A remote version with a number this store already has for the path.
    VersionConflict,
    /// A remote delete that would hide a local version the remote never saw.
    DeleteConflict,
    /// A remote journal line (log line, metric point, parameter) that contradicts this store's
    /// journal.
    JournalConflict,
}
