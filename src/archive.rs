//! A build context directory: its files, its digest, and the directory as
//! a gzip tar stream, made on a blocking thread while it is sent: at most a
//! few megabyte-sized chunks are in memory at once.
//!
//! Model weights are mostly incompressible, and for them deflate only burns
//! CPU. Such a context is sent as deflate *stored* blocks (RFC 1951 §3.2.4),
//! laid out in place: each file is read straight into the outgoing chunk
//! between 5-byte block headers, so its bytes are copied once (by the read,
//! as `curl -T` copies them) and only CRC-32 touches them again. A
//! compressible context goes through flate2's deflate as usual. Either way
//! the result is one gzip member (RFC 1952) any gunzip reads.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes per chunk handed to the HTTP body.
const CHUNK: usize = 1 << 20;
/// The largest stored block deflate allows.
const MAX_STORED: usize = 65_535;

type Tx = mpsc::Sender<std::io::Result<Bytes>>;

/// A context directory that cannot be archived.
#[derive(Debug, thiserror::Error)]
#[error("build context {dir}: {message}")]
pub struct ArchiveError {
    pub dir: PathBuf,
    pub message: String,
}

/// Files of `dir` (relative paths, sorted) with sizes; symlinks are refused
/// (a build context must be self-contained).
pub fn files(dir: &Path) -> Result<Vec<(String, u64)>, ArchiveError> {
    let cerr = |message: String| ArchiveError { dir: dir.to_path_buf(), message };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| cerr(format!("cannot read {}: {e}", d.display())))?;
        for entry in rd {
            let entry = entry.map_err(|e| cerr(e.to_string()))?;
            let ft = entry.file_type().map_err(|e| cerr(e.to_string()))?;
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let size = entry.metadata().map_err(|e| cerr(e.to_string()))?.len();
                let rel = path.strip_prefix(dir).expect("below dir").to_string_lossy().replace('\\', "/");
                out.push((rel, size));
            } else {
                return Err(cerr(format!("{} is not a regular file or directory", path.display())));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `sha256:` over sorted paths and contents, for a context given without
/// its digest.
pub fn digest_dir(dir: &Path) -> Result<String, ArchiveError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (rel, _) in files(dir)? {
        let mut f = std::fs::File::open(dir.join(&rel))
            .map_err(|e| ArchiveError { dir: dir.to_path_buf(), message: format!("{rel}: {e}") })?;
        let mut fh = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)
                .map_err(|e| ArchiveError { dir: dir.to_path_buf(), message: e.to_string() })?;
            if n == 0 {
                break;
            }
            fh.update(&buf[..n]);
        }
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(fh.finalize());
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The context of `dir` as a gzip tar, chunk by chunk.
pub fn context_stream(dir: PathBuf) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        let result = (|| -> std::io::Result<()> {
            let files = files(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
            if compression_for(&dir, &files) == flate2::Compression::none() {
                stored(&dir, &files, tx)
            } else {
                deflated(&dir, &files, tx)
            }
        })();
        if let Err(e) = result {
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// How hard to compress the context: a sample from the largest files
/// decides. If deflate saves under a tenth, stored blocks (still a valid
/// gzip tar, at the speed of a copy).
pub(super) fn compression_for(dir: &Path, files: &[(String, u64)]) -> flate2::Compression {
    const SAMPLE: u64 = 64 * 1024;
    let mut largest: Vec<&(String, u64)> = files.iter().collect();
    largest.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let (mut weight, mut weighted) = (0f64, 0f64);
    for (rel, size) in largest.into_iter().take(16) {
        let mut sample = Vec::new();
        let Ok(f) = File::open(dir.join(rel)) else { continue };
        if f.take(SAMPLE).read_to_end(&mut sample).is_err() || sample.is_empty() {
            continue;
        }
        let mut gz = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        let packed = gz.write_all(&sample).and_then(|()| gz.finish()).map_or(sample.len(), |v| v.len());
        weight += *size as f64;
        weighted += *size as f64 * packed as f64 / sample.len() as f64;
    }
    if weight > 0.0 && weighted / weight > 0.9 { flate2::Compression::none() } else { flate2::Compression::fast() }
}

/// The tar header (and any GNU long-name entry before it) of `rel`, from the
/// `tar` crate, without the data: that is written by the caller.
fn tar_header(path: &Path, rel: &str, meta: &std::fs::Metadata) -> std::io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    let mut b = tar::Builder::new(Vec::with_capacity(1024));
    b.append_data(&mut header, rel, std::io::empty())
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // Taken before the builder is dropped: dropping it writes the archive's
    // end marker, which belongs after the last file only.
    Ok(std::mem::take(b.get_mut()))
}

/// Tar → gzip with stored blocks, laid out in place in each chunk.
fn stored(dir: &Path, files: &[(String, u64)], tx: Tx) -> std::io::Result<()> {
    let mut out = StoredGzip::new(tx);
    // RFC 1952: magic, CM=deflate, no flags, no mtime, XFL=0, OS=unknown.
    out.raw(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    for (rel, size) in files {
        let path = dir.join(rel);
        let mut f = File::open(&path)?;
        let meta = f.metadata()?;
        if meta.len() != *size {
            return Err(std::io::Error::other(format!("{} changed while the context was sent", path.display())));
        }
        out.data(&tar_header(&path, rel, &meta)?)?;
        out.copy_from(&mut f, *size, &path)?;
        out.data(&[0u8; 512][..((512 - size % 512) % 512) as usize])?;
    }
    // The end-of-archive marker: two zero records.
    out.data(&[0u8; 1024])?;
    out.finish()
}

/// A gzip member of stored blocks being written into `CHUNK`-sized chunks.
struct StoredGzip {
    tx: Tx,
    buf: Vec<u8>,
    /// Where the open block's 5-byte header sits in `buf`, if one is open.
    block: Option<usize>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl StoredGzip {
    fn new(tx: Tx) -> StoredGzip {
        StoredGzip { tx, buf: Vec::with_capacity(CHUNK + 64), block: None, crc: crc32fast::Hasher::new(), len: 0 }
    }

    /// Bytes outside any deflate block (the gzip header and trailer).
    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.close_block();
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Room for `want` more data bytes in the open block (opening one, and
    /// sending the chunk when it is full); how many fit.
    fn room(&mut self, want: usize) -> std::io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        if let Some(at) = self.block
            && self.buf.len() - at - 5 >= MAX_STORED
        {
            self.close_block();
        }
        if self.block.is_none() {
            self.block = Some(self.buf.len());
            self.buf.extend_from_slice(&[0; 5]);
        }
        let at = self.block.expect("open");
        let in_block = MAX_STORED - (self.buf.len() - at - 5);
        // Under CHUNK before the header, so at least 59 bytes are left.
        let in_chunk = CHUNK + 64 - self.buf.len();
        Ok(want.min(in_block).min(in_chunk))
    }

    /// Uncompressed (tar) bytes, copied in.
    fn data(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = self.room(bytes.len())?;
            self.buf.extend_from_slice(&bytes[..n]);
            self.crc.update(&bytes[..n]);
            self.len += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Exactly `size` bytes of `f`, read straight into the chunk.
    fn copy_from(&mut self, f: &mut File, mut size: u64, path: &Path) -> std::io::Result<()> {
        while size > 0 {
            let n = self.room(usize::try_from(size).unwrap_or(usize::MAX))?;
            let start = self.buf.len();
            // read_to_end reads into the spare capacity without zeroing it
            // first; `room` left enough that it never reallocates.
            let got = (&mut *f).take(n as u64).read_to_end(&mut self.buf)?;
            if got != n {
                return Err(std::io::Error::other(format!("{} changed while the context was sent", path.display())));
            }
            self.crc.update(&self.buf[start..]);
            self.len += n as u64;
            size -= n as u64;
        }
        Ok(())
    }

    /// Write the open block's header: BFINAL=0, BTYPE=00, then LEN and NLEN
    /// little-endian (the header byte is padded to a byte boundary).
    fn close_block(&mut self) {
        if let Some(at) = self.block.take() {
            let len = u16::try_from(self.buf.len() - at - 5).expect("a stored block holds at most 65535 bytes");
            self.buf[at] = 0;
            self.buf[at + 1..at + 3].copy_from_slice(&len.to_le_bytes());
            self.buf[at + 3..at + 5].copy_from_slice(&(!len).to_le_bytes());
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        self.close_block();
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 64));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| std::io::Error::other("the upload was closed"))
    }

    /// An empty final block (BFINAL=1: the last block is only known at the
    /// end), then CRC-32 and ISIZE.
    fn finish(mut self) -> std::io::Result<()> {
        let crc = std::mem::take(&mut self.crc).finalize();
        let mut tail = vec![1, 0, 0, 0xff, 0xff];
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.extend_from_slice(&(self.len as u32).to_le_bytes());
        self.raw(&tail)?;
        self.send()
    }
}

/// A `Write` that hands full chunks to the body channel.
struct ChannelWriter {
    tx: Tx,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the upload was closed"))?;
        }
        Ok(())
    }
}

