//! Backups of the applied state: [`Node::backup`] takes a linearizable copy and encodes it
//! as a snapshot file into a bounded channel, piece by piece, for a front-end to stream.
//!
//! Invariants: the copy is taken after a read index (it holds every write acknowledged
//! before the request) and costs O(1) (the state's maps are persistent), so applying
//! never waits for a backup; the encoding runs on a blocking thread and stops when the
//! receiver goes away; what is buffered is bounded by the channel ([`PIECES`] pieces of
//! [`PIECE_BYTES`]); at most `max_snapshot_downloads` backups are open at once on a node
//! (a place is held until the stream is dropped, i.e. the download ended or broke off).

use std::io::{self, Write};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Node;
use crate::error::{Error, Result};
use crate::raft::Backup;

/// Bytes in one piece of a backup stream.
pub const PIECE_BYTES: usize = 256 << 10;
/// Pieces a backup stream may buffer ahead of its reader.
pub const PIECES: usize = 4;

/// A backup being encoded: its revision, and the pieces as they are made (an `Err` piece
/// is the last: the encoding failed and the stream is incomplete). It holds its place
/// among `max_snapshot_downloads` until it is dropped.
pub struct BackupStream {
    pub revision: u64,
    pieces: mpsc::Receiver<io::Result<Vec<u8>>>,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl BackupStream {
    /// The next piece (`None` after the last).
    pub async fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.pieces.recv().await
    }
}

/// Sends what is written to it in pieces of [`PIECE_BYTES`], waiting while the channel is
/// full; fails once the receiver is gone.
struct PieceWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl PieceWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE_BYTES));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the backup's reader went away"))
    }
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Node {
    /// Starts a backup: a copy of the applied state at a linearizable point, encoded as a
    /// snapshot file into the returned stream. `Overloaded` when `max_snapshot_downloads`
    /// backups are running already.
    pub async fn backup(self: &Arc<Self>) -> Result<BackupStream> {
        let place = self.backups.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} snapshot downloads are in progress on this node (--max-snapshot-downloads); try again later \
                 or another member",
                self.cfg.max_snapshot_downloads
            ))
        })?;
        self.linearize().await?;
        let backup = Backup::of(&self.replica.applied());
        let revision = backup.revision();
        let (tx, pieces) = mpsc::channel(PIECES);
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let w = PieceWriter { tx: tx.clone(), buf: Vec::with_capacity(PIECE_BYTES) };
            match backup.write_to(w) {
                Ok((_, summary)) => tracing::info!(
                    revision,
                    bytes = summary.file_bytes,
                    ms = t0.elapsed().as_millis() as u64,
                    "snapshot download encoded"
                ),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::info!(revision, "snapshot download abandoned by its reader")
                }
                Err(e) => {
                    tracing::warn!(revision, error = %e, "snapshot download failed");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Ok(BackupStream { revision, pieces, _place: place })
    }
}
