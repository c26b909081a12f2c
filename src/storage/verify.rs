//! Verification and the small records that make a retry cheap: which ranges
//! of a partial file are complete, and what a finished file was verified as.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use aws_smithy_checksums::ChecksumAlgorithm;
use base64::Engine;
use md5::Digest as _;
use serde::{Deserialize, Serialize};

use super::{Entry, Job, StorageError};

/// What the source said a file's bytes must hash to, besides its size.
#[derive(Debug, Default, Clone)]
pub(crate) struct Checks {
    /// Hex MD5 from a single-part ETag (not for SSE-KMS/SSE-C objects, whose
    /// ETags are not MD5s).
    pub etag_md5: Option<String>,
    /// A full-object checksum the server stored (`x-amz-checksum-*`), base64.
    pub checksum: Option<(ChecksumAlgorithm, String)>,
    /// A multipart upload's ETag (not for SSE-KMS/SSE-C objects either).
    pub composite_etag: Option<CompositeEtag>,
}

/// `<hex MD5 of the parts' binary MD5s>-<parts>`, the ETag S3 gives an
/// object completed from a multipart upload. It can be recomputed from the
/// bytes once the part boundaries are known (`part_sizes`, from a HEAD per
/// part number); until then it is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompositeEtag {
    pub md5_of_md5s: String,
    pub parts: u32,
    pub part_sizes: Vec<u64>,
}

impl CompositeEtag {
    pub fn parse(etag: Option<&str>) -> Option<CompositeEtag> {
        let (hex, parts) = etag?.trim_matches('"').split_once('-')?;
        let parts: u32 = parts.parse().ok().filter(|n| (1..=10_000).contains(n))?;
        let md5 = Checks::md5_etag(Some(hex))?;
        Some(CompositeEtag { md5_of_md5s: md5, parts, part_sizes: Vec::new() })
    }

    /// Checkable: one size per part, adding up to the object's size.
    pub fn ready(&self, size: u64) -> bool {
        self.part_sizes.len() == self.parts as usize && self.part_sizes.iter().sum::<u64>() == size
    }
}

/// The composite ETag of bytes fed in order, cut at known part sizes.
struct PartHasher {
    sizes: std::vec::IntoIter<u64>,
    left: u64,
    part: md5::Md5,
    digests: Vec<u8>,
}

impl PartHasher {
    fn new(sizes: Vec<u64>) -> PartHasher {
        let mut sizes = sizes.into_iter();
        let left = sizes.next().unwrap_or(0);
        PartHasher { sizes, left, part: md5::Md5::new(), digests: Vec::new() }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = bytes.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            self.part.update(&bytes[..take]);
            bytes = &bytes[take..];
            self.left -= take as u64;
            if self.left == 0 {
                self.end_part();
            }
        }
    }

    fn end_part(&mut self) {
        let part = std::mem::replace(&mut self.part, md5::Md5::new());
        self.digests.extend_from_slice(&part.finalize());
        self.left = self.sizes.next().unwrap_or(u64::MAX);
    }

    fn finish(mut self, parts: u32) -> String {
        // Empty trailing parts (an empty object's only part) saw no bytes.
        while self.digests.len() < parts as usize * 16 {
            self.end_part();
        }
        format!("{}-{parts}", hex::encode(md5::Md5::digest(&self.digests)))
    }
}

impl Checks {
    /// The MD5 an ETag stands for, if it is a plain single-part one.
    pub fn md5_etag(etag: Option<&str>) -> Option<String> {
        let etag = etag?.trim_matches('"');
        (etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())).then(|| etag.to_ascii_lowercase())
    }
}

/// Completed ranges of a partial file, keyed by the object's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RangeState {
    pub identity: String,
    pub part_size: u64,
    /// Start offsets of ranges whose bytes are all written.
    pub done: BTreeSet<u64>,
    /// Hex MD5 of each done range that is one part of a multipart object
    /// (by start offset), so a resumed download still checks its ETag.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub part_md5: BTreeMap<u64, String>,
}

