//! Walking, copying and digesting directory trees (model directories and
//! build contexts). Files are streamed: a multi-GB model is hashed and copied
//! in fixed-size chunks (or hard-linked), never read whole.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::RenderError;

/// One regular file below a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    /// `/`-separated path relative to the root.
    pub rel: String,
    pub abs: PathBuf,
    /// Normalised mode: 0o755 if any execute bit is set, else 0o644 (umask
    /// and checkout differences must not change the digest; git does the same).
    pub mode: u32,
}

/// Every regular file below `root`, sorted by relative path (byte order).
/// Symlinks and other special files are refused: a build context must not
/// reach outside itself.
pub(crate) fn walk(root: &Path) -> Result<Vec<FileEntry>, RenderError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|source| RenderError::Io { path: dir.clone(), source })?;
        for entry in rd {
            let entry = entry.map_err(|source| RenderError::Io { path: dir.clone(), source })?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|source| RenderError::Io { path: path.clone(), source })?;
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = relative(root, &path)?;
                out.push(FileEntry { rel, abs: path, mode: normalized_mode(&meta) });
            } else {
                return Err(RenderError::SpecialFile { path });
            }
        }
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

fn relative(root: &Path, path: &Path) -> Result<String, RenderError> {
    let rel = path.strip_prefix(root).expect("walk stays below its root");
    let mut parts = Vec::new();
    for c in rel.components() {
        match c.as_os_str().to_str() {
            Some(s) => parts.push(s),
            None => return Err(RenderError::NonUtf8Path { path: path.to_path_buf() }),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(unix)]
fn normalized_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 }
}

#[cfg(not(unix))]
fn normalized_mode(_meta: &fs::Metadata) -> u32 {
    0o644
}

/// SHA-256 of one file, streamed in 256 KiB chunks.
pub(crate) fn file_sha256(path: &Path) -> Result<String, RenderError> {
    let io_err = |source| RenderError::Io { path: path.to_path_buf(), source };
    let mut f = fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `sha256:<hex>` over the sorted listing `"<mode> <sha256> <path>\n"` of
/// `entries`: stable over file order and mtimes, changed by any path, mode
/// (execute bit) or content change.
pub(crate) fn tree_digest(entries: &[FileEntry]) -> Result<String, RenderError> {
    let mut sorted: Vec<&FileEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    let mut listing = Sha256::new();
    for e in sorted {
        let sum = file_sha256(&e.abs)?;
        listing.update(format!("{:o} {sum} {}\n", e.mode, e.rel).as_bytes());
    }
    Ok(format!("sha256:{}", hex::encode(listing.finalize())))
}

/// Place `src` at `dst`: with `link`, a hard link when both are on one
/// filesystem (no second copy of a multi-GB model); else a copy, which
/// `std::fs::copy` streams in the kernel (`copy_file_range`). Either way
/// `dst` keeps the source's permissions.
pub(crate) fn place(src: &Path, dst: &Path, link: bool) -> Result<(), RenderError> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|source| RenderError::Io { path: parent.to_path_buf(), source })?;
    }
    if link && fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    fs::copy(src, dst).map(|_| ()).map_err(|source| RenderError::Io { path: dst.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, body: &str) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn digest_is_stable_over_creation_order_and_mtime() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write(a.path(), "x/one.txt", "1");
        write(a.path(), "two.txt", "2");
        write(b.path(), "two.txt", "2");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(b.path(), "x/one.txt", "1");
        let da = tree_digest(&walk(a.path()).unwrap()).unwrap();
        let db = tree_digest(&walk(b.path()).unwrap()).unwrap();
        assert_eq!(da, db);
        assert!(da.starts_with("sha256:") && da.len() == 7 + 64);
    }

    #[test]
    fn digest_changes_with_content_path_and_exec_bit() {
        let a = tempfile::tempdir().unwrap();
        write(a.path(), "f", "1");
        let d0 = tree_digest(&walk(a.path()).unwrap()).unwrap();
        write(a.path(), "f", "2");
        let d1 = tree_digest(&walk(a.path()).unwrap()).unwrap();
        assert_ne!(d0, d1);
        fs::rename(a.path().join("f"), a.path().join("g")).unwrap();
        let d2 = tree_digest(&walk(a.path()).unwrap()).unwrap();
        assert_ne!(d1, d2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(a.path().join("g"), fs::Permissions::from_mode(0o755)).unwrap();
            let d3 = tree_digest(&walk(a.path()).unwrap()).unwrap();
            assert_ne!(d2, d3);
            // Group/other bits other than execute do not count.
            fs::set_permissions(a.path().join("g"), fs::Permissions::from_mode(0o775)).unwrap();
            assert_eq!(d3, tree_digest(&walk(a.path()).unwrap()).unwrap());
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused() {
        let a = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", a.path().join("passwd")).unwrap();
        assert!(matches!(walk(a.path()), Err(RenderError::SpecialFile { .. })));
    }
}