/// Tar → flate2's deflate (fast level), for contexts that compress.
fn deflated(dir: &Path, files: &[(String, u64)], tx: Tx) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(
        ChannelWriter { tx, buf: Vec::with_capacity(CHUNK) },
        flate2::Compression::fast(),
    );
    // tar copies file data in small writes; a large buffer in front of the
    // compressor lets it work on whole megabytes at a time.
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(CHUNK, gz));
    tar.follow_symlinks(false);
    for (rel, _) in files {
        tar.append_path_with_name(dir.join(rel), rel)?;
    }
    let gz = tar.into_inner()?.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    let mut w = gz.finish()?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    async fn unpack(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let chunks: Vec<Bytes> = context_stream(dir.to_path_buf()).try_collect().await.unwrap();
        assert!(chunks.iter().all(|c| c.len() <= CHUNK + 64), "chunks stay bounded");
        let all: Vec<u8> = chunks.concat();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&all[..]));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), data)
            })
            .collect()
    }

    #[test]
    fn incompressible_contexts_are_stored_and_text_is_deflated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("weights.bin"), noise(300_000, 0x2545_f491_4f6c_dd1d)).unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM python:3.11\n".repeat(10)).unwrap();
        let listed = files(dir.path()).unwrap();
        assert_eq!(compression_for(dir.path(), &listed), flate2::Compression::none());
        std::fs::write(dir.path().join("weights.bin"), "0.125, ".repeat(50_000)).unwrap();
        let listed = files(dir.path()).unwrap();
        assert_eq!(compression_for(dir.path(), &listed), flate2::Compression::fast());
    }

    #[tokio::test]
    async fn both_layouts_are_a_gzip_tar_of_the_directory() {
        for compressible in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").unwrap();
            std::fs::create_dir_all(dir.path().join("model/a-directory-name-long-enough-to-need-gnu-long-names"))
                .unwrap();
            // Sizes around block, record and chunk boundaries.
            let mut want = vec![("Dockerfile".to_string(), b"FROM x\n".to_vec())];
            for (i, size) in [0, 1, 511, 512, 65_535, 65_536, 1 << 20, 3 * (1 << 20) + 17].into_iter().enumerate() {
                let data = if compressible { vec![b'a' + i as u8; size] } else { noise(size, 7 + i as u64) };
                let rel = format!(
                    "model/a-directory-name-long-enough-to-need-gnu-long-names/and-a-file-name-that-is-long-too-{i}.bin"
                );
                std::fs::write(dir.path().join(&rel), &data).unwrap();
                want.push((rel, data));
            }
            want.sort();
            let listed = files(dir.path()).unwrap();
            let level = compression_for(dir.path(), &listed);
            assert_eq!(level == flate2::Compression::none(), !compressible);
            assert_eq!(unpack(dir.path()).await, want, "compressible: {compressible}");
        }
    }

    #[tokio::test]
    async fn an_empty_context_is_an_empty_tar() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(dir.path()).await.is_empty());
    }

    #[test]
    fn digest_depends_on_paths_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "1").unwrap();
        let d1 = digest_dir(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), "2").unwrap();
        assert_ne!(d1, digest_dir(dir.path()).unwrap());
    }
}