/// What a finished file was verified as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DoneRecord {
    identity: String,
    size: u64,
    sha256: String,
    /// The final file's mtime when it was verified: a file touched since is
    /// fetched again instead of trusted.
    mtime_ns: i128,
    /// The ETag and version id the download's response named, for the
    /// lineage of a reused file.
    #[serde(default)]
    served: super::Served,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Write `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a record.
pub(crate) async fn write_atomic(job: &Job, path: &Path, bytes: Vec<u8>) -> Result<(), StorageError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp_dir = job.work_dir.join("tmp");
    let tmp = tmp_dir.join(format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&tmp_dir).map_err(|e| StorageError::io("create directory", &tmp_dir, e))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        }
        std::fs::write(&tmp, &bytes).map_err(|e| StorageError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &path, e))
    })
    .await
    .expect("record write does not panic")
}

pub(crate) async fn load_ranges(path: &Path) -> Option<RangeState> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) async fn save_ranges(job: &Job, rel: &str, state: &RangeState) -> Result<(), StorageError> {
    write_atomic(job, &job.ranges_path(rel), serde_json::to_vec(state).expect("serialisable")).await
}

/// The sha256 of `entry`'s final file if an earlier call finished and
/// verified it against the same remote object and nobody touched it since.
pub(crate) async fn reusable(job: &Job, entry: &Entry) -> Result<Option<(String, super::Served)>, StorageError> {
    let Ok(bytes) = tokio::fs::read(job.done_path(&entry.rel)).await else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<DoneRecord>(&bytes) else {
        return Ok(None);
    };
    if rec.identity != entry.identity || rec.size != entry.size {
        return Ok(None);
    }
    match tokio::fs::symlink_metadata(job.final_path(&entry.rel)).await {
        Ok(meta) if meta.is_file() && meta.len() == rec.size && mtime_ns(&meta) == rec.mtime_ns => {
            Ok(Some((rec.sha256, rec.served)))
        }
        _ => Ok(None),
    }
}

/// SHA-256 and every hash `checks` asks for, fed a file's bytes in order.
pub(crate) struct Hashes {
    sha: sha2::Sha256,
    md5: Option<md5::Md5>,
    sum: Option<Box<dyn aws_smithy_checksums::http::HttpChecksum>>,
    parts: Option<(PartHasher, u32)>,
}

/// What [`Hashes`] computed; `composite` may come from per-part MD5s instead.
#[derive(Debug, Default)]
pub(crate) struct Digests {
    pub sha256: String,
    pub md5: Option<String>,
    pub checksum: Option<String>,
    pub composite: Option<String>,
}

impl Hashes {
    /// `parts`: also recompute the multipart ETag (when its part sizes are
    /// known); leave it out when the ranges hash their parts themselves.
    pub fn new(checks: &Checks, size: u64, parts: bool) -> Hashes {
        let composite = checks.composite_etag.as_ref().filter(|c| parts && c.ready(size));
        Hashes {
            sha: sha2::Sha256::new(),
            md5: checks.etag_md5.as_ref().map(|_| md5::Md5::new()),
            sum: checks.checksum.as_ref().map(|(alg, _)| alg.into_impl()),
            parts: composite.map(|c| (PartHasher::new(c.part_sizes.clone()), c.parts)),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        if let Some(m) = self.md5.as_mut() {
            m.update(bytes);
        }
        if let Some(s) = self.sum.as_mut() {
            s.update(bytes);
        }
        if let Some((p, _)) = self.parts.as_mut() {
            p.update(bytes);
        }
    }

    pub fn finish(self) -> Digests {
        Digests {
            sha256: hex::encode(self.sha.finalize()),
            md5: self.md5.map(|m| hex::encode(m.finalize())),
            checksum: self.sum.map(|s| base64::engine::general_purpose::STANDARD.encode(s.finalize())),
            composite: self.parts.map(|(p, n)| p.finish(n)),
        }
    }
}

/// The multipart ETag from the parts' own MD5s (hex, in part order), when
/// every part was hashed as it arrived.
pub(crate) fn composite_of(part_md5s: &[String]) -> Option<String> {
    let mut all = Vec::with_capacity(part_md5s.len() * 16);
    for h in part_md5s {
        all.extend_from_slice(&hex::decode(h).ok().filter(|b| b.len() == 16)?);
    }
    Some(format!("{}-{}", hex::encode(md5::Md5::digest(&all)), part_md5s.len()))
}

/// Hash the partial file once and compare with everything known about it.
pub(crate) async fn check(
    partial: &Path,
    entry: &Entry,
    checks: &Checks,
    expect: Option<&str>,
) -> Result<String, StorageError> {
    let path = partial.to_path_buf();
    let hashes = Hashes::new(checks, entry.size, true);
    let digests = tokio::task::spawn_blocking(move || {
        let partial = path;
        let mut hashes = hashes;
        let mut file = std::fs::File::open(&partial).map_err(|e| StorageError::io("open", &partial, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| StorageError::io("read", &partial, e))?;
            if n == 0 {
                break;
            }
            hashes.update(&buf[..n]);
        }
        Ok::<_, StorageError>(hashes)
    })
    .await
    .expect("hashing does not panic")?;
    let digests = digests.finish();
    compare(partial_len(partial).await?, entry, checks, &digests, expect)
}

async fn partial_len(partial: &Path) -> Result<u64, StorageError> {
    Ok(tokio::fs::metadata(partial).await.map_err(|e| StorageError::io("stat", partial, e))?.len())
}

/// Compare digests computed while the bytes arrived with everything known
/// about the file (no second pass over it).
pub(crate) async fn check_digests(
    partial: &Path,
    entry: &Entry,
    checks: &Checks,
    digests: &Digests,
    expect: Option<&str>,
) -> Result<String, StorageError> {
    compare(partial_len(partial).await?, entry, checks, digests, expect)
}

fn compare(
    len: u64,
    entry: &Entry,
    checks: &Checks,
    d: &Digests,
    expect: Option<&str>,
) -> Result<String, StorageError> {
    let mismatch = |what: &str, expected: String, actual: String| StorageError::Mismatch {
        url: entry.url(),
        what: what.into(),
        expected,
        actual,
    };
    if len != entry.size {
        return Err(mismatch("size", format!("{} bytes", entry.size), format!("{len} bytes")));
    }
    if let (Some(got), Some(want)) = (&d.md5, &checks.etag_md5)
        && got != want
    {
        return Err(mismatch("ETag (MD5)", want.clone(), got.clone()));
    }
    if let (Some(got), Some(c)) = (&d.composite, &checks.composite_etag) {
        let want = format!("{}-{}", c.md5_of_md5s, c.parts);
        if *got != want {
            return Err(mismatch("multipart ETag (MD5 of the parts' MD5s)", want, got.clone()));
        }
    }
    if let (Some(got), Some((alg, want))) = (&d.checksum, &checks.checksum)
        && got != want
    {
        return Err(mismatch(&format!("{} checksum", alg.as_str()), want.clone(), got.clone()));
    }
    if let Some(want) = expect
        && want != d.sha256
    {
        return Err(mismatch("expectSha256", want.to_string(), d.sha256.clone()));
    }
    Ok(d.sha256.clone())
}

/// Check a file against the md5 a registry recorded for it (DVC), computed
/// the way that registry computes it.
pub(crate) async fn check_md5(partial: &Path, entry: &Entry, want: &super::Md5Check) -> Result<(), StorageError> {
    let (want, dos2unix) = match want {
        super::Md5Check::Plain(h) => (h.to_ascii_lowercase(), false),
        super::Md5Check::Dos2Unix(h) => (h.to_ascii_lowercase(), true),
    };
    let path = partial.to_path_buf();
    let got = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| StorageError::io("open", &path, e))?;
        md5_of(file, dos2unix).map_err(|e| StorageError::io("read", &path, e))
    })
    .await
    .expect("hashing does not panic")?;
    if got == want {
        return Ok(());
    }
    Err(StorageError::Mismatch {
        url: entry.url(),
        what: format!("md5 (recorded by DVC for `{}`)", entry.rel),
        expected: want,
        actual: got,
    })
}

/// DVC's text heuristic (dvc_data/hashfile/istextfile.py): a first block of
/// up to 512 bytes with no NUL and at most 30% bytes outside printable
/// ASCII and `\n\r\t\f\b`.
pub fn is_text(block: &[u8]) -> bool {
    if block.is_empty() {
        return true;
    }
    if block.contains(&0) {
        return false;
    }
    let text = |b: u8| (32..127).contains(&b) || matches!(b, b'\n' | b'\r' | b'\t' | 0x0c | 0x08);
    let nontext = block.iter().filter(|&&b| !text(b)).count();
    (nontext as f64) / (block.len() as f64) <= 0.30
}

/// Hex md5 of a stream; with `dos2unix`, DVC 2's md5 (`md5-dos2unix` in
/// DVC 3): the stream in chunks of exactly 1 MiB, and in each chunk whose
/// first 512 bytes look like text every CRLF turned into LF, as
/// dvc_data/hashfile/hash.py's `Dos2UnixHashStreamFile` does (so a CRLF
/// split across two chunks stays, there as here).
pub fn md5_of(mut r: impl Read, dos2unix: bool) -> std::io::Result<String> {
    const CHUNK: usize = 1 << 20;
    let mut h = md5::Md5::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Fill the chunk as Python's read(n) on a file does.
        let mut n = 0;
        while n < CHUNK {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if dos2unix && is_text(&chunk[..n.min(512)]) {
            let mut out = Vec::with_capacity(n);
            let mut i = 0;
            while i < n {
                if chunk[i] == b'\r' && chunk.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                out.push(chunk[i]);
                i += 1;
            }
            h.update(&out);
        } else {
            h.update(chunk);
        }
        if n < CHUNK {
            break;
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Give a verified partial file its final name and remember it as done.
pub(crate) async fn commit(
    job: &Job,
    entry: &Entry,
    partial: &Path,
    final_path: &Path,
    sha256: &str,
    served: &super::Served,
) -> Result<(), StorageError> {
    // Names were normalised already; this guards against a symlink planted
    // inside the model directory pointing elsewhere.
    let parent = final_path.parent().expect("has a parent");
    let (real_parent, real_root) = (canonical(parent).await?, canonical(&job.model_dir).await?);
    if !real_parent.starts_with(&real_root) {
        return Err(StorageError::UnsafeKey {
            url: entry.url(),
            rel: entry.rel.clone(),
            reason: super::UnsafePath::Escapes,
        });
    }
    tokio::fs::rename(partial, final_path).await.map_err(|e| StorageError::io("rename", final_path, e))?;
    let meta = tokio::fs::metadata(final_path).await.map_err(|e| StorageError::io("stat", final_path, e))?;
    let rec = DoneRecord {
        identity: entry.identity.clone(),
        size: entry.size,
        sha256: sha256.to_string(),
        mtime_ns: mtime_ns(&meta),
        served: served.clone(),
    };
    write_atomic(job, &job.done_path(&entry.rel), serde_json::to_vec(&rec).expect("serialisable")).await?;
    let _ = tokio::fs::remove_file(job.ranges_path(&entry.rel)).await;
    Ok(())
}

async fn canonical(path: &Path) -> Result<PathBuf, StorageError> {
    tokio::fs::canonicalize(path).await.map_err(|e| StorageError::io("resolve", path, e))
}

/// Forget a partial file and its ranges (after corrupt bytes).
pub(crate) async fn discard(job: &Job, rel: &str) {
    let _ = tokio::fs::remove_file(job.partial_path(rel)).await;
    let _ = tokio::fs::remove_file(job.ranges_path(rel)).await;
}

/// Parse a `sha256sum`-style file: `<hex>  <path>` (or `<hex> *<path>`) per
/// line; blank lines and `#` comments are skipped.
pub(crate) async fn read_sha256sums(path: &Path) -> Result<BTreeMap<String, String>, StorageError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| StorageError::io("read manifest", path, e))?;
    parse_sha256sums(&text, &path.display().to_string())
}

