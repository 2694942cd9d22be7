//! Record framing: how one record is laid out on disk, checked, and recognised as torn.
//!
//! Owns the frame layout (version 1) and nothing else: no files, no ordering. Every record is
//!
//! ```text
//! offset size
//!  0      4   magic  FF 57 41 4C ("\xFFWAL"; 0xFF never occurs in UTF-8, so not in JSON)
//!  4      1   format version (1)
//!  5      1   kind: 1 Begin, 2 Entry, 3 Truncate, 4 Purge, 5 Vote, 6 Committed, 7 Seal
//!  6      1   flags: bit 0 SYNCED = the writer fsynced right after this record
//!  7      1   reserved, 0
//!  8      4   payload length (u32 LE)
//! 12      4   crc32 of the payload
//! 16      8   epoch: the group-commit batch number (u64 LE)
//! 24      8   arg: Entry index, Truncate since, Purge upto, Begin seq, Seal next seq, else 0
//! 32      4   crc32 of bytes 0..32 (so of the payload too, through its crc)
//! 36      n   payload
//! 36+n    4   trailer 4C 41 57 FF ("LAW\xFF")
//! ```
//!
//! Invariants: a record is valid only if the magic, both crcs and the trailer match, so a
//! record that was written completely and never changed is the only thing that parses. The
//! first and last bytes of a frame are never zero (magic, trailer), which is what lets
//! [`looks_torn`] tell an unfinished write (some of it still reads as the zeros of the
//! preallocated file) from a changed byte in a finished one.
//!
//! The payload crc is computed when a record is built (by the caller's thread); the epoch,
//! the flags and the header crc are stamped by the writer, which alone knows the batch. That
//! costs a crc of 32 bytes per record on the writer thread and no second pass over payloads.

use std::io;

pub(crate) const MAGIC: [u8; 4] = *b"\xFFWAL";
pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 36;
pub(crate) const TRAILER: [u8; 4] = *b"LAW\xFF";
/// Header and trailer: the bytes a record takes beyond its payload.
pub(crate) const OVERHEAD: usize = HEADER_LEN + TRAILER.len();
/// The unit a torn write is assumed to respect (the smallest sector size in use).
pub(crate) const SECTOR: usize = 512;
/// The writer fsynced right after this record: a later epoch may follow.
pub(crate) const SYNCED: u8 = 1;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// The first record of every segment: arg = its sequence number, payload = its
    /// preallocated size (u64 LE).
    Begin = 1,
    Entry = 2,
    Truncate = 3,
    Purge = 4,
    Vote = 5,
    Committed = 6,
    /// The last record of a segment that has a successor: arg = the successor's seq.
    Seal = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Begin,
            2 => Kind::Entry,
            3 => Kind::Truncate,
            4 => Kind::Purge,
            5 => Kind::Vote,
            6 => Kind::Committed,
            7 => Kind::Seal,
            _ => return None,
        })
    }
}

/// The fields of a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub len: u32,
    pub epoch: u64,
    pub arg: u64,
}

impl Header {
    pub fn synced(&self) -> bool {
        self.flags & SYNCED != 0
    }
}

/// A valid record found in a buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame<'a> {
    pub header: Header,
    pub payload: &'a [u8],
    /// Offset of the record's first byte.
    pub offset: usize,
    /// Offset just past its trailer.
    pub end: usize,
}

