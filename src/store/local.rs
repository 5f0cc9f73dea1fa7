//! A store in a local directory, with the same semantics as S3: an ETag per
//! object (the MD5 of its bytes, as S3 computes it for simple uploads),
//! conditional writes under an exclusive lock, and atomic replacement
//! (write to a temporary file, fsync, rename, fsync the directory).

use super::{Fetched, Precondition, Store, StoreError};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Documents as files under a directory. Its file work runs on tokio's
/// blocking threads, each operation within [`DEADLINE`]: a slow or stuck
/// file system (a hung network mount, a lock another process holds) keeps
/// no program's async thread, so `serve` goes on answering and stops on
/// SIGTERM, and a step fails within its bound instead of hanging.
#[derive(Clone)]
pub(crate) struct LocalStore {
    root: Arc<PathBuf>,
    deadline: Duration,
}

/// The longest one operation on a local directory may take: an S3
/// request's attempt timeout.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A write's condition, owned (to cross to a blocking thread).
enum Condition {
    Absent,
    Matches(String),
    Any,
}

impl Condition {
    fn of(when: Precondition<'_>) -> Condition {
        match when {
            Precondition::Absent => Condition::Absent,
            Precondition::Matches(e) => Condition::Matches(e.to_string()),
            Precondition::Any => Condition::Any,
        }
    }

    fn as_precondition(&self) -> Precondition<'_> {
        match self {
            Condition::Absent => Precondition::Absent,
            Condition::Matches(e) => Precondition::Matches(e),
            Condition::Any => Precondition::Any,
        }
    }
}

pub(crate) use super::etag_of;
use super::same_etag;

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    if e.kind() == ErrorKind::PermissionDenied {
        StoreError::AccessDenied(format!("{what} {}: {e}", path.display()))
    } else {
        StoreError::Other(format!("{what} {}: {e}", path.display()))
    }
}

/// Takes the exclusive lock of the object at `path` (a `.NAME.lock` file
/// beside it); released when the file is dropped, or the process dies.
fn lock(path: &Path) -> Result<File, StoreError> {
    let dir = path.parent().expect("a key has a parent directory");
    let lock_path = dir.join(format!(
        ".{}.lock",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object")
    ));
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&lock_path)
        .map_err(|e| io_error("opening lock", &lock_path, e))?;
    lock.lock()
        .map_err(|e| io_error("locking", &lock_path, e))?;
    Ok(lock)
}

impl LocalStore {
    /// The store rooted at `root`.
    pub(crate) fn new(root: PathBuf) -> LocalStore {
        LocalStore {
            root: Arc::new(root),
            deadline: DEADLINE,
        }
    }

    /// The same store, each operation within `deadline` (tests).
    #[cfg(test)]
    pub(crate) fn with_deadline(mut self, deadline: Duration) -> LocalStore {
        self.deadline = deadline;
        self
    }

