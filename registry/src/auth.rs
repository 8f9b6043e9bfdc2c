//! Bearer tokens and what each may touch.
//!
//! A token file holds one token per line (`#` starts a comment):
//!
//! ```text
//! # TOKEN              SCOPE...
//! 3f9c...team-a        team-a-*
//! 8e21...billing       billing billing-worker
//! 77ab...edge-hosts    pull:*
//! ```
//!
//! A scope is a function name, or a prefix ending in `*` (`*` alone is
//! every name). A scope grants push and pull; `pull:` before it grants pull
//! only, which is what edge hosts need. A token with no scope may push and
//! pull every name, as before scopes existed; the docs recommend scoped
//! ones.
//!
//! Tokens are kept only as SHA-256 hashes and compared in constant time
//! against every configured token, so neither timing nor memory dumps
//! reveal them. A token is named in logs and releases by its fingerprint
//! ([`Caller::identity`]), never by the secret.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// One scope of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope {
    /// An exact name, or (when `prefix`) the start of the names.
    pattern: String,
    prefix: bool,
    push: bool,
}

impl Scope {
    fn parse(text: &str) -> Result<Self, String> {
        let (push, pattern) = match text.strip_prefix("pull:") {
            Some(rest) => (false, rest),
            None => (true, text),
        };
        let (pattern, prefix) = match pattern.strip_suffix('*') {
            Some(start) => (start, true),
            None => (pattern, false),
        };
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b);
        if (!prefix && pattern.is_empty()) || !pattern.bytes().all(allowed) {
            return Err(format!(
                "bad scope {text:?}: expected a name, a prefix ending in `*`, or either after \
                 `pull:`"
            ));
        }
        Ok(Self {
            pattern: pattern.to_string(),
            prefix,
            push,
        })
    }

    fn covers(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.pattern)
        } else {
            name == self.pattern
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = if self.push { "" } else { "pull:" };
        let star = if self.prefix { "*" } else { "" };
        write!(f, "{access}{}{star}", self.pattern)
    }
}

/// Who made a request, once their token is checked.
#[derive(Clone, Debug)]
pub struct Caller {
    identity: Arc<str>,
    scopes: Arc<[Scope]>,
}

impl Caller {
    /// The token's fingerprint, `token:<12 hex digits>`: safe to log.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this caller may move tags of `name`.
    pub fn may_push(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.push && s.covers(name))
    }

    /// Whether this caller may read tags of `name`.
    pub fn may_pull(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.covers(name))
    }

    /// The scopes, as written in the token file.
    pub fn scopes(&self) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(ToString::to_string).collect();
        scopes.join(" ")
    }
}

struct Token {
    hash: [u8; 32],
    caller: Caller,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens(Arc<[Token]>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("reading the token file: {0}")]
    Io(#[from] std::io::Error),
    /// A line that is not `TOKEN SCOPE...`.
    #[error("token file line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// Why.
        reason: String,
    },
    /// No token at all.
    #[error("the token file holds no token")]
    Empty,
}

fn fingerprint(hash: &[u8; 32]) -> String {
    format!("token:{}", &hex::encode(hash)[..12])
}

impl Tokens {
    /// Reads a token file.
    pub fn read(path: &Path) -> Result<Self, TokensError> {
        let tokens = Self::parse(&std::fs::read_to_string(path)?)?;
        if tokens.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(tokens)
    }

    /// Parses token-file text.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            let Some(secret) = words.next().filter(|w| !w.starts_with('#')) else {
                continue;
            };
            let mut scopes = Vec::new();
            for word in words.take_while(|w| !w.starts_with('#')) {
                scopes.push(Scope::parse(word).map_err(|reason| TokensError::Line {
                    line: index + 1,
                    reason,
                })?);
            }
            if scopes.is_empty() {
                scopes.push(Scope::parse("*").expect("valid"));
            }
            let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            tokens.push(Token {
                hash,
                caller: Caller {
                    identity: fingerprint(&hash).into(),
                    scopes: scopes.into(),
                },
            });
        }
        Ok(Self(tokens.into()))
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller `token` belongs to, if it is configured. Every configured
    /// token is compared, whatever matches first.
    fn caller(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for known in self.0.iter() {
            if bool::from(known.hash.ct_eq(&presented)) {
                found = Some(known.caller.clone());
            }
        }
        found
    }
}

/// The outcome of checking a request's credentials.
#[derive(Debug)]
pub enum Credentials {
    /// No `Authorization` header.
    Missing,
    /// A header that is not a valid bearer token.
    Invalid,
    /// A configured token.
    Valid(Caller),
}

/// Checks the request's `Authorization: Bearer` header against `tokens`.
pub fn check(headers: &HeaderMap, tokens: &Tokens) -> Credentials {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Credentials::Missing;
    };
    let token = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    });
    match token.and_then(|token| tokens.caller(token.trim())) {
        Some(caller) => Credentials::Valid(caller),
        None => Credentials::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller_of(tokens: &Tokens, token: &str) -> Option<Caller> {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        match check(&headers, tokens) {
            Credentials::Valid(caller) => Some(caller),
            _ => None,
        }
    }

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = Tokens::parse("# ci\nalpha\n\n  beta  # a comment\n").unwrap();
        assert!(caller_of(&tokens, "alpha").is_some());
        assert!(caller_of(&tokens, "beta").is_some());
        assert!(caller_of(&tokens, "#").is_none());
        assert!(caller_of(&tokens, "alph").is_none());
        let mut headers = HeaderMap::new();
        assert!(matches!(check(&headers, &tokens), Credentials::Missing));
        headers.insert(AUTHORIZATION, "Basic YWxwaGE=".parse().unwrap());
        assert!(matches!(check(&headers, &tokens), Credentials::Invalid));
        assert!(!format!("{tokens:?}").contains("alpha"));
    }

    #[test]
    fn scopes_bound_what_a_token_may_push_and_pull() {
        let tokens = Tokens::parse(
            "legacy\nteam-a team-a-* shared\nedge pull:*\nmixed billing pull:team-a-*\n",
        )
        .unwrap();
        let legacy = caller_of(&tokens, "legacy").unwrap();
        assert!(legacy.may_push("anything") && legacy.may_pull("anything"));

        let team_a = caller_of(&tokens, "team-a").unwrap();
        assert!(team_a.may_push("team-a-api") && team_a.may_push("shared"));
        assert!(!team_a.may_push("billing") && !team_a.may_pull("billing"));
        assert!(
            !team_a.may_push("shared-2"),
            "an exact scope is not a prefix"
        );
        assert_eq!(team_a.scopes(), "team-a-* shared");

        let edge = caller_of(&tokens, "edge").unwrap();
        assert!(edge.may_pull("billing") && !edge.may_push("billing"));

        let mixed = caller_of(&tokens, "mixed").unwrap();
        assert!(mixed.may_push("billing") && mixed.may_pull("team-a-x"));
        assert!(!mixed.may_push("team-a-x"));

        // Identities are stable fingerprints that never show the secret.
        assert_eq!(
            team_a.identity(),
            caller_of(&tokens, "team-a").unwrap().identity()
        );
        assert_ne!(team_a.identity(), edge.identity());
        assert!(team_a.identity().starts_with("token:") && !team_a.identity().contains("team"));
    }

    #[test]
    fn malformed_scopes_name_their_line() {
        let err = Tokens::parse("ok\nbad Team-A*\n").err().unwrap();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(Tokens::parse("bad pull:").is_err());
        assert!(Tokens::parse("").unwrap().is_empty());
    }
}