/// Why the bytes at an offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes left than a header.
    Short,
    NoMagic,
    HeaderCrc,
    /// The header is valid but the record would run past the end of the segment.
    PastEnd {
        len: u32,
    },
    PayloadCrc,
    Trailer,
    /// A valid header of a version this build does not read (checked before the crc, at
    /// the start of a segment only).
    Version(u8),
    /// A valid header of a kind this build does not know.
    UnknownKind(u8),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Short => write!(f, "too few bytes left for a record header"),
            Bad::NoMagic => write!(f, "no record magic"),
            Bad::HeaderCrc => write!(f, "record header checksum mismatch"),
            Bad::PastEnd { len } => write!(f, "a record of {len} payload bytes that runs past the end"),
            Bad::PayloadCrc => write!(f, "payload checksum mismatch"),
            Bad::Trailer => write!(f, "record trailer missing"),
            Bad::Version(v) => write!(f, "unknown format version {v} (this build reads version {VERSION})"),
            Bad::UnknownKind(k) => write!(f, "a valid record of unknown kind {k}"),
        }
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends a record with a zero epoch and no flags (see [`stamp`]) to `buf`; the payload is
/// written by `write`. Returns the record's offset in `buf`. On error `buf` is unchanged.
pub(crate) fn push(
    buf: &mut Vec<u8>,
    kind: Kind,
    arg: u64,
    write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = write(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let body = start + HEADER_LEN;
    let Ok(len) = u32::try_from(buf.len() - body) else {
        buf.truncate(start);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "WAL record payload larger than 4 GiB"));
    };
    let crc = crc32fast::hash(&buf[body..]);
    let h = &mut buf[start..body];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h[24..32].copy_from_slice(&arg.to_le_bytes());
    buf.extend_from_slice(&TRAILER);
    Ok(start)
}

/// Sets the epoch and flags of the record at the start of `frame` and seals its header crc.
pub(crate) fn stamp(frame: &mut [u8], epoch: u64, flags: u8) {
    frame[6] = flags;
    frame[16..24].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&frame[..32]);
    frame[32..36].copy_from_slice(&crc.to_le_bytes());
}

/// A complete, stamped record (for the writer's own records: segment headers, seals).
pub(crate) fn encode(buf: &mut Vec<u8>, kind: Kind, arg: u64, epoch: u64, flags: u8, payload: &[u8]) {
    let at = push(buf, kind, arg, |b| {
        b.extend_from_slice(payload);
        Ok(())
    })
    .expect("payloads of the writer's own records are small");
    stamp(&mut buf[at..], epoch, flags);
}

/// The header at `off`, if its magic and crc are valid. The version is not checked here.
fn header_at(buf: &[u8], off: usize) -> Result<(Header, u8), Bad> {
    let Some(h) = buf.get(off..off + HEADER_LEN) else { return Err(Bad::Short) };
    if h[0..4] != MAGIC {
        return Err(Bad::NoMagic);
    }
    if crc32fast::hash(&h[..32]) != u32_at(h, 32) {
        return Err(Bad::HeaderCrc);
    }
    let kind = Kind::from_u8(h[5]).ok_or(Bad::UnknownKind(h[5]))?;
    let header = Header { kind, flags: h[6], len: u32_at(h, 8), epoch: u64_at(h, 16), arg: u64_at(h, 24) };
    Ok((header, h[4]))
}

/// The header at `off`, if its magic and crc are valid.
pub(crate) fn valid_header(buf: &[u8], off: usize) -> Option<Header> {
    header_at(buf, off).ok().map(|(h, _)| h)
}

/// The valid record at `off` in `buf`.
pub(crate) fn parse(buf: &[u8], off: usize) -> Result<Frame<'_>, Bad> {
    let (header, version) = header_at(buf, off)?;
    if version != VERSION {
        return Err(Bad::Version(version));
    }
    let body = off + HEADER_LEN;
    let end = body + header.len as usize + TRAILER.len();
    if end > buf.len() {
        return Err(Bad::PastEnd { len: header.len });
    }
    let payload = &buf[body..body + header.len as usize];
    if crc32fast::hash(payload) != u32_at(buf, off + 12) {
        return Err(Bad::PayloadCrc);
    }
    if buf[end - TRAILER.len()..end] != TRAILER {
        return Err(Bad::Trailer);
    }
    Ok(Frame { header, payload, offset: off, end })
}

