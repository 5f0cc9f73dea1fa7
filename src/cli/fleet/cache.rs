//! The fleet commands' local cache: the documents they read, each with the
//! listing tag it was read at, so that a second `list` of an unchanged fleet
//! reads no document. One file per store location (endpoint, bucket and
//! prefix, or directory and prefix) in the user's cache directory. A cache
//! that cannot be read, is corrupt, or was written by another version or
//! for another location is rebuilt, never trusted.

use crate::Notes;
use crate::config::{Settings, Storage};
use crate::model::{Document, Heartbeat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The format of the file; another one is rebuilt. 2: each document is
/// kept as its own JSON text, so the cache adds no nesting to it.
const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize, Default)]
struct File {
    format: u32,
    /// The version of build-state that wrote it.
    tool: String,
    /// What it caches: the store's location and prefix.
    location: String,
    builds: BTreeMap<String, Entry>,
    /// The heartbeats read, by build, with the listing tag each was read at.
    #[serde(default)]
    heartbeats: BTreeMap<String, (String, Heartbeat)>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Entry {
    /// The listing tag the document was read at.
    tag: String,
    /// The document as read, kept as JSON text: a document nested as deep
    /// as a reader takes stays readable here (nested inside the file, it
    /// would pass the parser's depth limit and make the whole cache
    /// unreadable, for good).
    #[serde(with = "as_text")]
    document: Document,
}

mod as_text {
    use crate::model::Document;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(doc: &Document, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(doc).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// The cache of one store location.
pub(crate) struct Cache {
    path: PathBuf,
    file: File,
    dirty: bool,
    /// Where its warnings go (an unreadable or unwritable cache file).
    notes: Arc<Notes>,
}

/// Where caches live: `BUILD_STATE_CACHE_DIR`, else the user's cache
/// directory (`$XDG_CACHE_HOME/build-state` or `~/.cache/build-state`).
fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BUILD_STATE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("build-state"))
}

/// What a cache is for: the store's location and prefix, endpoint included.
fn location(settings: &Settings) -> String {
    match &settings.storage {
        Storage::Local { dir, prefix } => format!("local:{}:{prefix}", dir.display()),
        Storage::S3(s3) => format!(
            "s3:{}:{}:{}",
            s3.endpoint.as_deref().unwrap_or("aws"),
            s3.bucket,
            s3.prefix
        ),
    }
}

impl Cache {
    /// The cache of `settings`' store location (empty when there is none
    /// yet, or none that can be trusted; `None` without a cache directory).
    pub(super) fn open(settings: &Settings, notes: &Arc<Notes>) -> Option<Cache> {
        Some(Cache::open_in(dir()?, settings).with_notes(notes.clone()))
    }

    /// The same cache, saying what it meets in `notes`.
    pub(super) fn with_notes(mut self, notes: Arc<Notes>) -> Cache {
        for line in self.notes.take() {
            notes.note(line);
        }
        self.notes = notes;
        self
    }

    /// The cache of `settings`' store location in the directory `dir`.
    /// Only a file of its own is trusted ([`trusted_read`]): another user's
    /// could make `list` show a blocked build delivered and silence alerts.
    pub(super) fn open_in(dir: PathBuf, settings: &Settings) -> Cache {
        let location = location(settings);
        let name = {
            use md5::{Digest, Md5};
            let d = Md5::digest(location.as_bytes());
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let path = dir.join(format!("{name}.json"));
        let empty = || File {
            format: FORMAT,
            tool: env!("CARGO_PKG_VERSION").to_string(),
            location: location.clone(),
            builds: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
        };
        let notes = Arc::new(Notes::new());
        let file = match trusted_read(&path) {
            Err(Distrust::Absent) => empty(),
            Err(Distrust::Not(why)) => {
                notes.note(format!(
                    "the cache {} is not to be trusted ({why}); ignoring it and rebuilding it",
                    path.display()
                ));
                empty()
            }
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f)
                    if f.format == FORMAT
                        && f.tool == env!("CARGO_PKG_VERSION")
                        && f.location == location =>
                {
                    f
                }
                Ok(_) => {
                    notes.note(format!(
                        "the cache {} is from another version or store; rebuilding it",
                        path.display()
                    ));
                    empty()
                }
                Err(e) => {
                    notes.note(format!(
                        "the cache {} is unreadable ({e}); rebuilding it",
                        path.display()
                    ));
                    empty()
                }
            },
        };
        Cache {
            path,
            file,
            dirty: false,
            notes,
        }
    }

