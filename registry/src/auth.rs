//! Bearer tokens. A token file holds one token per line (`#` starts a
//! comment). Tokens are kept only as SHA-256 hashes and compared in constant
//! time against every configured token, so neither timing nor memory dumps
//! reveal them; no code path logs a token.

use std::path::Path;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The tokens that may push (and pull, when pulls are protected).
#[derive(Clone, Default)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Reads a token file.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let tokens = Self::parse(&text);
        if tokens.0.is_empty() {
            return Err(std::io::Error::other("the token file holds no token"));
        }
        Ok(tokens)
    }

    /// Parses token-file text.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(|token| Sha256::digest(token.as_bytes()).into())
                .collect(),
        )
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` is one of the configured tokens. Every configured
    /// token is compared, whatever matches first.
    pub fn accepts(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut matched = subtle::Choice::from(0);
        for known in &self.0 {
            matched |= known.ct_eq(&presented);
        }
        matched.into()
    }
}

/// The outcome of checking a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    /// No `Authorization` header.
    Missing,
    /// A header that is not a valid bearer token.
    Invalid,
    /// A configured token.
    Valid,
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
    match token {
        Some(token) if tokens.accepts(token.trim()) => Credentials::Valid,
        _ => Credentials::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = Tokens::parse("# ci\nalpha\n\n  beta  \n");
        assert!(tokens.accepts("alpha"));
        assert!(tokens.accepts("beta"));
        assert!(!tokens.accepts("# ci"));
        assert!(!tokens.accepts("alph"));
        assert!(!tokens.accepts(""));
        let mut headers = HeaderMap::new();
        assert_eq!(check(&headers, &tokens), Credentials::Missing);
        headers.insert(AUTHORIZATION, "Bearer gamma".parse().unwrap());
        assert_eq!(check(&headers, &tokens), Credentials::Invalid);
        headers.insert(AUTHORIZATION, "Basic YWxwaGE=".parse().unwrap());
        assert_eq!(check(&headers, &tokens), Credentials::Invalid);
        headers.insert(AUTHORIZATION, "Bearer alpha".parse().unwrap());
        assert_eq!(check(&headers, &tokens), Credentials::Valid);
        assert!(!format!("{tokens:?}").contains("alpha"));
    }
}
