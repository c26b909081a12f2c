//! Persistence: one file per object under `objects/<group>/<plural>/<namespace
//! or _cluster>/<name>.json`, written atomically, and the store's
//! resourceVersion in `objects/state.json`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::super::SimError;
use super::super::status::ApiError;
use super::{EventType, Inner, Objects, Store, io_err, meta_str, resource_version_of};

impl Store {
    /// Load the objects persisted under `root` (if any).
    pub fn open(root: &Path) -> Result<Store, SimError> {
        let objects_dir = root.join("objects");
        std::fs::create_dir_all(&objects_dir).map_err(io_err(&objects_dir))?;
        let lock_path = objects_dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SimError::Corrupt {
                    path: root.to_path_buf(),
                    message: "another sim is using this data directory".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SimError::Io { path: lock_path, source: e }),
        }
        let mut objects: Objects = BTreeMap::new();
        let mut max_rv = 0u64;
        // Layout: objects/<group>/<plural>/<namespace or _cluster>/<name>.json
        for group in read_dirs(&objects_dir)? {
            for plural in read_dirs(&group)? {
                let key = format!("{}/{}", file_name(&group), file_name(&plural));
                for ns_dir in read_dirs(&plural)? {
                    let ns = file_name(&ns_dir);
                    let ns = if ns == "_cluster" { String::new() } else { ns };
                    let entries = std::fs::read_dir(&ns_dir).map_err(io_err(&ns_dir))?;
                    for entry in entries {
                        let path = entry.map_err(io_err(&ns_dir))?.path();
                        if path.extension().and_then(|e| e.to_str()) != Some("json") {
                            // Leftover temporary files from a crash mid-write.
                            if file_name(&path).starts_with('.') {
                                let _ = std::fs::remove_file(&path);
                            }
                            continue;
                        }
                        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                        let obj: Value = serde_json::from_str(&text)
                            .map_err(|e| SimError::Corrupt { path: path.clone(), message: e.to_string() })?;
                        let name = meta_str(&obj, "name")
                            .ok_or_else(|| SimError::Corrupt {
                                path: path.clone(),
                                message: "no metadata.name".into(),
                            })?
                            .to_string();
                        max_rv = max_rv.max(resource_version_of(&obj).unwrap_or(0));
                        objects.entry(key.clone()).or_default().insert((ns.clone(), name), obj);
                    }
                }
            }
        }
        let state_path = root.join("objects").join("state.json");
        let saved_rv = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("resourceVersion")?.as_str()?.parse::<u64>().ok())
                .ok_or_else(|| SimError::Corrupt { path: state_path.clone(), message: "no resourceVersion".into() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(SimError::Io { path: state_path, source: e }),
        };
        let rv = max_rv.max(saved_rv);
        let (tx, _) = broadcast::channel(4096);
        Ok(Store {
            inner: Mutex::new(Inner { rv, objects, history: VecDeque::new(), history_from: rv }),
            tx,
            root: root.to_path_buf(),
            dir_lock: Mutex::new(Some(lock)),
        })
    }

    /// Write `obj` (or remove it, for `Deleted`), then the store's
    /// resourceVersion `rv`.
    pub(super) fn persist(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        kind: EventType,
        obj: &Value,
        rv: u64,
    ) -> Result<(), ApiError> {
        let path = self.object_path(resource, ns, name);
        let persisted = match kind {
            EventType::Deleted => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            _ => write_atomic(&path, obj.to_string().as_bytes()),
        }
        .and_then(|()| {
            write_atomic(
                &self.root.join("objects").join("state.json"),
                json!({ "resourceVersion": rv.to_string() }).to_string().as_bytes(),
            )
        });
        persisted.map_err(|e| ApiError::internal(format!("sim store cannot write {}: {e}", path.display())))
    }

    fn object_path(&self, resource: &str, ns: &str, name: &str) -> PathBuf {
        let ns = if ns.is_empty() { "_cluster" } else { ns };
        self.root.join("objects").join(resource).join(ns).join(format!("{name}.json"))
    }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map_err(io_err(dir))?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Write to a temporary file beside `path`, then rename over it: readers
/// and a restarted sim see the old or the new object, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", file_name(path)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
