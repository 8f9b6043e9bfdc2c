//! References to stored functions: `name:tag` or a manifest digest.

use std::fmt;
use std::str::FromStr;

use crate::Digest;

/// What a user types to name a build: `hello:v1`, `hello` (tag `latest`) or
/// `sha256:…` (a manifest digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable name pointing at a manifest.
    Tag(TagRef),
    /// An immutable manifest digest.
    Digest(Digest),
}

/// `name:tag`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagRef {
    name: String,
    tag: String,
}

/// A reference that is neither `name[:tag]` nor a digest.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid reference {input:?}: {reason} (expected `name:tag`, `name` or `sha256:<hex>`; \
     names use a-z, 0-9, `.`, `_`, `-` and `/`, tags use letters, digits, `.`, `_` and `-`)"
)]
pub struct InvalidReference {
    input: String,
    reason: &'static str,
}

/// The tag used when a reference names no tag.
pub const DEFAULT_TAG: &str = "latest";

impl TagRef {
    /// Validates and builds `name:tag`.
    pub fn new(name: &str, tag: &str) -> Result<Self, InvalidReference> {
        let invalid = |reason| InvalidReference {
            input: format!("{name}:{tag}"),
            reason,
        };
        // Names become object-store key segments: keep them to a safe,
        // unambiguous alphabet so no name can escape its prefix.
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
            && name.split('/').all(|segment| {
                segment
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
            });
        if !name_ok {
            return Err(invalid("bad name"));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !tag_ok {
            return Err(invalid("bad tag"));
        }
        Ok(Self {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The function name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl fmt::Display for TagRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl FromStr for TagRef {
    type Err = InvalidReference;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((name, tag)) => TagRef::new(name, tag),
            None => TagRef::new(s, DEFAULT_TAG),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl FromStr for Reference {
    type Err = InvalidReference;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sha256:") {
            return s
                .parse()
                .map(Reference::Digest)
                .map_err(|_| InvalidReference {
                    input: s.to_string(),
                    reason: "bad digest",
                });
        }
        s.parse().map(Reference::Tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_tag_and_default_tag() {
        let r: Reference = "hello:v1".parse().unwrap();
        assert_eq!(r, Reference::Tag(TagRef::new("hello", "v1").unwrap()));
        let r: TagRef = "team/hello".parse().unwrap();
        assert_eq!(r.to_string(), "team/hello:latest");
    }

    #[test]
    fn parses_digests() {
        let d = Digest::of(b"m");
        assert_eq!(
            d.to_string().parse::<Reference>().unwrap(),
            Reference::Digest(d)
        );
        assert!("sha256:1234".parse::<Reference>().is_err());
    }

    #[test]
    fn rejects_names_that_could_escape_their_prefix() {
        for bad in [
            "../x:v1", "a//b:v1", "/a:v1", "A:v1", "a:", ":v1", "a:../b", "a:-x", "a b:v1",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} parsed");
        }
    }
}
