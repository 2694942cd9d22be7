use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    name: String,
    #[serde(with = "crate::store::bytes_b64")]
    data: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn sample() -> Sample {
    Sample { name: "s".into(), data: (0..5000u32).map(|i| (i * 7 % 251) as u8).collect(), note: None }
}

fn written(value: &Sample) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "snapshot.bin", value).unwrap();
    let path = dir.path().join("snapshot.bin");
    (dir, path)
}

fn err(path: &Path) -> String {
    let e = read::<Sample>(path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn round_trip() {
    let empty = Sample { name: String::new(), data: Vec::new(), note: Some("n".into()) };
    for value in [sample(), empty] {
        let (dir, path) = written(&value);
        let (back, summary) = read::<Sample>(&path).unwrap();
        assert_eq!(back, value);
        assert_eq!(summary.version, VERSION);
        assert_eq!(summary.file_bytes, fs::metadata(&path).unwrap().len());
        let bytes = fs::read(&path).unwrap();
        let body = &bytes[..bytes.len() - TRAILER_LEN as usize];
        assert_eq!(
            summary.sha256,
            Some(Sha256::digest(body).into()),
            "the trailer's hash is of header and payload"
        );
        assert!(!dir.path().join("snapshot.bin.tmp").exists());
        // Rewriting replaces it whole.
        let next = Sample { name: "next".into(), ..value };
        write(dir.path(), "snapshot.bin", &next).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap().0, next);
    }
}

#[test]
fn binary_values_are_raw_bytes_in_the_file() {
    let (_dir, path) = written(&sample());
    let bytes = fs::read(&path).unwrap();
    // Base64 would take 4 bytes for 3.
    assert!(bytes.len() < 5000 + 200, "{} bytes", bytes.len());
    assert!(bytes.windows(64).any(|w| w == &sample().data[..64]));
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
        let payload = HEADER_LEN as usize..good.len() - TRAILER_LEN as usize;
        if payload.contains(&i) {
            assert!(msg.contains("checksum mismatch"), "{i}: {msg}");
        }
    }
}

#[test]
fn truncated_empty_missing_and_extended() {
    let (dir, path) = written(&sample());
    let good = fs::read(&path).unwrap();
    for len in [good.len() - 1, good.len() - 48, HEADER_LEN as usize + 70, HEADER_LEN as usize + 10] {
        fs::write(&path, &good[..len]).unwrap();
        let msg = err(&path);
        assert!(msg.contains("truncated"), "{len}: {msg}");
    }
    fs::write(&path, &good[..10]).unwrap();
    assert!(err(&path).contains("shorter than its 16-byte header"));
    fs::write(&path, b"").unwrap();
    assert!(err(&path).contains("is empty"));
    let mut longer = good.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert!(err(&path).contains("extended"));
    // A whole second trailer appended.
    let mut twice = good.clone();
    twice.extend_from_slice(&good[good.len() - TRAILER_LEN as usize..]);
    fs::write(&path, &twice).unwrap();
    assert!(err(&path).contains("is extended: its trailer says"));
    let missing = dir.path().join("nope.bin");
    assert_eq!(read::<Sample>(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(err(&missing).contains("nope.bin"));
    fs::write(&path, br#"{"meta":{}}_________________________"#).unwrap();
    assert!(err(&path).contains("not a snapshot file"));
}

#[test]
fn unknown_version_is_named() {
    let (_dir, path) = written(&sample());
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(err(&path).contains("unknown format version 3"));
}

/// A payload whose checksum is right but which is not what the reader expects.
#[test]
fn a_well_formed_file_of_something_else_is_refused() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "snapshot.bin", &vec![1u32, 2, 3]).unwrap();
    assert!(err(&dir.path().join("snapshot.bin")).contains("payload does not decode"));
}

/// Version 1 (JSON under a CRC-checked header), as earlier builds wrote it.
fn v1(payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 32];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    [&h[..], payload].concat()
}

#[test]
fn version_1_files_are_still_read_and_checked() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("snapshot.bin");
    let good = v1(&serde_json::to_vec(&sample()).unwrap());
    fs::write(&path, &good).unwrap();
    let (back, summary) = read::<Sample>(&path).unwrap();
    assert_eq!((back, summary.version, summary.sha256), (sample(), 1, None));
    let mut bad = good.clone();
    let at = good.len() - 40;
    bad[at] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    assert!(err(&path).contains("checksum mismatch in the payload"));
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(err(&path).contains("is truncated"));
    bad = good.clone();
    bad[20] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    assert!(err(&path).contains("header checksum mismatch"));
}

#[test]
fn encoding_streams_through_a_bounded_buffer() {
    /// Records the largest single write it is given.
    struct Largest(usize, u64);
    impl Write for Largest {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 = self.0.max(buf.len());
            self.1 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let big: Vec<Sample> = (0..400).map(|i| Sample { name: format!("k{i}"), ..sample() }).collect();
    let (w, summary) = encode(&big, Largest(0, 0)).unwrap();
    assert_eq!(w.1, summary.file_bytes);
    assert!(summary.file_bytes > 2_000_000);
    assert!(w.0 <= BUFFER, "largest write {} bytes", w.0);
}
