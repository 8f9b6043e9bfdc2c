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

    /// Where this tag lives in a store, or in a runner's manifest cache:
    /// `tags/<name>/_tag/<tag>`, a relative `/`-separated key.
    pub fn storage_key(&self) -> String {
        format!("{TAGS_PREFIX}{}{TAG_SEPARATOR}{}", self.name, self.tag)
    }

    /// The tag stored under `key`, if `key` is one [`TagRef::storage_key`]
    /// writes.
    pub fn from_storage_key(key: &str) -> Option<Self> {
        let (name, tag) = key.strip_prefix(TAGS_PREFIX)?.rsplit_once(TAG_SEPARATOR)?;
        TagRef::new(name, tag).ok()
    }
}

/// The folder of tags in a store's key space.
pub const TAGS_PREFIX: &str = "tags/";

/// Between a name and its tag in a key. Name segments start with a letter
/// or digit, so `_tag` can never be one: `a:b` and `a/b:v1` cannot collide.
const TAG_SEPARATOR: &str = "/_tag/";

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

    #[test]
    fn storage_keys_round_trip_and_never_collide() {
        let plain: TagRef = "a:b".parse().unwrap();
        let nested: TagRef = "a/b:v1".parse().unwrap();
        assert_eq!(plain.storage_key(), "tags/a/_tag/b");
        assert_ne!(plain.storage_key(), nested.storage_key());
        for tag in [plain, nested] {
            assert_eq!(TagRef::from_storage_key(&tag.storage_key()), Some(tag));
        }
        assert_eq!(TagRef::from_storage_key("tags/a/b"), None);
        assert_eq!(TagRef::from_storage_key("blobs/a/_tag/b"), None);
    }
}