    /// Runs `work` on a blocking thread, within the deadline. A write
    /// that does not finish in time may still land (it goes on, under its
    /// lock and its condition): its outcome is uncertain, as an S3 write
    /// that timed out.
    async fn off_thread<T: Send + 'static>(
        &self,
        writes: bool,
        work: impl FnOnce(&LocalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        let job = tokio::task::spawn_blocking(move || work(&store));
        match tokio::time::timeout(self.deadline, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(StoreError::Other(format!(
                "the file work under {} failed: {e}",
                self.root.display()
            ))),
            Err(_) => {
                let said = format!(
                    "the file system under {} did not answer within {}s",
                    self.root.display(),
                    self.deadline.as_secs_f32()
                );
                Err(if writes {
                    StoreError::Uncertain(said)
                } else {
                    StoreError::Other(said)
                })
            }
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // No link followed (one planted in the store could point anywhere),
        // and never blocking (a FIFO would hang every reader).
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StoreError::Other(format!(
                    "reading {}: a symbolic link, which the store does not follow",
                    path.display()
                )));
            }
            Err(e) => return Err(io_error("reading", path, e)),
        };
        // Judged by its kind and size before a byte is read (and read no
        // further than the cap, should it grow meanwhile).
        let meta = file.metadata().map_err(|e| io_error("reading", path, e))?;
        if !meta.is_file() {
            return Err(StoreError::Other(format!(
                "reading {}: not a regular file (a directory, a FIFO or a device), which the store does not read",
                path.display()
            )));
        }
        let size = meta.len();
        if size > super::MAX_OBJECT {
            return Err(StoreError::TooLarge {
                key: path.display().to_string(),
                size,
            });
        }
        let mut body = Vec::with_capacity(size as usize);
        file.take(super::MAX_OBJECT + 1)
            .read_to_end(&mut body)
            .map_err(|e| io_error("reading", path, e))?;
        if body.len() as u64 > super::MAX_OBJECT {
            return Err(StoreError::TooLarge {
                key: path.display().to_string(),
                size: body.len() as u64,
            });
        }
        Ok(Some(body))
    }

    fn put_locked(
        &self,
        path: &Path,
        body: &[u8],
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        if when == Precondition::Any {
            // No earlier version is kept: nothing is restored from a sign
            // of life.
            write_atomically(path, body, 0o600).map_err(|e| io_error("writing", path, e))?;
            return Ok(etag_of(body));
        }
        let current = self.read(path)?.map(|b| etag_of(&b));
        let holds = match when {
            Precondition::Absent => current.is_none(),
            Precondition::Matches(etag) => current.as_deref().is_some_and(|c| same_etag(c, etag)),
            Precondition::Any => true,
        };
        if !holds {
            return Err(StoreError::Conflict);
        }
        self.keep(path, body)?;
        write_atomically(path, body, 0o600).map_err(|e| io_error("writing", path, e))?;
        Ok(etag_of(body))
    }
}

