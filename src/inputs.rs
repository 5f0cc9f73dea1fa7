//! Files a put (`file`, `vars_file`, `error_file`) or the CLI
//! (`--vars-file`, `--error-file`) reads: regular files only, at most
//! [`MAX_INPUT`] bytes, and for a put inside the sources directory, so that a
//! FIFO cannot hang a step, `/dev/zero` cannot fill its memory, and
//! `../../etc/passwd` cannot end up in a document.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest file read: 1 MiB (a document holds far less).
pub(crate) const MAX_INPUT: u64 = 1 << 20;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// No such file: a task that failed early may not have written it.
    #[error("{0}")]
    Missing(String),
    /// Not a regular file, too large, outside the sources, or unreadable.
    #[error("{0}")]
    Refused(String),
}

fn io_error(path: &Path, e: std::io::Error) -> InputError {
    let text = format!("cannot read {}: {e}", path.display());
    if e.kind() == std::io::ErrorKind::NotFound {
        InputError::Missing(text)
    } else {
        InputError::Refused(text)
    }
}

/// Reads `rel`, which must name a regular file inside `root` (after every
/// symbolic link is followed). Errors are one phrase, without the param name.
pub(crate) fn read_inside(root: &Path, rel: &str) -> Result<Vec<u8>, InputError> {
    let full = root.join(rel);
    let real = full.canonicalize().map_err(|e| io_error(&full, e))?;
    let real_root = root.canonicalize().map_err(|e| io_error(root, e))?;
    if !real.starts_with(&real_root) {
        return Err(InputError::Refused(format!(
            "{} is outside the sources directory {} (it resolves to {}); name a file inside it",
            full.display(),
            root.display(),
            real.display()
        )));
    }
    read_regular(&real)
}

/// Reads `path`, which must be a regular file of at most [`MAX_INPUT`] bytes.
pub(crate) fn read_regular(path: &Path) -> Result<Vec<u8>, InputError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    not_regular(path, &meta.file_type())?;
    // Non-blocking, so that a file swapped for a FIFO meanwhile cannot hang
    // the open; the type is checked again on what was opened.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    not_regular(path, &meta.file_type())?;
    read_bounded(file, path)
}

fn read_bounded(file: File, path: &Path) -> Result<Vec<u8>, InputError> {
    let mut body = Vec::new();
    file.take(MAX_INPUT + 1)
        .read_to_end(&mut body)
        .map_err(|e| io_error(path, e))?;
    if body.len() as u64 > MAX_INPUT {
        return Err(InputError::Refused(format!(
            "{} is larger than {} KiB; a state document is not the place for it",
            path.display(),
            MAX_INPUT / 1024
        )));
    }
    Ok(body)
}

fn not_regular(path: &Path, t: &std::fs::FileType) -> Result<(), InputError> {
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(InputError::Refused(format!(
        "{} is {what}; name a regular file",
        PathBuf::from(path).display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a missing file is `Missing` (a failing task may not have
    /// written it); anything else that stops the read is `Refused`.
    #[test]
    fn missing_and_refused_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_regular(&dir.path().join("absent.json")),
            Err(InputError::Missing(m)) if m.contains("absent.json")
        ));
        assert!(matches!(
            read_regular(dir.path()),
            Err(InputError::Refused(m)) if m.ends_with("is a directory; name a regular file")
        ));
    }

    #[test]
    fn reads_a_regular_file_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/e.txt"), "boom").unwrap();
        assert_eq!(read_inside(dir.path(), "out/e.txt").unwrap(), b"boom");
        assert_eq!(
            read_inside(dir.path(), "out/../out/e.txt").unwrap(),
            b"boom"
        );
    }

    #[test]
    fn refuses_what_is_not_a_small_regular_file_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("big"), vec![b'x'; MAX_INPUT as usize + 1]).unwrap();
        std::fs::write(root.join("exact"), vec![b'x'; MAX_INPUT as usize]).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("out-link")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        assert!(
            read_inside(root, "d")
                .unwrap_err()
                .to_string()
                .contains("is a directory")
        );
        assert!(
            read_inside(root, "big")
                .unwrap_err()
                .to_string()
                .contains("larger than 1024 KiB")
        );
        assert_eq!(
            read_inside(root, "exact").unwrap().len(),
            MAX_INPUT as usize
        );
        for escape in ["../../../../../../etc/passwd", "/etc/passwd", "out-link"] {
            let e = read_inside(root, escape).unwrap_err().to_string();
            assert!(
                e.contains("is outside the sources directory"),
                "{escape}: {e}"
            );
        }
        assert!(
            read_inside(root, "zero")
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        assert!(
            read_regular(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string()
                .contains("is a device")
        );
        assert!(
            read_inside(root, "missing")
                .unwrap_err()
                .to_string()
                .contains("No such file")
        );
        let fifo = root.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(
            read_inside(root, "fifo")
                .unwrap_err()
                .to_string()
                .contains("is a FIFO (named pipe)")
        );
    }
}

/// Where the files a request names are read: the [`translate`] seam.
///
/// [`translate`]: crate::request::translate
pub(crate) trait Files {
    /// The body of the file `path` names.
    fn read(&self, path: &str) -> Result<Vec<u8>, InputError>;
}

/// A put's files: inside the sources directory Concourse gives `out`.
pub(crate) struct SourcesDir<'a>(pub &'a Path);

impl Files for SourcesDir<'_> {
    fn read(&self, path: &str) -> Result<Vec<u8>, InputError> {
        read_inside(self.0, path)
    }
}

/// The CLI's files: paths as given, from the working directory.
pub(crate) struct WorkingDir;

impl Files for WorkingDir {
    fn read(&self, path: &str) -> Result<Vec<u8>, InputError> {
        read_regular(Path::new(path))
    }
}

/// Files in memory (for tests): a name not inserted is missing.
#[derive(Default)]
pub(crate) struct FilesInMemory(std::collections::BTreeMap<String, Vec<u8>>);

impl FilesInMemory {
    /// Adds a file.
    pub(crate) fn insert(&mut self, path: &str, body: &[u8]) {
        self.0.insert(path.to_string(), body.to_vec());
    }
}

impl Files for FilesInMemory {
    fn read(&self, path: &str) -> Result<Vec<u8>, InputError> {
        let body = self.0.get(path).cloned().ok_or_else(|| {
            InputError::Missing(format!(
                "cannot read {path}: No such file or directory (os error 2)"
            ))
        })?;
        if body.len() as u64 > MAX_INPUT {
            return Err(InputError::Refused(format!(
                "{path} is larger than {} KiB; a state document is not the place for it",
                MAX_INPUT / 1024
            )));
        }
        Ok(body)
    }
}
