//! Per-subscriber tokens for persons: HMAC-SHA256 of the national code under a secret
//! that only the hub holds, never sent: on a single-node hub a random key per subscriber
//! kept in the store (created on first use, key version 0); with a `cluster:` section a key
//! derived with HKDF-SHA256 from the master secret, the key version and the subscriber, so
//! every hub with the same secret gives the same tokens and no key is stored. Two
//! subscribers get different tokens for the same person, and nobody without the secret
//! can brute-force the 10-digit space offline.
//!
//! Online, a subscriber could still ask the hub for the tokens of the whole national-code
//! space (about 10⁹ codes) and then recognise everyone in every broadcast. A per-agency
//! budget on the number of codes tokenized ([`TokenizeBudget`], by default
//! [`TOKENIZE_CODES_PER_DAY`] a day with a burst of [`TOKENIZE_CODES_BURST`]) makes that
//! take years (10⁹ / 10⁶ ≈ 1000 days) while every call is audited.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
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
    /// A key version this hub does not answer (not current, not in the overlap).
    #[error("token key version {asked} is not answered by this hub; it answers {answered:?}")]
    UnknownVersion { asked: u32, answered: Vec<u32> },
}

/// Salt of the HKDF extraction (fixed: the master secret is the only secret input).
const HKDF_SALT: &[u8] = b"tabadol token keys";

/// The key of `agency` at `version` under `secret`: HKDF-SHA256 expanded with the info
/// `tabadol/token-key/v<version>/<agency>`.
pub fn derive_key(
    secret: &crate::ops::cluster::MasterSecret,
    version: u32,
    agency: &str,
) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(HKDF_SALT), secret.expose());
    let mut okm = [0u8; 32];
    hk.expand(
        format!("tabadol/token-key/v{version}/{agency}").as_bytes(),
        &mut okm,
    )
    .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Token keys per subscriber agency.
pub struct Tokens {
    /// The store's random keys (key version 0): single-node mode, or a single node moving
    /// to a master secret during the announced overlap (`previous_keys: [{version: 0}]`).
    store: Option<sled::Tree>,
    /// The master secrets of the derived versions (cluster mode).
    ring: Option<crate::ops::cluster::TokenKeyring>,
    cache: RwLock<HashMap<(u32, String), [u8; 32]>>,
}

