//! Per-subscriber tokens for persons: HMAC-SHA256 of the national code under a secret
//! that only the hub holds (kept in the store, created on first use, never sent). Two
//! subscribers get different tokens for the same person, and nobody without the secret
//! can brute-force the 10-digit space offline.

use std::collections::HashMap;
use std::sync::RwLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const TREE_KEYS: &str = "tokens.keys";

/// Errors of the token store.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token key store: {0}")]
    Store(#[from] sled::Error),
    #[error("stored token key of {0} is malformed")]
    BadKey(String),
}

/// Token keys per subscriber agency.
pub struct Tokens {
    keys: sled::Tree,
    cache: RwLock<HashMap<String, [u8; 32]>>,
}

impl Tokens {
    pub fn open(db: &sled::Db) -> Result<Self, TokenError> {
        Ok(Self {
            keys: db.open_tree(TREE_KEYS)?,
            cache: RwLock::new(HashMap::new()),
        })
    }

    fn key(&self, agency: &str) -> Result<[u8; 32], TokenError> {
        if let Some(k) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agency)
        {
            return Ok(*k);
        }
        let fresh: [u8; 32] = rand::random();
        // First writer wins, so concurrent first uses agree on one key.
        let stored =
            match self
                .keys
                .compare_and_swap(agency, None as Option<&[u8]>, Some(&fresh[..]))?
            {
                Ok(()) => {
                    self.keys.flush()?;
                    fresh
                }
                Err(current) => current
                    .current
                    .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok())
                    .ok_or_else(|| TokenError::BadKey(agency.to_owned()))?,
            };
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agency.to_owned(), stored);
        Ok(stored)
    }

    /// The token of `national_code` for `agency` (64 hex characters).
    pub fn token(&self, agency: &str, national_code: &str) -> Result<String, TokenError> {
        let key = self.key(agency)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key size");
        mac.update(national_code.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens are stable per agency (also across reopen) and differ between agencies.
    #[test]
    fn per_agency_stable_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (a1, b1) = {
            let db = sled::open(dir.path()).unwrap();
            let t = Tokens::open(&db).unwrap();
            (
                t.token("cbi", "0012345679").unwrap(),
                t.token("ihio", "0012345679").unwrap(),
            )
        };
        assert_ne!(a1, b1);
        assert_eq!(a1.len(), 64);
        let db = sled::open(dir.path()).unwrap();
        let t = Tokens::open(&db).unwrap();
        assert_eq!(t.token("cbi", "0012345679").unwrap(), a1);
        assert_ne!(t.token("cbi", "0012345680").unwrap(), a1);
    }
}
