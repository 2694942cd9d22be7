//! Snapshot files: a fixed header, a MessagePack payload written and read as a stream,
//! and a trailer with the payload's length and SHA-256. A truncated, extended or damaged
//! file is an error naming the file, never a silently different snapshot, and no whole
//! encoded copy of a snapshot is ever held in memory (only the decoded value).
//!
//! Owns the file format only:
//!
//! ```text
//!      0   8  magic "PALSNAP\0"
//!      8   4  format version (2, u32 LE)
//!     12   4  reserved, 0
//!     16   n  payload: MessagePack, structs as maps with field names
//!   16+n   8  trailer magic "PALSEND\0"
//!   24+n   8  payload length n (u64 LE)
//!   32+n  32  SHA-256 of bytes 0..16+n (header and payload)
//! ```
//!
//! The reader checks the header, finds the trailer from the file's length, and decodes the
//! payload while hashing it; the value is returned only when the hash matches and the
//! payload was used to its last byte. Version 1 (a 32-byte header with CRC-32s and a JSON
//! payload, written by earlier builds) is still read, as a stream too, so a data dir from
//! an earlier build starts; everything written is version 2.
//!
//! [`write()`] is atomic and durable: a tmp file, fsync, rename, fsync of the directory, so a
//! reader sees the old file or the new one, whole. A full disk (ENOSPC/EDQUOT) or no file
//! descriptors (EMFILE/ENFILE) while creating or writing the tmp file or renaming it is
//! retried with a backoff (50 ms to 1 s) until it succeeds, as the WAL does; any other
//! error, and any failed fsync, is returned.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

const MAGIC: [u8; 8] = *b"PALSNAP\0";
const TRAILER_MAGIC: [u8; 8] = *b"PALSEND\0";
/// The format this build writes.
pub const VERSION: u32 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: u64 = 16;
/// Bytes after the payload.
pub const TRAILER_LEN: u64 = 48;
/// Version 1's header (before its JSON payload).
const V1_HEADER_LEN: u64 = 32;
/// Buffer between the codec and the file (bytes).
const BUFFER: usize = 256 << 10;

/// What a snapshot file is, beyond its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The format version it was written in.
    pub version: u32,
    /// The size of the whole file.
    pub file_bytes: u64,
    /// SHA-256 of the header and payload, as the trailer holds it (version 2; `None` for
    /// version 1, which has CRC-32s).
    pub sha256: Option<[u8; 32]>,
}

impl Summary {
    /// The checksum in lowercase hex (empty for version 1).
    pub fn sha256_hex(&self) -> String {
        self.sha256.map(|h| h.iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default()
    }
}

fn invalid(path: &Path, what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file {}: {what}", path.display()))
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("snapshot file {}: {e}", path.display()))
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Writes the format around what goes through it: the header when made, the payload
/// hashed and counted as it passes, the trailer on [`Framer::finish`].
pub struct Framer<W: Write> {
    inner: W,
    hasher: Sha256,
    payload: u64,
}

impl<W: Write> Framer<W> {
    /// Starts a file on `inner` (writes the header).
    pub fn new(mut inner: W) -> io::Result<Framer<W>> {
        let h = header();
        inner.write_all(&h)?;
        let mut hasher = Sha256::new();
        hasher.update(h);
        Ok(Framer { inner, hasher, payload: 0 })
    }

    /// Writes the trailer and hands back the writer (not flushed) with what was written.
    pub fn finish(mut self) -> io::Result<(W, Summary)> {
        let sha: [u8; 32] = self.hasher.finalize().into();
        let mut t = [0u8; TRAILER_LEN as usize];
        t[0..8].copy_from_slice(&TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.payload.to_le_bytes());
        t[16..48].copy_from_slice(&sha);
        self.inner.write_all(&t)?;
        let summary = Summary {
            version: VERSION,
            file_bytes: HEADER_LEN + self.payload + TRAILER_LEN,
            sha256: Some(sha),
        };
        Ok((self.inner, summary))
    }
}

impl<W: Write> Write for Framer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.payload += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes `value` as a whole snapshot file onto `w`, streaming (what is buffered at a
/// time is bounded, whatever the size of `value`). Returns `w`, flushed.
pub fn encode<T: Serialize + ?Sized, W: Write>(value: &T, w: W) -> io::Result<(W, Summary)> {
    let mut buf = BufWriter::with_capacity(BUFFER, Framer::new(w)?);
    value.serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map()).map_err(encode_error)?;
    let framer = buf.into_inner().map_err(|e| e.into_error())?;
    let (mut w, summary) = framer.finish()?;
    w.flush()?;
    Ok((w, summary))
}

/// The I/O error under an encoding error (a full disk must stay recognisable), else the
/// encoding error itself.
fn encode_error(e: rmp_serde::encode::Error) -> io::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return io
                .raw_os_error()
                .map_or_else(|| io::Error::new(io.kind(), io.to_string()), io::Error::from_raw_os_error);
        }
        cause = c.source();
    }
    io::Error::other(format!("encoding a snapshot: {e}"))
}