impl Store for LocalStore {
    /// The file system's clock: the modification time it gives a write of
    /// `.clock` under the root (the machine's clock, or the file server's
    /// on a shared mount); `None` when the directory cannot be written
    /// (or `.clock` is not a plain file: no link followed, never blocking).
    fn clock(&self) -> Option<super::StoreTime> {
        use std::io::Write;
        let path = self.root.join(".clock");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        f.write_all(b"t").ok()?;
        let heard = std::time::Instant::now();
        let local = chrono::Utc::now();
        let at: chrono::DateTime<chrono::Utc> = f.metadata().ok()?.modified().ok()?.into();
        Some(super::StoreTime {
            at,
            // File times are fine, but a file server's may be coarse.
            resolution: std::time::Duration::from_millis(10),
            heard,
            local,
        })
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError> {
        let (key, known) = (key.to_string(), if_none_match.map(str::to_string));
        self.off_thread(false, move |s| s.get_now(&key, known.as_deref()))
            .await
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        let (key, when) = (key.to_string(), Condition::of(when));
        self.off_thread(true, move |s| {
            s.put_now(&key, &body, when.as_precondition())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.off_thread(false, move |s| s.list_now(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.off_thread(true, move |s| s.delete_now(&key)).await
    }

    async fn list_tags(&self, prefix: &str) -> Result<Vec<super::Listed>, StoreError> {
        let prefix = prefix.to_string();
        self.off_thread(false, move |s| s.list_tags_now(&prefix))
            .await
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        let (key, etag) = (key.to_string(), etag.to_string());
        self.off_thread(true, move |s| s.delete_if_now(&key, &etag))
            .await
    }

    async fn versioning(&self) -> Result<super::Versioning, StoreError> {
        Ok(super::Versioning::On)
    }

    async fn versions(&self, key: &str) -> Result<Vec<super::StoredVersion>, StoreError> {
        let key = key.to_string();
        self.off_thread(false, move |s| s.versions_now(&key)).await
    }

    async fn get_version(&self, key: &str, version_id: &str) -> Result<Vec<u8>, StoreError> {
        let (key, id) = (key.to_string(), version_id.to_string());
        self.off_thread(false, move |s| s.get_version_now(&key, &id))
            .await
    }
}

/// The operations themselves, on the calling (blocking) thread.
impl LocalStore {
    fn get_now(&self, key: &str, if_none_match: Option<&str>) -> Result<Fetched, StoreError> {
        let path = self.path(key);
        Ok(match self.read(&path)? {
            None => Fetched::Absent,
            Some(body) => {
                let etag = etag_of(&body);
                if if_none_match.is_some_and(|e| same_etag(e, &etag)) {
                    Fetched::Unchanged
                } else {
                    Fetched::Found { body, etag }
                }
            }
        })
    }

    fn put_now(
        &self,
        key: &str,
        body: &[u8],
        when: Precondition<'_>,
    ) -> Result<String, StoreError> {
        let path = self.path(key);
        let dir = path.parent().expect("a key has a parent directory");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("creating", dir, e))?;
        let _lock = lock(&path)?;
        self.put_locked(&path, body, when)
    }

    fn list_now(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Walk the deepest directory the prefix names completely.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut keys = Vec::new();
        let mut stack = vec![(self.root.join(dir_part), dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("listing", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error("listing", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // locks and temporary files
                }
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let file_type = entry
                    .file_type()
                    .map_err(|e| io_error("listing", &dir, e))?;
                if file_type.is_dir() {
                    stack.push((entry.path(), key));
                } else if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete_now(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("deleting", &path, e)),
        }
        self.forget_versions(&path)
    }

    fn list_tags_now(&self, prefix: &str) -> Result<Vec<super::Listed>, StoreError> {
        let mut listed = Vec::new();
        for key in self.list_now(prefix)? {
            let path = self.path(&key);
            // The modification time and size stand in for the ETag: they
            // change with every atomic replace.
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("reading", &path, e)),
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            listed.push(super::Listed {
                key,
                tag: format!("{mtime}-{}", meta.len()),
            });
        }
        Ok(listed)
    }

    fn delete_if_now(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        if !path.parent().is_some_and(Path::exists) {
            return Err(StoreError::Conflict);
        }
        let _lock = lock(&path)?;
        match self.read(&path)? {
            Some(body) if same_etag(&etag_of(&body), etag) => {
                fs::remove_file(&path).map_err(|e| io_error("deleting", &path, e))?;
                self.forget_versions(&path)
            }
            _ => Err(StoreError::Conflict),
        }
    }

    fn versions_now(&self, key: &str) -> Result<Vec<super::StoredVersion>, StoreError> {
        let mut out = Vec::new();
        let path = self.path(key);
        if let Some(at) = modified(&path)? {
            out.push(super::StoredVersion {
                version_id: CURRENT.into(),
                stored_at: at,
                latest: true,
                deleted: false,
            });
        }
        for id in self.kept(&path)?.into_iter().rev() {
            let stored_at =
                modified(&self.versions_dir(&path).join(format!("{id}.json")))?.unwrap_or_default();
            out.push(super::StoredVersion {
                version_id: id,
                stored_at,
                latest: false,
                deleted: false,
            });
        }
        Ok(out)
    }

    fn get_version_now(&self, key: &str, version_id: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key);
        let file = if version_id == CURRENT {
            path.clone()
        } else if !version_id.is_empty() && version_id.bytes().all(|b| b.is_ascii_digit()) {
            self.versions_dir(&path).join(format!("{version_id}.json"))
        } else {
            return Err(StoreError::Other(format!(
                "no version {version_id:?} of {key}"
            )));
        };
        self.read(&file)?
            .ok_or_else(|| StoreError::Other(format!("no version {version_id:?} of {key}")))
    }
}

/// Writes `body` to `path` atomically and durably: into a temporary file in
/// the same directory (created exclusively with a random name, so a link
/// planted there is never followed; removed if anything fails), fsynced,
/// given `mode`, renamed over `path`, and the directory fsynced. A reader
/// never sees half a file. Every file build-state writes goes through it.
pub(crate) fn write_atomically(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(body)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// The id of the document as it is now, among its kept versions.
const CURRENT: &str = "current";

/// Versions kept of each object written (the newest ones).
pub(crate) const KEEP_VERSIONS: usize = 10;

fn modified(path: &Path) -> Result<Option<crate::model::Timestamp>, StoreError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.modified().ok().map(chrono::DateTime::<chrono::Utc>::from)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", path, e)),
    }
}

impl LocalStore {
    /// Where the previous versions of the object at `path` are kept:
    /// `.versions/KEY/` under the root (hidden from listings).
    fn versions_dir(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix(self.root.as_path()).unwrap_or(path);
        self.root.join(".versions").join(rel)
    }

    /// A deleted object's kept versions go with it (a local directory has no
    /// lifecycle rules to expire them): `prune` deletes a build whole.
    fn forget_versions(&self, path: &Path) -> Result<(), StoreError> {
        let dir = self.versions_dir(path);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("deleting the versions of", path, e)),
        }
    }

    /// The ids of the kept versions of `path`, oldest first.
    fn kept(&self, path: &Path) -> Result<Vec<String>, StoreError> {
        let dir = self.versions_dir(path);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &dir, e)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json")?.to_string();
                id.bytes().all(|b| b.is_ascii_digit()).then_some(id)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Keeps `body`, about to be written at `path` (under its lock), as the
    /// object's newest version, as a bucket with versioning keeps every
    /// write; drops all but the newest [`KEEP_VERSIONS`]. Kept before the
    /// write, so a crash between the two leaves a version never current,
    /// never a gap; a hand edit of the file, which bypasses the store,
    /// leaves the last version written here to restore.
    fn keep(&self, path: &Path, body: &[u8]) -> Result<(), StoreError> {
        let dir = self.versions_dir(path);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error("creating", &dir, e))?;
        let kept = self.kept(path)?;
        let next = kept
            .last()
            .and_then(|id| id.parse::<u64>().ok())
            .map_or(1, |n| n + 1);
        let target = dir.join(format!("{next:010}.json"));
        write_atomically(&target, body, 0o600)
            .map_err(|e| io_error("keeping a version of", path, e))?;
        let mut all = kept;
        all.push(format!("{next:010}"));
        for old in &all[..all.len().saturating_sub(KEEP_VERSIONS)] {
            let _ = fs::remove_file(dir.join(format!("{old}.json")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::run_to_end(f).unwrap()
    }

    /// A lock another process holds (or a stuck mount): the write gives up
    /// within the deadline, uncertain, while reads go on being answered.
    #[test]
    fn a_stuck_write_gives_up_within_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().to_path_buf()).with_deadline(Duration::from_millis(300));
        block_on(async {
            s.put("b/state.json", b"one".to_vec(), Precondition::Absent)
                .await
                .unwrap();
        });
        let held = lock(&dir.path().join("b/state.json")).unwrap();
        let started = std::time::Instant::now();
        let (write, read) = block_on(async {
            let write = s
                .put("b/state.json", b"two".to_vec(), Precondition::Any)
                .await;
            (write, s.get("b/state.json", None).await)
        });
        assert!(
            matches!(&write, Err(StoreError::Uncertain(m)) if m.contains("did not answer within 0.3s")),
            "{write:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(read, Ok(Fetched::Found { .. })), "{read:?}");
        drop(held);
    }

    #[test]
    fn conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().to_path_buf());
        block_on(async {
            assert_eq!(s.get("b/state.json", None).await.unwrap(), Fetched::Absent);
            let e1 = s
                .put("b/state.json", b"one".to_vec(), Precondition::Absent)
                .await
                .unwrap();
            assert_eq!(e1, "\"f97c5d29941bfb1b2fdab0874906ab82\"");
            assert_eq!(
                s.put("b/state.json", b"x".to_vec(), Precondition::Absent)
                    .await,
                Err(StoreError::Conflict)
            );
            assert_eq!(
                s.get("b/state.json", Some(&e1)).await.unwrap(),
                Fetched::Unchanged
            );
            let e2 = s
                .put("b/state.json", b"two".to_vec(), Precondition::Matches(&e1))
                .await
                .unwrap();
            assert_eq!(
                s.put(
                    "b/state.json",
                    b"three".to_vec(),
                    Precondition::Matches(&e1)
                )
                .await,
                Err(StoreError::Conflict)
            );
            assert_eq!(
                s.get("b/state.json", Some(&e1)).await.unwrap(),
                Fetched::Found {
                    body: b"two".to_vec(),
                    etag: e2
                }
            );
            let mode = fs::metadata(dir.path().join("b/state.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            s.put("b/runs/1.json", b"r".to_vec(), Precondition::Absent)
                .await
                .unwrap();
            s.put("c/state.json", b"c".to_vec(), Precondition::Absent)
                .await
                .unwrap();
            assert_eq!(
                s.list("").await.unwrap(),
                ["b/runs/1.json", "b/state.json", "c/state.json"]
            );
            assert_eq!(
                s.list("b/").await.unwrap(),
                ["b/runs/1.json", "b/state.json"]
            );
            s.delete("c/state.json").await.unwrap();
            s.delete("c/state.json").await.unwrap();
            assert_eq!(s.get("c/state.json", None).await.unwrap(), Fetched::Absent);
        });
    }
}
