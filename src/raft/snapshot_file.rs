//! Snapshot files with a checked header: a flipped, missing or extra byte is an error
//! naming the file, never a silently different snapshot.
//!
//! Owns the file format only:
//!
//! ```text
//!  0  8  magic "PALSNAP\0"
//!  8  4  format version (1, u32 LE)
//! 12  4  reserved, 0
//! 16  8  payload length (u64 LE)
//! 24  4  crc32 of the payload
//! 28  4  crc32 of bytes 0..28
//! 32  n  payload
//! ```
//!
//! [`write()`] is atomic and durable: a tmp file, fsync, rename, fsync of the directory, so a
//! reader sees the old file or the new one, whole. A full disk (ENOSPC/EDQUOT) or no file
//! descriptors (EMFILE/ENFILE) while creating or writing the tmp file or renaming it is
//! retried with a backoff (50 ms to 1 s) until it succeeds, as the WAL does; any other
//! error, and any failed fsync, is returned.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

const MAGIC: [u8; 8] = *b"PALSNAP\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

fn invalid(path: &Path, what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file {}: {what}", path.display()))
}

fn header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
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

fn attempt(dir: &Path, name: &str, payload: &[u8]) -> Result<(), Step> {
    let tmp = dir.join(format!("{name}.tmp"));
    let op = |e: io::Error| if transient(&e) { Step::Retry(e) } else { Step::Fail(e) };
    let mut f = File::create(&tmp).map_err(op)?;
    f.write_all(&header(payload)).map_err(op)?;
    f.write_all(payload).map_err(op)?;
    f.sync_all().map_err(Step::Fail)?;
    drop(f);
    fs::rename(&tmp, dir.join(name)).map_err(op)?;
    File::open(dir).map_err(op)?.sync_all().map_err(Step::Fail)
}

/// Writes `payload` to `dir/name` atomically and durably, with the checked header.
pub fn write(dir: &Path, name: &str, payload: &[u8]) -> io::Result<()> {
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match attempt(dir, name, payload) {
            Ok(()) => {
                if warned {
                    tracing::info!(dir = %dir.display(), name, "snapshot write succeeded again");
                }
                return Ok(());
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

/// Reads the payload of the snapshot file at `path`, checking magic, version, length and
/// checksums; every failure names the file and what is wrong.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return Err(io::Error::new(e.kind(), format!("snapshot file {}: {e}", path.display()))),
    };
    if bytes.is_empty() {
        return Err(invalid(path, "is empty (0 bytes)".into()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(invalid(
            path,
            format!("is truncated: {} bytes, shorter than its {HEADER_LEN}-byte header", bytes.len()),
        ));
    }
    if bytes[0..8] != MAGIC {
        return Err(invalid(path, "is not a snapshot file (bad magic at offset 0)".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if crc32fast::hash(&bytes[..28]) != u32_at(28) {
        if version != VERSION {
            return Err(invalid(
                path,
                format!("has unknown format version {version} (this build reads {VERSION})"),
            ));
        }
        return Err(invalid(path, "header checksum mismatch (bytes 0..28)".into()));
    }
    if version != VERSION {
        return Err(invalid(
            path,
            format!("has unknown format version {version} (this build reads {VERSION})"),
        ));
    }
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let have = (bytes.len() - HEADER_LEN) as u64;
    if have < len {
        return Err(invalid(
            path,
            format!("is truncated: its header says {len} payload bytes, it holds {have}"),
        ));
    }
    if have > len {
        return Err(invalid(path, format!("has {} bytes after its {len}-byte payload", have - len)));
    }
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    if crc != u32_at(24) {
        return Err(invalid(
            path,
            format!(
                "checksum mismatch in the payload (bytes {HEADER_LEN}..{}): stored {:08x}, computed {crc:08x}",
                bytes.len(),
                u32_at(24)
            ),
        ));
    }
    bytes.drain(..HEADER_LEN);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    fn sample() -> Vec<u8> {
        (0..5000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn written(payload: &[u8]) -> (TempDir, std::path::PathBuf) {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "snapshot.bin", payload).unwrap();
        let path = dir.path().join("snapshot.bin");
        (dir, path)
    }

    fn err(path: &Path) -> String {
        let e = read(path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        msg
    }

    #[test]
    fn round_trip() {
        for payload in [sample(), Vec::new()] {
            let (dir, path) = written(&payload);
            assert_eq!(read(&path).unwrap(), payload);
            assert!(!dir.path().join("snapshot.bin.tmp").exists());
            // Rewriting replaces it whole.
            write(dir.path(), "snapshot.bin", b"next").unwrap();
            assert_eq!(read(&path).unwrap(), b"next");
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_detected() {
        let (_dir, path) = written(&sample());
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            let msg = err(&path);
            if i >= HEADER_LEN {
                assert!(msg.contains("checksum mismatch in the payload"), "{i}: {msg}");
            }
        }
    }

    #[test]
    fn truncated_empty_missing_and_extended() {
        let (dir, path) = written(&sample());
        let good = fs::read(&path).unwrap();
        for len in [good.len() - 1, HEADER_LEN + 10, HEADER_LEN] {
            fs::write(&path, &good[..len]).unwrap();
            assert!(err(&path).contains("is truncated: its header says 5000"));
        }
        fs::write(&path, &good[..10]).unwrap();
        assert!(err(&path).contains("shorter than its 32-byte header"));
        fs::write(&path, b"").unwrap();
        assert!(err(&path).contains("is empty"));
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(err(&path).contains("1 bytes after"));
        let missing = dir.path().join("nope.bin");
        assert_eq!(read(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(err(&missing).contains("nope.bin"));
        // Bare JSON (the format before this one) is not taken for a snapshot.
        fs::write(&path, br#"{"meta":{}}_________________________"#).unwrap();
        assert!(err(&path).contains("not a snapshot file"));
    }

    #[test]
    fn unknown_version_is_named() {
        let (_dir, path) = written(&sample());
        let mut bytes = fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert!(err(&path).contains("unknown format version 2"));
    }
}