/// Whether `e` is a full disk or a lack of file descriptors: worth waiting out.
fn transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOSPC | Errno::DQUOT | Errno::MFILE | Errno::NFILE)
    ) || matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// An error of a step that may be retried, or of an fsync, which is never retried.
enum Step {
    Retry(io::Error),
    Fail(io::Error),
}

fn attempt<T: Serialize + ?Sized>(dir: &Path, name: &str, value: &T) -> Result<Summary, Step> {
    let tmp = dir.join(format!("{name}.tmp"));
    let op = |e: io::Error| if transient(&e) { Step::Retry(e) } else { Step::Fail(e) };
    let f = File::create(&tmp).map_err(op)?;
    let (f, summary) = encode(value, f).map_err(op)?;
    f.sync_all().map_err(Step::Fail)?;
    drop(f);
    fs::rename(&tmp, dir.join(name)).map_err(op)?;
    File::open(dir).map_err(op)?.sync_all().map_err(Step::Fail)?;
    Ok(summary)
}

/// Writes `value` as a snapshot file `dir/name`, atomically and durably.
pub fn write<T: Serialize + ?Sized>(dir: &Path, name: &str, value: &T) -> io::Result<Summary> {
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match attempt(dir, name, value) {
            Ok(summary) => {
                if warned {
                    tracing::info!(dir = %dir.display(), name, "snapshot write succeeded again");
                }
                return Ok(summary);
            }
            Err(Step::Fail(e)) => {
                let _ = fs::remove_file(dir.join(format!("{name}.tmp")));
                return Err(io::Error::new(
                    e.kind(),
                    format!("writing snapshot {}: {e}", dir.join(name).display()),
                ));
            }
            Err(Step::Retry(e)) => {
                // Free what a partial attempt took before waiting.
                let _ = fs::remove_file(dir.join(format!("{name}.tmp")));
                if !warned {
                    warned = true;
                    tracing::warn!(dir = %dir.display(), name, error = %e, "snapshot write stalled; retrying");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Moves the complete, synced snapshot file `from` to `dir/name` and syncs the directory.
pub fn install(from: &Path, dir: &Path, name: &str) -> io::Result<()> {
    fs::rename(from, dir.join(name)).and_then(|()| File::open(dir)?.sync_all()).map_err(|e| {
        io::Error::new(e.kind(), format!("installing snapshot {}: {e}", dir.join(name).display()))
    })
}

/// Hashes (or checksums) what is read through it.
struct Hashing<R, H> {
    inner: R,
    hasher: H,
}

impl<R: Read, H: FnMut(&[u8])> Read for Hashing<R, H> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.hasher)(&buf[..n]);
        Ok(n)
    }
}

/// Reads and decodes the snapshot file at `path`, checking magic, version, length and
/// checksum; every failure names the file and what is wrong, and nothing is returned from
/// a file that fails any check.
pub fn read<T: DeserializeOwned>(path: &Path) -> io::Result<(T, Summary)> {
    let mut f = File::open(path).map_err(|e| named(path, e))?;
    let len = f.metadata().map_err(|e| named(path, e))?.len();
    if len == 0 {
        return Err(invalid(path, "is empty (0 bytes)".into()));
    }
    if len < HEADER_LEN {
        return Err(invalid(
            path,
            format!("is truncated: {len} bytes, shorter than its {HEADER_LEN}-byte header"),
        ));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut h).map_err(|e| named(path, e))?;
    if h[0..8] != MAGIC {
        return Err(invalid(path, "is not a snapshot file (bad magic at offset 0)".into()));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    match version {
        VERSION => {}
        1 => return read_v1(path, f, len),
        v => {
            return Err(invalid(
                path,
                format!("has unknown format version {v} (this build reads 1 and {VERSION})"),
            ))
        }
    }
    if h[12..16] != [0; 4] {
        return Err(invalid(path, "header damaged (reserved bytes 12..16 are not zero)".into()));
    }
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(invalid(
            path,
            format!(
                "is truncated: {len} bytes, shorter than its header and trailer ({} bytes)",
                HEADER_LEN + TRAILER_LEN
            ),
        ));
    }
    let mut t = [0u8; TRAILER_LEN as usize];
    f.seek(SeekFrom::Start(len - TRAILER_LEN))
        .and_then(|_| f.read_exact(&mut t))
        .map_err(|e| named(path, e))?;
    if t[0..8] != TRAILER_MAGIC {
        return Err(invalid(
            path,
            format!(
                "is truncated or extended: no trailer in its last {TRAILER_LEN} bytes ({len} bytes in all)"
            ),
        ));
    }
    let n = u64::from_le_bytes(t[8..16].try_into().expect("8 bytes"));
    let have = len - HEADER_LEN - TRAILER_LEN;
    if n != have {
        let how = if n > have { "truncated" } else { "extended" };
        return Err(invalid(path, format!("is {how}: its trailer says {n} payload bytes, it holds {have}")));
    }
    let stored: [u8; 32] = t[16..48].try_into().expect("32 bytes");
    f.seek(SeekFrom::Start(HEADER_LEN)).map_err(|e| named(path, e))?;
    let mut sha = Sha256::new();
    sha.update(h);
    let hashing = Hashing { inner: f.take(n), hasher: |b: &[u8]| sha.update(b) };
    let mut r = BufReader::with_capacity(BUFFER, hashing);
    let decoded: Result<T, _> = rmp_serde::decode::from_read(&mut r);
    // Hash what the decoder left (all of it, when it stopped early on damage).
    let left = io::copy(&mut r, &mut io::sink()).map_err(|e| named(path, e))?;
    drop(r);
    let computed: [u8; 32] = sha.finalize().into();
    let summary = Summary { version, file_bytes: len, sha256: Some(stored) };
    if computed != stored {
        return Err(invalid(
            path,
            format!(
                "checksum mismatch (SHA-256 of bytes 0..{}): stored {}, computed {}",
                HEADER_LEN + n,
                summary.sha256_hex(),
                Summary { sha256: Some(computed), ..summary }.sha256_hex()
            ),
        ));
    }
    let value = decoded.map_err(|e| invalid(path, format!("payload does not decode: {e}")))?;
    if left > 0 {
        return Err(invalid(path, format!("has {left} bytes after its payload's end")));
    }
    Ok((value, summary))
}

/// Version 1: a 32-byte header (magic, version, reserved, payload length, CRC-32 of the
/// payload, CRC-32 of the header) and a JSON payload.
fn read_v1<T: DeserializeOwned>(path: &Path, mut f: File, len: u64) -> io::Result<(T, Summary)> {
    if len < V1_HEADER_LEN {
        return Err(invalid(
            path,
            format!("is truncated: {len} bytes, shorter than its {V1_HEADER_LEN}-byte header"),
        ));
    }
    let mut h = [0u8; V1_HEADER_LEN as usize];
    f.seek(SeekFrom::Start(0)).and_then(|_| f.read_exact(&mut h)).map_err(|e| named(path, e))?;
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&h[..28]) != u32_at(28) {
        return Err(invalid(path, "header checksum mismatch (bytes 0..28)".into()));
    }
    let n = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let have = len - V1_HEADER_LEN;
    if have < n {
        return Err(invalid(
            path,
            format!("is truncated: its header says {n} payload bytes, it holds {have}"),
        ));
    }
    if have > n {
        return Err(invalid(path, format!("has {} bytes after its {n}-byte payload", have - n)));
    }
    let mut crc = crc32fast::Hasher::new();
    let hashing = Hashing { inner: f.take(n), hasher: |b: &[u8]| crc.update(b) };
    let mut r = BufReader::with_capacity(BUFFER, hashing);
    let decoded: Result<T, _> = serde_json::from_reader(&mut r);
    io::copy(&mut r, &mut io::sink()).map_err(|e| named(path, e))?;
    drop(r);
    let computed = crc.finalize();
    if computed != u32_at(24) {
        return Err(invalid(
            path,
            format!("checksum mismatch in the payload: stored {:08x}, computed {computed:08x}", u32_at(24)),
        ));
    }
    let value = decoded.map_err(|e| invalid(path, format!("payload does not decode: {e}")))?;
    Ok((value, Summary { version: 1, file_bytes: len, sha256: None }))
}

#[cfg(test)]
#[path = "snapshot_file_tests.rs"]
mod tests;
