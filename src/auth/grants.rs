//! [`Grants`]: what a token's `palisade` claim allows, and how a key or a name is matched.
//!
//! ```json
//! "palisade": {"read": ["/app/"], "write": ["/app/locks/"], "locks": ["db-*"],
//!              "elections": ["leader-*"], "admin": false}
//! ```
//!
//! - A key prefix covers a key on segment boundaries: `/app/` and `/app` both cover `/app`
//!   and everything below it (`/app/db`), never `/apple`. `/` covers every key.
//! - A recursive read, delete or watch of `/app` touches `/app` and its whole subtree, so
//!   it needs one prefix that covers `/app` itself (a permission on a part of the subtree
//!   is not enough): decided from the request alone, before anything is read or proposed.
//! - A lock or election name pattern is a glob: `*` matches any run of characters
//!   (`db-*`, `*`); anything else matches itself.
//! - `admin: true` allows everything: every key, lock and election, every lease, and the
//!   admin routes (compaction, and later membership and snapshots).
//!
//! Invariants: a parsed `Grants` holds only well-formed patterns (a key prefix starts with
//! `/`; none is empty or longer than [`MAX_PATTERN_BYTES`]; at most [`MAX_PATTERNS`] per
//! list), so matching never fails.

use serde::Deserialize;

/// Most patterns in one list of a claim.
pub const MAX_PATTERNS: usize = 256;
/// Longest pattern (bytes).
pub const MAX_PATTERN_BYTES: usize = 1024;

/// The permissions a token carries. Missing lists are empty: a token without the claim
/// may only do what needs no permission (grant leases, read the cluster status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Key prefixes that may be read (gets, listings, watches, compares).
    #[serde(default)]
    pub read: Vec<String>,
    /// Key prefixes that may be written (puts, deletes).
    #[serde(default)]
    pub write: Vec<String>,
    /// Lock name patterns that may be acquired, released, read and fence-checked.
    #[serde(default)]
    pub locks: Vec<String>,
    /// Election name patterns that may be campaigned in, led, read, observed and
    /// fence-checked.
    #[serde(default)]
    pub elections: Vec<String>,
    /// Everything, including the admin routes.
    #[serde(default)]
    pub admin: bool,
}

impl Grants {
    /// Every permission.
    pub fn everything() -> Grants {
        Grants { admin: true, ..Grants::default() }
    }

    /// Checks the patterns' shape; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (list, patterns) in [
            ("read", &self.read),
            ("write", &self.write),
            ("locks", &self.locks),
            ("elections", &self.elections),
        ] {
            if patterns.len() > MAX_PATTERNS {
                return Err(format!(
                    "palisade.{list} has {} entries; at most {MAX_PATTERNS}",
                    patterns.len()
                ));
            }
            for p in patterns {
                if p.is_empty() || p.len() > MAX_PATTERN_BYTES {
                    return Err(format!(
                        "palisade.{list} has an entry of {} bytes; 1 to {MAX_PATTERN_BYTES}",
                        p.len()
                    ));
                }
                if list == "read" || list == "write" {
                    // A prefix is a key path (`/` alone, or a key with or without a final
                    // `/`): `//`, `/a//b` or `/..` would cover what no one meant.
                    let path = if p == "/" { p.as_str() } else { p.strip_suffix('/').unwrap_or(p) };
                    let bad = path.is_empty() || (path == "/" && p != "/");
                    if bad || crate::store::key::validate(path, MAX_PATTERN_BYTES).is_err() {
                        return Err(format!(
                            "palisade.{list} entry {p:?} is not a key prefix (a key path such as /app/ or /)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `key` (or, the same thing, the subtree at `key`) may be read.
    pub fn may_read(&self, key: &str) -> bool {
        self.admin || self.read.iter().any(|p| covers(p, key))
    }

    /// Whether `key` (or the subtree at `key`) may be written.
    pub fn may_write(&self, key: &str) -> bool {
        self.admin || self.write.iter().any(|p| covers(p, key))
    }

    /// Whether lock `name` may be used.
    pub fn may_lock(&self, name: &str) -> bool {
        self.admin || self.locks.iter().any(|p| glob(p, name))
    }

    /// Whether election `name` may be used.
    pub fn may_elect(&self, name: &str) -> bool {
        self.admin || self.elections.iter().any(|p| glob(p, name))
    }
}

/// Whether key prefix `prefix` covers `key` (and so its whole subtree), on segment
/// boundaries.
pub fn covers(prefix: &str, key: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        // `/`: the root covers everything.
        return key.starts_with('/');
    }
    match key.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters. At most
/// the product of the lengths in steps (no exponential backtracking on `a*a*a*...`).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it currently stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_on_segment_boundaries() {
        for (p, k, want) in [
            ("/app/", "/app", true),
            ("/app/", "/app/db", true),
            ("/app", "/app/db/x", true),
            ("/app/", "/apple", false),
            ("/app", "/apple", false),
            ("/app/db", "/app", false),
            ("/", "/anything/at/all", true),
            ("/", "/", true),
            ("/app/", "/", false),
        ] {
            assert_eq!(covers(p, k), want, "{p} covers {k}");
        }
    }

    #[test]
    fn globs_match_runs() {
        for (p, n, want) in [
            ("db-*", "db-migrations", true),
            ("db-*", "db-", true),
            ("db-*", "cache-db-x", false),
            ("*", "anything", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*-primary", "db-primary", true),
            ("a*a*a*a*a*b", &"a".repeat(200), false),
        ] {
            assert_eq!(glob(p, n), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn admin_allows_everything_and_lists_are_separate() {
        let g = Grants {
            read: vec!["/app/".into()],
            write: vec!["/app/locks/".into()],
            locks: vec!["db-*".into()],
            elections: vec![],
            admin: false,
        };
        assert!(g.may_read("/app/x") && !g.may_read("/apple"));
        assert!(g.may_write("/app/locks/a") && !g.may_write("/app/x"));
        assert!(g.may_lock("db-1") && !g.may_elect("db-1"));
        let a = Grants::everything();
        assert!(a.may_read("/") && a.may_write("/x") && a.may_lock("x") && a.may_elect("y"));
    }

    #[test]
    fn malformed_claims_are_refused() {
        let parse =
            |j: &str| serde_json::from_str::<Grants>(j).map_err(|e| e.to_string()).and_then(|g| g.validate());
        assert!(parse(r#"{"read":["/a"],"admin":false}"#).is_ok());
        assert!(parse(r#"{"writes":["/a"]}"#).unwrap_err().contains("unknown field"));
        assert!(parse(r#"{"read":["app/"]}"#).unwrap_err().contains("key prefix"));
        for bad in ["//", "/a//b", "/..", "/a/../b", "/a//"] {
            let j = format!(r#"{{"write":["{bad}"]}}"#);
            assert!(parse(&j).unwrap_err().contains("key prefix"), "{bad}");
        }
        assert!(parse(r#"{"read":["/","/app/","/app"]}"#).is_ok());
        assert!(parse(r#"{"locks":[""]}"#).is_err());
        assert!(parse(r#"{"read":"/a"}"#).is_err());
        let many = format!(r#"{{"read":[{}]}}"#, vec!["\"/a\""; MAX_PATTERNS + 1].join(","));
        assert!(parse(&many).unwrap_err().contains("at most"));
    }
}
