//! The build context as an image layer: the uploaded archive (tar or
//! tar.gz), its Dockerfile, and one gzip layer of the files placed as the
//! COPY instructions say, hashed as it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

fn open_archive(path: &Path) -> std::io::Result<tar::Archive<Box<dyn Read>>> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    Ok(tar::Archive::new(reader))
}

fn clean(p: &Path) -> String {
    let s = p.to_string_lossy();
    let s = s.trim_start_matches("./").trim_end_matches('/');
    if s == "." { String::new() } else { s.to_string() }
}

pub(super) fn read_dockerfile(archive: &Path, name: &str) -> std::io::Result<Option<String>> {
    let mut ar = open_archive(archive)?;
    for entry in ar.entries()? {
        let entry = entry?;
        if clean(&entry.path()?) == name && entry.header().entry_type().is_file() {
            let mut s = String::new();
            entry.take(1024 * 1024).read_to_string(&mut s)?;
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Where COPY puts the context file `p`, by each instruction in order.
fn destinations(p: &str, copies: &[(Vec<String>, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (sources, dest) in copies {
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        let dest = dest.trim_end_matches('/');
        for src in sources {
            let src = src.trim_start_matches("./").trim_end_matches('/');
            let base = p.rsplit('/').next().unwrap_or(p);
            if src.is_empty() || src == "." {
                out.push(format!("{dest}/{p}"));
            } else if p == src {
                out.push(if into_dir { format!("{dest}/{base}") } else { dest.to_string() });
            } else if let Some(rest) = p.strip_prefix(src).and_then(|r| r.strip_prefix('/')) {
                out.push(format!("{dest}/{rest}"));
            } else if (src.contains('*') || src.contains('?'))
                && globset::Glob::new(src).is_ok_and(|g| g.compile_matcher().is_match(p))
            {
                out.push(format!("{dest}/{base}"));
            }
        }
    }
    out.into_iter().map(|d| d.trim_start_matches('/').to_string()).collect()
}

#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) digest: String,
    pub(super) diff_id: String,
    pub(super) size: u64,
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The context files placed where the COPY instructions put them, as one
/// gzip tar layer streamed to `out`.
pub(super) fn write_layer(archive: &Path, out: &Path, copies: &[(Vec<String>, String)]) -> std::io::Result<Layer> {
    // First pass: which files go where, and the directories they need.
    let mut dests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for entry in open_archive(archive)?.entries()? {
        let entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let p = clean(&entry.path()?);
        let d = destinations(&p, copies);
        for dest in &d {
            let mut cur = Path::new(dest).parent();
            while let Some(parent) = cur.filter(|c| !c.as_os_str().is_empty()) {
                dirs.insert(parent.to_string_lossy().into_owned());
                cur = parent.parent();
            }
        }
        if !d.is_empty() {
            dests.insert(p, d);
        }
    }
    let file = std::fs::File::create(out)?;
    let gz_side = HashWriter { inner: std::io::BufWriter::new(file), hasher: Sha256::new(), count: 0 };
    let gz = flate2::write::GzEncoder::new(gz_side, flate2::Compression::fast());
    let tar_side = HashWriter { inner: gz, hasher: Sha256::new(), count: 0 };
    let mut builder = tar::Builder::new(tar_side);
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        builder.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    for entry in open_archive(archive)?.entries()? {
        let mut entry = entry?;
        let p = clean(&entry.path()?);
        let Some(targets) = dests.get(&p) else { continue };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(entry.header().mode().unwrap_or(0o644));
        h.set_mtime(entry.header().mtime().unwrap_or(0));
        h.set_size(entry.header().size()?);
        if targets.len() == 1 {
            builder.append_data(&mut h, &targets[0], &mut entry)?;
        } else {
            // One input read, several destinations: spool it once.
            let mut tmp = tempfile::tempfile()?;
            std::io::copy(&mut entry, &mut tmp)?;
            for t in targets {
                use std::io::Seek;
                tmp.seek(std::io::SeekFrom::Start(0))?;
                builder.append_data(&mut h.clone(), t, &mut tmp)?;
            }
        }
    }
    let tar_side = builder.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(tar_side.hasher.finalize()));
    let mut gz_side = tar_side.inner.finish()?;
    gz_side.flush()?;
    Ok(Layer { digest: format!("sha256:{}", hex::encode(gz_side.hasher.finalize())), diff_id, size: gz_side.count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(list: &[(&[&str], &str)]) -> Vec<(Vec<String>, String)> {
        list.iter().map(|(s, d)| (s.iter().map(|x| x.to_string()).collect(), d.to_string())).collect()
    }

    #[test]
    fn copy_places_files_as_docker_does() {
        let c = copies(&[(&["."], "/microservice"), (&["requirements.txt"], "/tmp/"), (&["model"], "/opt/m")]);
        assert_eq!(destinations("Model.py", &c), vec!["microservice/Model.py"]);
        assert_eq!(destinations("requirements.txt", &c), vec!["microservice/requirements.txt", "tmp/requirements.txt"]);
        assert_eq!(destinations("model/w.pkl", &c), vec!["microservice/model/w.pkl", "opt/m/w.pkl"]);
        let c = copies(&[(&["a.txt"], "/x/b.txt"), (&["*.py"], "/src/")]);
        assert_eq!(destinations("a.txt", &c), vec!["x/b.txt"]);
        assert_eq!(destinations("m.py", &c), vec!["src/m.py"]);
        assert!(destinations("other", &c).is_empty());
    }
}
