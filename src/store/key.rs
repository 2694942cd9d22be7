//! Key paths: validation and the prefix arithmetic that hierarchical listing needs.
//!
//! A key is an absolute UTF-8 path (`/app/db/leader`): it starts with `/`, has no empty,
//! `.` or `..` segment, no trailing `/`, no control characters, no invisible or
//! direction-changing characters (so two keys that look the same are the same), and is at
//! most `max_len` bytes. `/` alone is the root: it can be listed but never written.
//! Keys sort byte-wise, so everything strictly below `/a` lies in the half-open
//! range `["/a/", "/a0")` (`'0'` is the byte after `'/'`).

use std::fmt;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The root of the key space.
pub const ROOT: &str = "/";

/// Checks `key` against the path rules. The root `/` is valid here (it can be read and
/// listed); callers that write refuse it with [`is_root`].
pub fn validate(key: &str, max_len: usize) -> Result<(), KeyError> {
    if key.len() > max_len {
        return Err(KeyError(format!("key is {} bytes, over the limit of {max_len}", key.len())));
    }
    if !key.starts_with('/') {
        return Err(KeyError("a key must start with '/'".into()));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(KeyError(format!(
            "a key must not contain control characters (found U+{:04X})",
            c as u32
        )));
    }
    if let Some(c) = key.chars().find(|c| is_invisible(*c)) {
        return Err(KeyError(format!(
            "a key must not contain invisible or bidirectional-control characters (found U+{:04X})",
            c as u32
        )));
    }
    if key == ROOT {
        return Ok(());
    }
    if key.ends_with('/') {
        return Err(KeyError("a key must not end with '/'".into()));
    }
    for seg in key[1..].split('/') {
        match seg {
            "" => return Err(KeyError("a key must not have an empty segment ('//')".into())),
            "." | ".." => return Err(KeyError(format!("a key must not have a '{seg}' segment"))),
            _ => {}
        }
    }
    Ok(())
}

/// Characters that render as nothing or reorder the text around them, so a key holding
/// one looks like another key: zero-width spaces and joiners and the directional marks
/// (U+200B–U+200F), the bidirectional embeddings and overrides (U+202A–U+202E), the
/// bidirectional isolates (U+2066–U+2069), the word joiner and invisible operators
/// (U+2060–U+2064), and the byte-order mark (U+FEFF).
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// True for the root path, which cannot be written.
pub fn is_root(key: &str) -> bool {
    key == ROOT
}

/// The prefix every descendant of `key` starts with: `/a` -> `/a/`, `/` -> `/`.
pub fn child_prefix(key: &str) -> String {
    if is_root(key) {
        ROOT.to_string()
    } else {
        format!("{key}/")
    }
}

/// The smallest string greater than every string starting with `prefix` (which ends in
/// `/`): the `/` is replaced by `0`.
pub fn prefix_end(prefix: &str) -> String {
    debug_assert!(prefix.ends_with('/'));
    let mut end = prefix[..prefix.len() - 1].to_string();
    end.push('0');
    end
}

/// The first segment of `key` below `prefix` (which `key` starts with): the child's name.
pub fn child_name<'a>(prefix: &str, key: &'a str) -> &'a str {
    let rest = &key[prefix.len()..];
    match rest.find('/') {
        Some(i) => &rest[..i],
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_paths() {
        for k in ["/", "/a", "/a/b", "/app/db/leader", "/ü/日本", "/a.b/c..d/...", "/a b"] {
            assert_eq!(validate(k, 1024), Ok(()), "{k}");
        }
    }

    #[test]
    fn refuses_bad_paths() {
        for k in ["", "a", "a/b", "/a/", "//", "/a//b", "/.", "/a/..", "/a/./b", "/a\n", "/\u{7f}"] {
            assert!(validate(k, 1024).is_err(), "{k:?}");
        }
        for c in [
            '\u{200B}', '\u{200D}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2069}',
            '\u{FEFF}',
        ] {
            let k = format!("/locks/db{c}-main");
            let e = validate(&k, 1024).unwrap_err();
            assert!(e.0.contains("invisible"), "{k:?}: {e}");
        }
        // Visible non-ASCII stays fine.
        for k in ["/ключ", "/مفتاح", "/a\u{00A0}b", "/emoji-🔒"] {
            assert_eq!(validate(k, 1024), Ok(()), "{k:?}");
        }
        assert!(validate(&format!("/{}", "x".repeat(1024)), 1024).is_err());
        assert!(validate(&format!("/{}", "x".repeat(1023)), 1024).is_ok());
    }

    #[test]
    fn prefixes() {
        assert_eq!(child_prefix("/"), "/");
        assert_eq!(child_prefix("/a"), "/a/");
        assert_eq!(prefix_end("/a/"), "/a0");
        assert_eq!(prefix_end("/"), "0");
        assert!("/a/zzz" < prefix_end("/a/").as_str());
        assert!("/a0" >= prefix_end("/a/").as_str());
        assert!("/a.b" < "/a/");
        assert_eq!(child_name("/a/", "/a/b/c"), "b");
        assert_eq!(child_name("/", "/x"), "x");
    }
}