/// The format version in the header at `off`, if the bytes there start with the magic.
/// Lets a segment of an unknown version be named as such rather than as damaged.
pub(crate) fn version_at(buf: &[u8], off: usize) -> Option<u8> {
    let h = buf.get(off..off + HEADER_LEN)?;
    (h[0..4] == MAGIC).then_some(h[4])
}

/// Whether the invalid record at `off` shows a sign of a write that did not finish: part of
/// it still reads as the zeros of the preallocated file. Two kinds of unfinished write:
/// - cut short (a killed process, or a device that persists in order): everything from
///   the cut on is still zero, so the record's last byte (the trailer's 0xFF) is zero; for a
///   header that is itself invalid, its last byte and the bytes after it are;
/// - some sectors persisted and others not (power loss): a sector it covers is still
///   zero, from the record's start (or the sector's start) to the sector's end.
///
/// A byte changed in a record that was written completely shows neither (unless its
/// payload holds 512 zero bytes in a row, or, for a damaged header, its crc's last byte
/// and the payload's first 8 bytes are zero).
pub(crate) fn looks_torn(buf: &[u8], off: usize) -> bool {
    let (end, header_ok) = match header_at(buf, off) {
        // The header was written: the record's extent is known.
        Ok((h, _)) => (off + HEADER_LEN + h.len as usize + TRAILER.len(), true),
        // Only the header's extent is known.
        Err(_) => (off + HEADER_LEN, false),
    };
    if end > buf.len() {
        // We never write a record that does not fit: this is not an unfinished write of ours.
        return false;
    }
    let cut_short =
        if header_ok { buf[end - 1] == 0 } else { all_zero(&buf[end - 1..(end + 8).min(buf.len())]) };
    if cut_short {
        return true;
    }
    let mut from = off;
    while from < end {
        let sector_end = (from / SECTOR + 1) * SECTOR;
        if all_zero(&buf[from..sector_end.min(buf.len())]) {
            return true;
        }
        from = sector_end;
    }
    false
}

/// The valid records that start at or after `from`, found by searching for the magic (so
/// also behind garbage).
pub(crate) fn scan_valid(buf: &[u8], from: usize) -> impl Iterator<Item = Frame<'_>> + '_ {
    let mut at = from;
    std::iter::from_fn(move || {
        while at + HEADER_LEN <= buf.len() {
            // Skip zeros fast: the rest of a segment is mostly preallocated zeros.
            let Some(nz) = next_nonzero(buf, at) else {
                at = buf.len();
                return None;
            };
            let cand = match buf[nz..].iter().position(|&b| b == MAGIC[0]) {
                Some(p) => nz + p,
                None => {
                    at = buf.len();
                    return None;
                }
            };
            match parse(buf, cand) {
                Ok(frame) => {
                    at = frame.end;
                    return Some(frame);
                }
                Err(_) => at = cand + 1,
            }
        }
        None
    })
}

const ZEROS: [u8; 4096] = [0; 4096];

