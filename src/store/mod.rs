//! Storage of documents: one small trait with conditional reads and writes,
//! implemented for S3 and for a local directory.

pub(crate) mod local;
pub(crate) mod memory;
pub(crate) mod s3;
mod s3_errors;

use crate::config::{Settings, Storage};

/// The answer to a (conditional) read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// No object under the key.
    Absent,
    /// The object still has the ETag the caller knew (no body transferred).
    Unchanged,
    /// The object, with its ETag.
    Found {
        /// Its bytes.
        body: Vec<u8>,
        etag: String,
    },
}

/// The condition a write depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precondition<'a> {
    /// Create: only if no object exists (`If-None-Match: *`).
    Absent,
    /// Replace: only if the object still has this ETag (`If-Match`).
    Matches(&'a str),
    /// Whatever is there: the last writer wins. Only for an object no
    /// update depends on (`heartbeat.json`, a sign of life); never for a
    /// document.
    Any,
}

/// A key as a listing shows it, with a tag that changes whenever its
/// object does (S3: the ETag from ListObjectsV2; a local directory: the
/// file's modification time and size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) key: String,
    /// Changes whenever the object does.
    pub(crate) tag: String,
}

/// One stored version of an object (on a bucket with versioning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredVersion {
    /// The store's id of the version.
    pub(crate) version_id: String,
    /// When it was stored.
    pub(crate) stored_at: crate::model::Timestamp,
    /// Whether it is the object's current version.
    pub(crate) latest: bool,
    /// A delete marker (the object was deleted then), with no body.
    pub(crate) deleted: bool,
}

/// Whether a bucket keeps the versions of its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Versioning {
    /// Every write keeps the previous version.
    On,
    /// Versioning was turned on once and is suspended now.
    Suspended,
    /// Never turned on (or a store that keeps no versions).
    Off,
}

/// The largest object the programs read or write: 4 MiB. A document holds
/// far less (a thousand-event history is about 400 KiB); anything bigger is
/// a hand edit or another tool's object, refused before its body is read,
/// so that check, in and out stay small whatever is stored.
pub(crate) const MAX_OBJECT: u64 = 4 << 20;

/// Why a store operation failed. `Conflict` is the one callers branch on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    /// The precondition did not hold, and a fresh read confirmed that the
    /// object is no longer as it was read (or no longer absent).
    #[error(
        "the object changed since it was read (412 Precondition Failed, and a fresh read shows a new ETag)"
    )]
    Conflict,
    /// The server refused a precondition that holds: it cannot do
    /// compare-and-swap as build-state needs.
    #[error(
        "{0}: this server cannot do compare-and-swap as build-state needs; run `build-state doctor`"
    )]
    ConditionRefused(String),
    /// A write whose outcome is unknown (the connection dropped, a timeout,
    /// a 5xx): it may or may not have been applied.
    #[error("the write may or may not have been applied: {0}")]
    Uncertain(String),
    #[error(
        "bucket {0:?} does not exist (check source.bucket, source.region_name and source.endpoint)"
    )]
    /// The bucket does not exist.
    NoSuchBucket(String),
    #[error("access denied: {0}")]
    /// The store refused access.
    AccessDenied(String),
    #[error("credentials rejected or unavailable: {0}")]
    /// The credentials are missing or rejected.
    Credentials(String),
    /// The store keeps no versions of its objects.
    #[error("{0}")]
    NotVersioned(String),
    /// An object larger than [`MAX_OBJECT`], refused before its body was read.
    #[error(
        "{key} is {size} bytes, more than the {} MiB a build-state document may be (a hand edit or another tool's object?); move it aside, or `build-state restore` an earlier version",
        MAX_OBJECT >> 20
    )]
    TooLarge {
        /// The object.
        key: String,
        size: u64,
    },
    #[error("{0}")]
    /// Anything else, in words.
    Other(String),
}

/// The ETag S3 gives a body it stored in one piece: its MD5, quoted. The
/// local store and the test stores use it too.
pub(crate) fn etag_of(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    let hex: String = Md5::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// The ETag without quotes or a weak prefix: the part servers compare.
pub(crate) fn bare_etag(etag: &str) -> &str {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(e)
}

/// Whether two ETags name the same content, however each is quoted: the
/// one comparison every store makes.
pub(crate) fn same_etag(a: &str, b: &str) -> bool {
    bare_etag(a) == bare_etag(b)
}

/// A time told by the store: what its clock said, and when (on this
/// process's monotonic clock) that was heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoreTime {
    /// The store's time.
    pub(crate) at: crate::model::Timestamp,
    /// How finely it tells time (S3's `Date`: a second, truncated).
    pub(crate) resolution: std::time::Duration,
    /// When this process heard it.
    pub(crate) heard: std::time::Instant,
    /// This machine's clock then.
    pub(crate) local: crate::model::Timestamp,
}