pub(crate) fn parse_sha256sums(text: &str, origin: &str) -> Result<BTreeMap<String, String>, StorageError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let bad =
            |message: &str| StorageError::BadManifest { path: origin.into(), line: i + 1, message: message.into() };
        let (hash, rest) = line.split_once(' ').ok_or_else(|| bad("expected `<sha256 hex>  <path>`"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the first field is not a 64-digit hex sha256"));
        }
        let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*')).unwrap_or(rest);
        let name = name.strip_prefix('*').unwrap_or(name).strip_prefix("./").unwrap_or(name);
        if name.is_empty() {
            return Err(bad("no path after the digest"));
        }
        out.insert(name.to_string(), hash.to_ascii_lowercase());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dvc_md5s_as_dvc_computes_them() {
        // md5("a\nb\n"): the CRLF text hashes as its LF form under dos2unix only.
        let lf = hex::encode(md5::Md5::digest(b"a\nb\n"));
        assert_eq!(md5_of(&b"a\r\nb\r\n"[..], true).unwrap(), lf);
        assert_ne!(md5_of(&b"a\r\nb\r\n"[..], false).unwrap(), lf);
        // A lone CR stays; binary files are hashed as they are.
        assert_eq!(md5_of(&b"a\rb"[..], true).unwrap(), hex::encode(md5::Md5::digest(b"a\rb")));
        let bin = b"\x00\r\n";
        assert_eq!(md5_of(&bin[..], true).unwrap(), hex::encode(md5::Md5::digest(bin)));
        // Chunks of 1 MiB, each judged on its own: a CRLF across the
        // boundary stays, as in DVC.
        let mut big = vec![b'a'; (1 << 20) - 1];
        big.extend_from_slice(b"\r\nx\r\n");
        let mut want = md5::Md5::new();
        want.update(&big[..1 << 20]);
        want.update(b"\nx\n");
        assert_eq!(md5_of(&big[..], true).unwrap(), hex::encode(want.finalize()));
        assert!(is_text(b"plain text\n") && !is_text(&[0x80; 10]));
    }

    #[test]
    fn sha256sums_format() {
        let h = "a".repeat(64);
        let text = format!("# comment\n\n{h}  model.pkl\n{} *sub/b.bin\n{h}  ./c\n", "B".repeat(64));
        let m = parse_sha256sums(&text, "SUMS").unwrap();
        assert_eq!(m["model.pkl"], h);
        assert_eq!(m["sub/b.bin"], "b".repeat(64));
        assert!(m.contains_key("c"));
        let err = parse_sha256sums("abc  x\n", "SUMS").unwrap_err();
        assert_eq!(err.to_string(), "SUMS:1: the first field is not a 64-digit hex sha256");
    }

    #[test]
    fn only_plain_etags_are_md5s() {
        assert_eq!(
            Checks::md5_etag(Some("\"D41D8CD98F00B204E9800998ECF8427E\"")).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(Checks::md5_etag(Some("\"d41d8cd98f00b204e9800998ecf8427e-2\"")), None);
        assert_eq!(Checks::md5_etag(None), None);
    }

    #[test]
    fn composite_etags_parse_and_recompute_over_part_boundaries() {
        let c = CompositeEtag::parse(Some("\"D41D8CD98F00B204E9800998ECF8427E-3\"")).unwrap();
        assert_eq!((c.md5_of_md5s.as_str(), c.parts), ("d41d8cd98f00b204e9800998ecf8427e", 3));
        for bad in ["d41d8cd98f00b204e9800998ecf8427e", "d41d8cd98f00b204e9800998ecf8427e-0", "xyz-2", "-2"] {
            assert_eq!(CompositeEtag::parse(Some(bad)), None, "{bad}");
        }
        // What S3 computes: MD5 over the concatenated binary MD5s of the parts.
        let data: Vec<u8> = (0..12u8).collect();
        let mut digests = Vec::new();
        for part in [&data[..5], &data[5..10], &data[10..]] {
            digests.extend_from_slice(&md5::Md5::digest(part));
        }
        let want = format!("{}-3", hex::encode(md5::Md5::digest(&digests)));
        // Fed in pieces that straddle the boundaries.
        let mut h = PartHasher::new(vec![5, 5, 2]);
        for piece in [&data[..3], &data[3..9], &data[9..]] {
            h.update(piece);
        }
        assert_eq!(h.finish(3), want);
        let empty = PartHasher::new(vec![0]);
        assert_eq!(empty.finish(1), format!("{}-1", hex::encode(md5::Md5::digest(md5::Md5::digest(b"")))));
    }
}