impl Tokens {
    /// Random keys kept in the store (single-node mode, key version 0).
    pub fn open(db: &sled::Db) -> Result<Self, TokenError> {
        Ok(Self {
            store: Some(db.open_tree(TREE_KEYS)?),
            ring: None,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Keys derived from the master secrets of `keyring` (cluster mode); nothing stored.
    pub fn derived(keyring: crate::ops::cluster::TokenKeyring) -> Self {
        Self {
            store: None,
            ring: Some(keyring),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Derived keys, and during the overlap of a move from the store's random keys also
    /// version 0 from `db` (a single node's existing tokens).
    pub fn derived_with_store(
        keyring: crate::ops::cluster::TokenKeyring,
        db: &sled::Db,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            store: Some(db.open_tree(TREE_KEYS)?),
            ring: Some(keyring),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The key version of events and of Tokenize calls that ask for none (0: the store's
    /// random keys).
    pub fn current_version(&self) -> u32 {
        self.ring.as_ref().map_or(0, |k| k.current)
    }

    /// Every key version answered.
    pub fn versions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.store.iter().map(|_| 0).collect();
        if let Some(k) = &self.ring {
            v.extend(k.secrets.keys().copied());
        }
        v
    }

    fn key(&self, version: u32, agency: &str) -> Result<[u8; 32], TokenError> {
        if let Some(k) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(version, agency.to_owned()))
        {
            return Ok(*k);
        }
        let derived = self.ring.as_ref().and_then(|r| r.secrets.get(&version));
        let keys = match (&self.store, derived) {
            (_, Some(secret)) => {
                let key = derive_key(secret, version, agency);
                self.cache
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((version, agency.to_owned()), key);
                return Ok(key);
            }
            (Some(keys), None) if version == 0 => keys,
            _ => {
                return Err(TokenError::UnknownVersion {
                    asked: version,
                    answered: self.versions(),
                })
            }
        };
        let fresh: [u8; 32] = rand::random();
        // First writer wins, so concurrent first uses agree on one key.
        let stored = match keys.compare_and_swap(agency, None as Option<&[u8]>, Some(&fresh[..]))? {
            Ok(()) => {
                keys.flush()?;
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
            .insert((0, agency.to_owned()), stored);
        Ok(stored)
    }

    /// The token of `national_code` for `agency` (64 hex characters) at the current key
    /// version.
    pub fn token(&self, agency: &str, national_code: &str) -> Result<String, TokenError> {
        self.token_at(self.current_version(), agency, national_code)
    }

    /// The token of `national_code` for `agency` at key `version` (current or in the
    /// announced overlap).
    pub fn token_at(
        &self,
        version: u32,
        agency: &str,
        national_code: &str,
    ) -> Result<String, TokenError> {
        let key = self.key(version, agency)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key size");
        mac.update(national_code.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }
}

/// Default number of national codes one subscriber agency may tokenize per day.
pub const TOKENIZE_CODES_PER_DAY: u32 = 1_000_000;
/// Default burst: how many codes an agency with an unused budget may tokenize at once
/// (one day's budget, e.g. for its first synchronisation); afterwards the budget refills
/// evenly (one code every 86.4 ms by default).
pub const TOKENIZE_CODES_BURST: u32 = 1_000_000;
/// The period of [`TOKENIZE_CODES_PER_DAY`].
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A budget of national codes tokenized per agency: `codes` per `period`, at most `burst`
/// at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeQuota {
    pub codes: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl Default for TokenizeQuota {
    /// [`TOKENIZE_CODES_PER_DAY`] per day, burst [`TOKENIZE_CODES_BURST`].
    fn default() -> Self {
        Self {
            codes: NonZeroU32::new(TOKENIZE_CODES_PER_DAY).expect("non-zero"),
            period: DAY,
            burst: NonZeroU32::new(TOKENIZE_CODES_BURST).expect("non-zero"),
        }
    }
}

impl fmt::Display for TokenizeQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.period.as_secs() {
            86_400 => "day".to_owned(),
            3_600 => "hour".to_owned(),
            60 => "minute".to_owned(),
            _ => format!("{} s", self.period.as_secs_f64()),
        };
        write!(
            f,
            "{} national codes per {per} (burst {})",
            self.codes, self.burst
        )
    }
}

/// A Tokenize call that the agency's budget cannot cover (nothing was counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub agency: String,
    pub quota: TokenizeQuota,
    /// National codes the refused call asked for.
    pub requested: u32,
    /// When the budget covers the call again; `None` when the call is larger than the
    /// burst and never fits (split it).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tokenize quota of {} exhausted: {}; this call asks for {} codes; ",
            self.agency, self.quota, self.requested
        )?;
        match self.retry_after {
            Some(d) => write!(f, "retry after {} s", d.as_secs_f64().ceil() as u64),
            None => write!(f, "send at most {} codes per call", self.quota.burst),
        }
    }
}

/// Per-agency budgets of national codes tokenized (a `governor` limiter keyed by agency,
/// counting codes, not calls).
pub struct TokenizeBudget {
    quota: TokenizeQuota,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl TokenizeBudget {
    pub fn new(quota: TokenizeQuota) -> Self {
        let every = (quota.period / quota.codes.get()).max(Duration::from_nanos(1));
        let q = Quota::with_period(every)
            .expect("a non-zero replenish interval")
            .allow_burst(quota.burst);
        Self {
            quota,
            limiter: RateLimiter::keyed(q),
        }
    }

    /// Takes `codes` national codes from `agency`'s budget, or refuses the whole call
    /// (taking nothing) when the budget does not cover it.
    pub fn take(&self, agency: &str, codes: usize) -> Result<(), QuotaExceeded> {
        let requested = u32::try_from(codes).unwrap_or(u32::MAX);
        let Some(n) = NonZeroU32::new(requested) else {
            return Ok(());
        };
        let exceeded = |retry_after| QuotaExceeded {
            agency: agency.to_owned(),
            quota: self.quota,
            requested,
            retry_after,
        };
        match self.limiter.check_key_n(&agency.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(exceeded(Some(not_until.wait_time_from(
                governor::clock::Clock::now(&governor::clock::DefaultClock::default()),
            )))),
            Err(_) => Err(exceeded(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(codes: u32, burst: u32) -> TokenizeBudget {
        TokenizeBudget::new(TokenizeQuota {
            codes: NonZeroU32::new(codes).unwrap(),
            period: Duration::from_secs(3600),
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    /// The budget counts national codes, not calls: many small calls exhaust it like one
    /// big one; a refused call takes nothing; each agency has its own budget.
    #[test]
    fn budget_counts_codes_per_agency() {
        let b = small(10, 10);
        assert_eq!(b.take("cbi", 4), Ok(()));
        assert_eq!(b.take("cbi", 4), Ok(()));
        let err = b.take("cbi", 3).expect_err("8 + 3 > 10");
        assert_eq!((err.agency.as_str(), err.requested), ("cbi", 3));
        // One code refills every 360 s; 2 are left, so the call of 3 fits in one refill.
        let wait = err.retry_after.expect("fits later");
        assert!(
            wait > Duration::from_secs(350) && wait <= Duration::from_secs(360),
            "{wait:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("10 national codes per hour (burst 10)") && msg.contains("retry after"),
            "{msg}"
        );
        // The refused call took nothing: the 2 codes left are still there.
        assert_eq!(b.take("cbi", 2), Ok(()));
        assert!(b.take("cbi", 1).is_err());
        // Another agency is unaffected.
        assert_eq!(b.take("ihio", 10), Ok(()));
        assert_eq!(b.take("cbi", 0), Ok(()), "nothing asked, nothing counted");
    }

    /// A call larger than the burst never fits and says so instead of naming a time.
    #[test]
    fn call_larger_than_the_burst_is_refused() {
        let b = small(10, 5);
        let err = b.take("cbi", 6).expect_err("6 > burst 5");
        assert_eq!(err.retry_after, None);
        assert!(
            err.to_string().contains("at most 5 codes per call"),
            "{err}"
        );
        assert_eq!(b.take("cbi", 5), Ok(()), "the refused call took nothing");
    }

    /// The defaults: 1,000,000 codes per day, burst 1,000,000.
    #[test]
    fn default_quota() {
        let q = TokenizeQuota::default();
        assert_eq!(
            q.to_string(),
            "1000000 national codes per day (burst 1000000)"
        );
        let b = TokenizeBudget::new(q);
        assert_eq!(b.take("cbi", 1000), Ok(()));
    }

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

    fn ring(current: u32, secrets: &[(u32, u8)]) -> crate::ops::cluster::TokenKeyring {
        let dir = tempfile::tempdir().unwrap();
        let mut out = std::collections::BTreeMap::new();
        for (v, b) in secrets {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(format!("s{v}"));
            std::fs::write(&p, hex::encode([*b; 32])).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            out.insert(
                *v,
                crate::ops::cluster::read_master_secret("f", &p).unwrap(),
            );
        }
        crate::ops::cluster::TokenKeyring {
            current,
            secrets: out,
        }
    }

    /// Derived keys: the same secret gives the same tokens (two hubs), another secret or
    /// another version different ones, agencies differ, and an unlisted version is refused.
    #[test]
    fn derived_tokens_depend_on_secret_version_and_agency_only() {
        let a = Tokens::derived(ring(2, &[(1, 7), (2, 7)]));
        let b = Tokens::derived(ring(2, &[(1, 7), (2, 7)]));
        let other = Tokens::derived(ring(2, &[(2, 8)]));
        let nc = "0012345679";
        let t = a.token("cbi", nc).unwrap();
        assert_eq!(t, b.token("cbi", nc).unwrap());
        assert_eq!(t, a.token_at(2, "cbi", nc).unwrap());
        assert_ne!(t, a.token_at(1, "cbi", nc).unwrap(), "versions differ");
        assert_ne!(t, other.token("cbi", nc).unwrap(), "secrets differ");
        assert_ne!(t, a.token("ihio", nc).unwrap(), "agencies differ");
        assert_eq!(a.current_version(), 2);
        match other.token_at(1, "cbi", nc) {
            Err(TokenError::UnknownVersion { asked: 1, answered }) => assert_eq!(answered, [2]),
            r => panic!("{r:?}"),
        }
        // HMAC-SHA256 under the HKDF-SHA256 key, checked against the crates directly.
        let key = {
            let hk = hkdf::Hkdf::<Sha256>::new(Some(b"tabadol token keys"), &[7u8; 32]);
            let mut k = [0u8; 32];
            hk.expand(b"tabadol/token-key/v2/cbi", &mut k).unwrap();
            k
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(nc.as_bytes());
        assert_eq!(t, hex::encode(mac.finalize().into_bytes()));
    }
}