impl StoreTime {
    /// The store's time now. When this machine's clock agreed with the
    /// store's within what the store can tell (its answer's resolution),
    /// this machine's clock, which is finer; otherwise the store's, plus
    /// what has elapsed since (the middle of its resolution).
    pub(crate) fn now(&self) -> crate::model::Timestamp {
        let resolution = chrono::Duration::from_std(self.resolution).unwrap_or_default();
        let slack = chrono::Duration::milliseconds(250);
        if self.local >= self.at - slack && self.local <= self.at + resolution + slack {
            return crate::now();
        }
        let elapsed = chrono::Duration::from_std(self.heard.elapsed()).unwrap_or_default();
        self.at + resolution / 2 + elapsed
    }
}

/// Conditional object storage.
#[allow(async_fn_in_trait)]
pub(crate) trait Store {
    /// The store's clock, as its newest answer told it (S3: the `Date` of
    /// its answers; a local directory: the modification time the file
    /// system gives a write); `None` when it tells none (then the local
    /// clock serves). Every deadline is judged on it: one clock for every
    /// worker, whatever its own says.
    fn clock(&self) -> Option<StoreTime> {
        None
    }

    /// Reads `key`; with `if_none_match`, answers `Unchanged` (without a
    /// body) when the object still has that ETag.
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError>;

    /// Writes `key` if the precondition holds; returns the new ETag, or
    /// `StoreError::Conflict` when it does not hold.
    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        when: Precondition<'_>,
    ) -> Result<String, StoreError>;

    /// Every key that starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Every key that starts with `prefix`, in key order, each with a tag
    /// that changes whenever its object does: what changed since a listing
    /// costs listings only (one request per 1,000 keys on S3).
    async fn list_tags(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;

    /// Deletes `key` (absent is not an error).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes `key` only while it still has `etag` (`If-Match`);
    /// `StoreError::Conflict` when it changed or is gone.
    async fn delete_if(&self, key: &str, etag: &str) -> Result<(), StoreError>;

    /// Whether the store keeps the versions of its objects. Versioning is
    /// a capability of its own: a store that keeps none implements none of
    /// these three, and answers `Off` and `NotVersioned`.
    async fn versioning(&self) -> Result<Versioning, StoreError> {
        Ok(Versioning::Off)
    }

    /// The stored versions of `key`, newest first (`NotVersioned` for a
    /// store that keeps none).
    async fn versions(&self, _key: &str) -> Result<Vec<StoredVersion>, StoreError> {
        Err(StoreError::NotVersioned(
            "this store keeps no versions of its objects".into(),
        ))
    }

    /// The body of one stored version of `key`.
    async fn get_version(&self, _key: &str, _version_id: &str) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::NotVersioned(
            "this store keeps no versions of its objects".into(),
        ))
    }
}

/// The store a configuration names.
pub(crate) enum AnyStore {
    /// A local directory.
    Local(local::LocalStore),
    /// An S3 bucket.
    S3(s3::S3Store),
    /// Memory (unit tests only).
    #[cfg(test)]
    Memory(memory::MemoryStore),
    /// Memory with faults on demand (unit tests only).
    #[cfg(test)]
    Faulty(memory::FaultyStore),
}

impl AnyStore {
    /// Opens the store `config` names.
    pub(crate) async fn open(config: &Settings) -> Result<AnyStore, StoreError> {
        Ok(match &config.storage {
            Storage::Local { dir, .. } => AnyStore::Local(local::LocalStore::new(dir.clone())),
            Storage::S3(s3) => AnyStore::S3(s3::S3Store::connect(s3).await?),
        })
    }

    /// The server quirks this process has met and works around, in words.
    pub(crate) fn quirks(&self) -> Vec<String> {
        match self {
            AnyStore::S3(s) => s.quirks(),
            _ => Vec::new(),
        }
    }
}

/// Forwards each method of [`Store`] to the variant's store.
macro_rules! forward {
    ($( async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl Store for AnyStore {
            fn clock(&self) -> Option<StoreTime> {
                match self {
                    AnyStore::Local(s) => s.clock(),
                    AnyStore::S3(s) => s.clock(),
                    #[cfg(test)]
                    AnyStore::Memory(s) => s.clock(),
                    #[cfg(test)]
                    AnyStore::Faulty(s) => s.clock(),
                }
            }
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        AnyStore::Local(s) => s.$name($($arg),*).await,
                        AnyStore::S3(s) => s.$name($($arg),*).await,
                        #[cfg(test)]
                        AnyStore::Memory(s) => s.$name($($arg),*).await,
                        #[cfg(test)]
                        AnyStore::Faulty(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

forward! {
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError>;
    async fn put(&self, key: &str, body: Vec<u8>, when: Precondition<'_>) -> Result<String, StoreError>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    async fn list_tags(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    async fn delete_if(&self, key: &str, etag: &str) -> Result<(), StoreError>;
    async fn versioning(&self) -> Result<Versioning, StoreError>;
    async fn versions(&self, key: &str) -> Result<Vec<StoredVersion>, StoreError>;
    async fn get_version(&self, key: &str, version_id: &str) -> Result<Vec<u8>, StoreError>;
}
