//! `GET /v1/maintenance/snapshot`: a backup of the cluster's state, streamed to a writer.
//!
//! The download has no overall deadline (a large store takes as long as it takes), but
//! every piece of it must arrive within the client's timeout. What arrives is written as
//! it comes: memory stays bounded by one piece, whatever the size of the store. The
//! bytes are not checked here (the caller decodes the file it wrote).

use std::io::Write;

use super::{api_error, chain, root_cause, Client, Error};

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDownload {
    /// The store revision the snapshot captures (`X-Palisade-Revision`).
    pub revision: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The endpoint that served it.
    pub endpoint: String,
}

impl Client {
    /// Downloads a snapshot of the state (a linearizable point, taken by the member that
    /// answers) into `out`. Needs an admin token on a cluster with client auth on. An
    /// endpoint that cannot be reached, or that answers 429 (its downloads are all taken)
    /// or 503 (no quorum: nothing was sent), is skipped for the next one; once one starts
    /// sending, its answer (or failure) is final.
    pub async fn snapshot(&self, out: &mut dyn Write) -> Result<SnapshotDownload, Error> {
        let http = self
            .http_builder()
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client: {e}")))?;
        let n = self.endpoints.len();
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let endpoint = &self.endpoints[(start + i) % n];
            let url = format!("{endpoint}/v1/maintenance/snapshot");
            let sent = tokio::time::timeout(self.timeout, http.get(&url).send()).await;
            let mut resp = match sent {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) if e.is_connect() => {
                    failures.push(format!("{endpoint}: {}", root_cause(&e)));
                    continue;
                }
                Ok(Err(e)) => return Err(Error::Other(format!("GET {url}: {}", chain(&e)))),
                Err(_) => return Err(Error::Other(format!("GET {url}: no reply within {:?}", self.timeout))),
            };
            let status = resp.status();
            if !status.is_success() {
                let body = tokio::time::timeout(self.timeout, resp.bytes())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let refused = api_error(status.as_u16(), &body);
                if matches!(status.as_u16(), 429 | 503) && i + 1 < n {
                    failures.push(format!("{endpoint}: {refused}"));
                    continue;
                }
                return Err(refused);
            }
            let revision = resp
                .headers()
                .get("x-palisade-revision")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    Error::Other(format!("{endpoint}: the snapshot came without X-Palisade-Revision"))
                })?;
            let mut bytes = 0u64;
            loop {
                let piece = tokio::time::timeout(self.timeout, resp.chunk()).await.map_err(|_| {
                    Error::Other(format!(
                        "{endpoint}: the snapshot stopped arriving ({bytes} bytes in, nothing for {:?})",
                        self.timeout
                    ))
                })?;
                match piece {
                    Ok(Some(piece)) => {
                        out.write_all(&piece)
                            .map_err(|e| Error::Other(format!("writing the snapshot: {e}")))?;
                        bytes += piece.len() as u64;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Error::Other(format!(
                            "{endpoint}: the snapshot broke off after {bytes} bytes: {}",
                            chain(&e)
                        )))
                    }
                }
            }
            return Ok(SnapshotDownload { revision, bytes, endpoint: endpoint.clone() });
        }
        Err(Error::Connect(format!("cannot connect to any endpoint ({})", failures.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves one canned HTTP reply to every connection; returns its address.
    async fn serve(reply: String) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_member_whose_downloads_are_taken_is_skipped_for_the_next() {
        let busy = r#"{"error":{"code":"overloaded","message":"2 downloads at once"}}"#;
        let busy = serve(format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{busy}",
            busy.len()
        ))
        .await;
        let free = serve(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nx-palisade-revision: 9\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbytes"
                .into(),
        )
        .await;
        let c =
            Client::with_timeout(vec![busy.to_string(), free.to_string()], Duration::from_secs(2)).unwrap();
        let mut out = Vec::new();
        let got = c.snapshot(&mut out).await.unwrap();
        assert_eq!((got.revision, got.bytes, out.as_slice()), (9, 5, &b"bytes"[..]));
        assert!(got.endpoint.ends_with(&free.port().to_string()), "{got:?}");
        // Alone, the busy member's refusal is the answer.
        let c = Client::with_timeout(vec![busy.to_string()], Duration::from_secs(2)).unwrap();
        let e = c.snapshot(&mut Vec::new()).await.unwrap_err();
        assert_eq!(e.status(), Some(429));
    }
}