fn all_zero(bytes: &[u8]) -> bool {
    // Slice comparison is a memcmp, fast even in debug builds.
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The first non-zero byte of `buf` at or after `from`.
fn next_nonzero(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < buf.len() {
        let chunk = &buf[at..(at + ZEROS.len()).min(buf.len())];
        if chunk != &ZEROS[..chunk.len()] {
            return chunk.iter().position(|&b| b != 0).map(|p| at + p);
        }
        at += chunk.len();
    }
    None
}

/// Whether every byte of `buf` from `from` on is zero.
pub(crate) fn zero_from(buf: &[u8], from: usize) -> bool {
    buf.get(from..).is_none_or(all_zero)
}

/// One past the last non-zero byte of `buf` (0 if there is none).
pub(crate) fn nonzero_end(buf: &[u8]) -> usize {
    let mut end = buf.len();
    while end > 0 {
        let start = end.saturating_sub(ZEROS.len());
        let chunk = &buf[start..end];
        if chunk != &ZEROS[..chunk.len()] {
            return start + chunk.iter().rposition(|&b| b != 0).expect("a non-zero byte") + 1;
        }
        end = start;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, arg: u64, epoch: u64, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, kind, arg, epoch, flags, payload);
        buf
    }

    #[test]
    fn round_trip() {
        let mut buf = record(Kind::Entry, 7, 3, SYNCED, b"{\"x\":1}");
        buf.extend(record(Kind::Truncate, 9, 4, 0, b""));
        let a = parse(&buf, 0).unwrap();
        assert_eq!(a.header, Header { kind: Kind::Entry, flags: SYNCED, len: 7, epoch: 3, arg: 7 });
        assert_eq!(a.payload, b"{\"x\":1}");
        assert_eq!(a.end, OVERHEAD + 7);
        let b = parse(&buf, a.end).unwrap();
        assert_eq!((b.header.kind, b.header.arg, b.header.synced()), (Kind::Truncate, 9, false));
        assert_eq!(b.end, buf.len());
        assert_eq!(scan_valid(&buf, 1).map(|f| f.offset).collect::<Vec<_>>(), vec![a.end]);
    }

    #[test]
    fn every_flipped_byte_is_detected_and_not_torn() {
        let payload: Vec<u8> = (0..1500u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut buf = vec![0u8; 100];
        buf.extend(record(Kind::Entry, 42, 9, SYNCED, &payload));
        buf.resize(buf.len() + 700, 0);
        for i in 100..100 + OVERHEAD + payload.len() {
            for bit in [0x01, 0x80] {
                let mut bad = buf.clone();
                bad[i] ^= bit;
                assert!(parse(&bad, 100).is_err(), "flip at {i} undetected");
                assert!(!looks_torn(&bad, 100), "flip at {i} taken for a torn write");
            }
        }
    }

    #[test]
    fn unfinished_writes_look_torn() {
        let payload = vec![b'x'; 1500];
        let whole = record(Kind::Entry, 1, 1, SYNCED, &payload);
        for base in [0usize, 300, 510] {
            // Cut short anywhere: a prefix, then the zeros of the preallocated file.
            for cut in (1..whole.len()).step_by(7) {
                let mut buf = vec![0u8; base + whole.len() + 600];
                buf[base..base + cut].copy_from_slice(&whole[..cut]);
                assert!(parse(&buf, base).is_err());
                assert!(looks_torn(&buf, base), "prefix of {cut} at {base}");
            }
            // A middle sector never made it.
            let mut buf = vec![0u8; base + whole.len() + 600];
            buf[base..base + whole.len()].copy_from_slice(&whole);
            let sector = (base / SECTOR + 1) * SECTOR;
            buf[sector..sector + SECTOR].fill(0);
            assert!(parse(&buf, base).is_err());
            assert!(looks_torn(&buf, base), "hole at {sector}");
        }
    }

    #[test]
    fn version_and_kind() {
        let mut buf = record(Kind::Begin, 1, 0, SYNCED, &64u64.to_le_bytes());
        buf[4] = 2;
        let crc = crc32fast::hash(&buf[..32]);
        buf[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse(&buf, 0).unwrap_err(), Bad::Version(2));
        assert_eq!(version_at(&buf, 0), Some(2));
        buf[4] = 1;
        buf[5] = 99;
        let crc = crc32fast::hash(&buf[..32]);
        buf[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse(&buf, 0).unwrap_err(), Bad::UnknownKind(99));
    }

    #[test]
    fn too_large_payload_leaves_the_buffer_unchanged() {
        let mut buf = vec![1, 2, 3];
        let err = push(&mut buf, Kind::Vote, 0, |_| Err(io::Error::other("no"))).unwrap_err();
        assert_eq!(err.to_string(), "no");
        assert_eq!(buf, vec![1, 2, 3]);
    }
}
