//! [`Reloading`]: a value built from files, rebuilt when the files change on disk.
//!
//! The files are looked at with `stat` (modification time, length, inode: a rename or a
//! symlink swap, as Kubernetes does for secrets, changes the inode) about once a second;
//! only when one of them changed is the value rebuilt. A rebuild that fails (a file
//! half-written, a certificate whose new key has not arrived yet) keeps the value that was
//! current and logs one warning naming the file and why; the next change of the files is
//! tried again. Each user takes [`Reloading::current`] when it starts something (a
//! connection, a request), so nothing in flight ever sees a value change under it.
//!
//! Invariant: the stamps recorded for the current value are those taken *before* it was
//! built, so a file that changes while it is being read is seen as changed at the next
//! look and read again.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::{PemFile, TlsError};

/// What `stat` says of a file: `None` when it cannot be looked at.
pub type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(file: &PemFile) -> Stamp {
    let m = std::fs::metadata(&file.path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some((m.modified().ok()?, m.len(), inode))
}

/// What a look at the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded<E = TlsError> {
    /// Nothing changed.
    Unchanged,
    /// The files changed and the value was rebuilt.
    Reloaded,
    /// The files changed but the new value could not be built: the old one stays.
    Kept(E),
}

type Build<T, E> = Box<dyn Fn() -> Result<T, E> + Send + Sync>;

/// Stamps of the files, as of the current value and of the last failed rebuild.
struct Seen {
    loaded: Vec<Stamp>,
    /// The stamps a rebuild last failed on (warned about once).
    failed: Option<Vec<Stamp>>,
}

/// A value built from files, kept current as they change (see the module docs); `E` is
/// why a build failed.
pub struct Reloading<T, E = TlsError> {
    /// What the value is, for logs (`client listener TLS`).
    what: &'static str,
    files: Vec<PemFile>,
    build: Build<T, E>,
    current: RwLock<Arc<T>>,
    seen: Mutex<Seen>,
    /// Counts the rebuilds, so a user can tell the value changed.
    generation: std::sync::atomic::AtomicU64,
}

impl<T: Send + Sync + 'static, E: std::fmt::Display + Send + Sync + 'static> Reloading<T, E> {
    /// Builds the value from `files` once; an error is the first build's.
    pub fn load(
        what: &'static str,
        files: Vec<PemFile>,
        build: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Arc<Reloading<T, E>>, E> {
        let stamps = files.iter().map(stamp).collect();
        let value = build()?;
        Ok(Arc::new(Reloading {
            what,
            files,
            build: Box::new(build),
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(Seen { loaded: stamps, failed: None }),
            generation: 0.into(),
        }))
    }

    /// A value that follows no file.
    pub fn fixed(what: &'static str, value: T) -> Arc<Reloading<T, E>> {
        Arc::new(Reloading {
            what,
            files: Vec::new(),
            build: Box::new(|| unreachable!("a fixed value is never rebuilt")),
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(Seen { loaded: Vec::new(), failed: None }),
            generation: 0.into(),
        })
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times the value was rebuilt since it was first loaded.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Looks at the files; rebuilds the value if any changed. A failure is logged once per
    /// change of the files (never with the files' content).
    pub fn check(&self) -> Reloaded<E> {
        if self.files.is_empty() {
            return Reloaded::Unchanged;
        }
        let stamps: Vec<Stamp> = self.files.iter().map(stamp).collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if stamps == seen.loaded || seen.failed.as_ref() == Some(&stamps) {
            return Reloaded::Unchanged;
        }
        match (self.build)() {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                seen.loaded = stamps;
                seen.failed = None;
                self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(what = self.what, "reloaded {} from its changed files", self.what);
                Reloaded::Reloaded
            }
            Err(e) => {
                tracing::warn!(
                    what = self.what,
                    "the files of the {} changed, but cannot be used; keeping the previous ones: {e}",
                    self.what
                );
                seen.failed = Some(stamps);
                Reloaded::Kept(e)
            }
        }
    }

    /// Looks at the files every `every` in a background task, which ends once the last
    /// `Arc` of this value is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if self.files.is_empty() {
            return;
        }
        crate::file_poll::poll_files(self, every, |this| {
            this.check();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ServerFiles;

    /// A self-signed certificate and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn files(dir: &std::path::Path) -> ServerFiles {
        ServerFiles {
            cert: PemFile::new("tls_cert_file", dir.join("cert.pem")),
            key: PemFile::new("tls_key_file", dir.join("key.pem")),
            client_ca: None,
        }
    }

    #[test]
    fn a_half_written_file_keeps_the_old_config_and_a_complete_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (cert1, key1) = self_signed("one.example");
        std::fs::write(&f.cert.path, &cert1).unwrap();
        std::fs::write(&f.key.path, &key1).unwrap();
        let watched = f.files();
        let loader = f.clone();
        let r = Reloading::load("test TLS", watched, move || loader.load()).unwrap();
        let first = r.current();
        assert_eq!(r.check(), Reloaded::Unchanged);

        // The new certificate arrives half-written, its key not yet.
        let (cert2, key2) = self_signed("two.example");
        std::fs::write(&f.cert.path, &cert2[..cert2.len() / 2]).unwrap();
        match r.check() {
            Reloaded::Kept(e) => {
                let text = e.to_string();
                assert!(text.contains("tls_cert_file") && text.contains("cert.pem"), "{text}");
                assert!(text.contains("half-written"), "{text}");
            }
            other => panic!("a half-written certificate was not refused: {other:?}"),
        }
        assert!(Arc::ptr_eq(&first, &r.current()), "the old config stays");
        // Not tried (nor warned about) again until the files change again.
        assert_eq!(r.check(), Reloaded::Unchanged);

        // The whole certificate, but the old key: they do not match.
        std::fs::write(&f.cert.path, &cert2).unwrap();
        match r.check() {
            Reloaded::Kept(e) => {
                let text = e.to_string();
                assert!(text.contains("tls_key_file") && text.contains("not the private key"), "{text}");
                assert!(!text.contains("PRIVATE KEY-----") && !text.contains(&key1[40..80]), "{text}");
            }
            other => panic!("a mismatched key was not refused: {other:?}"),
        }
        assert!(Arc::ptr_eq(&first, &r.current()));
        assert_eq!(r.generation(), 0);

        // The key arrives: the pair is taken.
        std::fs::write(&f.key.path, &key2).unwrap();
        assert_eq!(r.check(), Reloaded::Reloaded);
        assert!(!Arc::ptr_eq(&first, &r.current()));
        assert_eq!(r.generation(), 1);
    }

    #[test]
    fn a_start_with_bad_files_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("tls_cert_file") && e.contains("cannot read"), "{e}");
        let (cert, _) = self_signed("a.example");
        let (_, other_key) = self_signed("b.example");
        std::fs::write(&f.cert.path, &cert).unwrap();
        std::fs::write(&f.key.path, "not a key\n").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("tls_key_file") && e.contains("no PEM private key"), "{e}");
        std::fs::write(&f.key.path, &other_key).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("tls_key_file") && e.contains("not the private key"), "{e}");
        assert!(!e.contains(&other_key[30..70]), "{e}");
    }
}