    /// The file it is kept in.
    #[cfg(test)]
    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The document of `build_id` cached at listing tag `tag`, if any.
    pub(super) fn get(&self, build_id: &str, tag: &str) -> Option<&Document> {
        self.file
            .builds
            .get(build_id)
            .filter(|e| e.tag == tag)
            .map(|e| &e.document)
    }

    /// Remembers `document` for `build_id`, read at listing tag `tag`.
    pub(super) fn put(&mut self, build_id: &str, tag: &str, document: &Document) {
        self.file.builds.insert(
            build_id.to_string(),
            Entry {
                tag: tag.to_string(),
                document: document.clone(),
            },
        );
        self.dirty = true;
    }

    /// The heartbeat of `build_id` cached at listing tag `tag`, if any.
    pub(super) fn heartbeat(&self, build_id: &str, tag: &str) -> Option<&Heartbeat> {
        self.file
            .heartbeats
            .get(build_id)
            .filter(|(t, _)| t == tag)
            .map(|(_, h)| h)
    }

    /// Remembers `heartbeat` for `build_id`, read at listing tag `tag`.
    pub(super) fn put_heartbeat(&mut self, build_id: &str, tag: &str, heartbeat: &Heartbeat) {
        self.file
            .heartbeats
            .insert(build_id.to_string(), (tag.to_string(), heartbeat.clone()));
        self.dirty = true;
    }

    /// Forgets the builds that are gone.
    pub(super) fn retain(&mut self, present: &std::collections::BTreeSet<String>) {
        let before = self.file.builds.len() + self.file.heartbeats.len();
        self.file.builds.retain(|id, _| present.contains(id));
        self.file.heartbeats.retain(|id, _| present.contains(id));
        self.dirty |= self.file.builds.len() + self.file.heartbeats.len() != before;
    }

    /// Writes the cache (atomically), when it changed. A cache that cannot
    /// be written only costs the next run its reads.
    pub(super) fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let dir = self.path.parent().expect("a cache file has a directory");
            // It holds every document's vars and errors: the user's only.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let meta = std::fs::metadata(dir)?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            crate::cli::write_atomically(&self.path, &serde_json::to_vec(&self.file)?, 0o600)
        };
        match write() {
            Ok(()) => self.dirty = false,
            Err(e) => self.notes.warn(format!(
                "cannot write the cache {}: {e}",
                self.path.display()
            )),
        }
    }
}

/// Why a cache file is not read.
enum Distrust {
    /// There is none.
    Absent,
    /// One that is not this user's own: a link, a FIFO, another owner, a
    /// mode others can write, a directory others can write, too large.
    Not(String),
}

/// The largest cache file read (a fleet of 10,000 builds takes a few MB).
const MAX_CACHE_BYTES: u64 = 256 << 20;

/// Reads the cache file at `path` only if it is this user's own: opened
/// without following a link or blocking, a regular file owned by this
/// user with mode 0600 in a directory of this user's that no one else can
/// write, at most [`MAX_CACHE_BYTES`].
fn trusted_read(path: &std::path::Path) -> Result<Vec<u8>, Distrust> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // This process's user: the owner of its /proc entry (no unsafe call).
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| Distrust::Not(format!("cannot tell this user ({e})")))?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    match std::fs::symlink_metadata(dir) {
        Ok(d) if d.is_dir() && d.uid() == me && d.mode() & 0o022 == 0 => {}
        Ok(_) => {
            return Err(Distrust::Not(
                "its directory is not this user's alone".into(),
            ));
        }
        Err(_) => return Err(Distrust::Absent),
    }
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Distrust::Absent),
        Err(e) => {
            return Err(Distrust::Not(format!(
                "it cannot be opened as a plain file: {e}"
            )));
        }
    };
    let m = f.metadata().map_err(|e| Distrust::Not(e.to_string()))?;
    if !m.is_file() {
        return Err(Distrust::Not("not a regular file".into()));
    }
    if m.uid() != me {
        return Err(Distrust::Not("another user's file".into()));
    }
    if m.mode() & 0o077 != 0 {
        return Err(Distrust::Not(format!(
            "mode {:o}, not 600",
            m.mode() & 0o777
        )));
    }
    if m.len() > MAX_CACHE_BYTES {
        return Err(Distrust::Not(format!("{} bytes", m.len())));
    }
    let mut body = Vec::with_capacity(m.len() as usize);
    f.take(MAX_CACHE_BYTES)
        .read_to_end(&mut body)
        .map_err(|e| Distrust::Not(e.to_string()))?;
    Ok(body)
}
