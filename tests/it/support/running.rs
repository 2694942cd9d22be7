//! A `palisade` client command left running (`lease keepalive`, `kv watch`, `lock`,
//! `elect`): its stdout lines as they come, its stderr in a file; killed when dropped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::process::palisade_command;

/// A command left running: its stdout lines as they come, its stderr in a file; killed
/// when dropped.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl Running {
    pub fn start(endpoints: &str, args: &[&str]) -> Running {
        let mut v = vec![args[0].to_string(), "--endpoints".to_string(), endpoints.to_string()];
        v.extend(args[1..].iter().map(|s| s.to_string()));
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = palisade_command(&v)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("spawn palisade");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, stderr }
    }

    /// The next line of stdout, which must come within `within`.
    pub fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no line within {within:?}; stderr: {}", self.stderr()))
    }

    /// The next line of stdout that does not start with `skip`, which must come within
    /// `within`.
    pub fn line_past(&self, skip: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let line = self.line(until.saturating_duration_since(Instant::now()));
            if !line.starts_with(skip) {
                return line;
            }
        }
    }

    /// The next line of stdout, if one comes within `within`.
    pub fn maybe_line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// The exit code, which must come within `within`.
    pub fn exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "still running after {within:?}; stderr: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let st = std::process::Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
