//! `file://` sources: a file or a directory tree on this machine, copied with
//! the same manifest and digest as an S3 source.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::verify::Checks;
use super::{Entry, Job, Origin, StorageError, safe_relative};

/// Every regular file under `root` (or `root` itself if it is a file).
/// Symlinks to files are followed; symlinked directories are not walked, so
/// a link cannot loop or pull in a tree outside the source.
pub(crate) async fn list(root: &Path) -> Result<Vec<Entry>, StorageError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::metadata(&root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StorageError::NotFound { url: format!("file://{}", root.display()), endpoint: None }
            }
            _ => StorageError::io("stat", &root, e),
        })?;
        let mut out = Vec::new();
        if meta.is_file() {
            let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string();
            out.push(entry(&root, &name, &meta)?);
        } else {
            walk(&root, &root, &mut out)?;
        }
        Ok(out)
    })
    .await
    .expect("walk does not panic")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<(), StorageError> {
    let mut items: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| StorageError::io("read directory", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| StorageError::io("read directory", dir, e))?;
    items.sort_by_key(|i| i.file_name());
    for item in items {
        let path = item.path();
        let ft = item.file_type().map_err(|e| StorageError::io("stat", &path, e))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| StorageError::io("stat", &path, e))?;
        if !meta.is_file() {
            continue;
        }
        let rel = path.strip_prefix(root).expect("walked below root");
        let rel = rel.to_str().ok_or_else(|| StorageError::BadSource {
            source_url: format!("file://{}", root.display()),
            reason: format!("file name {} is not UTF-8", rel.display()),
        })?;
        out.push(entry(&path, rel, &meta)?);
    }
    Ok(())
}

fn entry(path: &Path, rel: &str, meta: &std::fs::Metadata) -> Result<Entry, StorageError> {
    let safe = safe_relative(rel).map_err(|reason| StorageError::UnsafeKey {
        url: format!("file://{}", path.display()),
        rel: rel.to_string(),
        reason,
    })?;
    Ok(Entry {
        rel: safe,
        size: meta.len(),
        identity: format!("file:{}|size={}|mtime={}.{}", path.display(), meta.len(), meta.mtime(), meta.mtime_nsec()),
        origin: Origin::File { path: path.to_path_buf() },
        etag: None,
        md5: None,
    })
}

/// Copy `src` to `partial` (the kernel's copy path, no user-space buffer).
pub(crate) async fn copy(job: &Job, src: &Path, partial: &Path, size: u64) -> Result<Checks, StorageError> {
    let (src, dst): (PathBuf, PathBuf) = (src.to_path_buf(), partial.to_path_buf());
    let copied =
        tokio::task::spawn_blocking(move || std::fs::copy(&src, &dst).map_err(|e| StorageError::io("copy", &src, e)))
            .await
            .expect("copy does not panic")?;
    job.progress.add(copied.min(size));
    Ok(Checks::default())
}
