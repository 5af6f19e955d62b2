//! MMDS V2 session tokens: what `PUT /latest/api/token` hands out and what a `GET` must show.
//!
//! A token is stateless, so that any number of them costs no memory: it carries its own expiry
//! (milliseconds since the authority's epoch, a monotonic [`Instant`]) and an HMAC-SHA256 of
//! that expiry under a random key that never leaves the process. A token is valid while its
//! MAC checks out under the current key and its expiry is still ahead. [`TokenAuthority::rekey`]
//! draws a new key, which invalidates every token handed out before (Firecracker builds a new
//! token authority when a VM is restored from a snapshot, with the same effect).
//!
//! Firecracker's rules kept here: the time to live is 1 to 21600 seconds (6 hours), and a
//! token longer than 70 characters is refused before any work is done on it.

use std::fmt;
use std::time::Instant;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The shortest time to live a token may be given, in seconds (Firecracker's).
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
/// The longest time to live a token may be given, in seconds: 6 hours (Firecracker's).
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;
/// The path a guest `PUT`s to for a token.
pub const TOKEN_PATH: &str = "/latest/api/token";

/// Tokens longer than this (in characters) are refused unread, as Firecracker does.
const TOKEN_LENGTH_LIMIT: usize = 70;
/// HMAC-SHA256's block size: a key of exactly this length is used as is.
const KEY_LEN: usize = 64;
const EXPIRY_LEN: usize = 8;
const MAC_LEN: usize = 32;
const TOKEN_LEN: usize = EXPIRY_LEN + MAC_LEN;
/// Domain separation: the MAC covers this prefix and the expiry, so that the key signs nothing
/// else by accident.
const MAC_CONTEXT: &[u8] = b"petrel-mmds-token-v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The time to live is outside 1..=21600 seconds (Firecracker's message, which guests see).
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between \
         {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    /// The operating system gave no random bytes for the key.
    #[error("cannot draw a random key for MMDS tokens: {0}")]
    KeyGeneration(String),
}

/// Hands out and checks V2 session tokens; see the [module documentation](self).
pub struct TokenAuthority {
    key: [u8; KEY_LEN],
    epoch: Instant,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TokenAuthority")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn random_key() -> Result<[u8; KEY_LEN], TokenError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| TokenError::KeyGeneration(e.to_string()))?;
    Ok(key)
}

impl TokenAuthority {
    /// An authority with a fresh random key; expiries count from now.
    pub fn new() -> Result<Self, TokenError> {
        Ok(TokenAuthority {
            key: random_key()?,
            epoch: Instant::now(),
        })
    }

    /// Draws a new key: every token handed out before becomes invalid.
    pub fn rekey(&mut self) -> Result<(), TokenError> {
        self.key = random_key()?;
        Ok(())
    }

    fn millis_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }

    fn mac(&self, expiry: &[u8; EXPIRY_LEN]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new(&self.key.into());
        mac.update(MAC_CONTEXT);
        mac.update(expiry);
        mac
    }

    /// A token that is valid for `ttl_seconds` from `now`; refused outside 1..=21600 seconds.
    pub fn issue(&self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let expiry = self
            .millis_at(now)
            .saturating_add(u64::from(ttl_seconds) * 1000)
            .to_le_bytes();
        let mut token = [0u8; TOKEN_LEN];
        token[..EXPIRY_LEN].copy_from_slice(&expiry);
        token[EXPIRY_LEN..].copy_from_slice(&self.mac(&expiry).finalize().into_bytes());
        Ok(base64::engine::general_purpose::STANDARD.encode(token))
    }

    /// Whether `token` was issued under the current key and has not expired at `now`.
    /// Never panics; any string that is not such a token is simply invalid.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        if token.len() > TOKEN_LENGTH_LIMIT {
            return false;
        }
        // Room for a few bytes more than a token, so that a longer input is reported as such
        // rather than overflowing the buffer.
        let mut raw = [0u8; TOKEN_LENGTH_LIMIT];
        let Ok(len) = base64::engine::general_purpose::STANDARD.decode_slice(token, &mut raw)
        else {
            return false;
        };
        if len != TOKEN_LEN {
            return false;
        }
        let mut expiry = [0u8; EXPIRY_LEN];
        expiry.copy_from_slice(&raw[..EXPIRY_LEN]);
        // Constant-time comparison of the MAC.
        if self
            .mac(&expiry)
            .verify_slice(&raw[EXPIRY_LEN..TOKEN_LEN])
            .is_err()
        {
            return false;
        }
        u64::from_le_bytes(expiry) > self.millis_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_token_is_valid_until_its_ttl_runs_out() {
        let authority = TokenAuthority::new().unwrap();
        let t0 = Instant::now();
        let token = authority.issue(2, t0).unwrap();
        assert!(token.len() <= TOKEN_LENGTH_LIMIT);
        assert!(authority.is_valid(&token, t0));
        assert!(authority.is_valid(&token, t0 + Duration::from_millis(1999)));
        assert!(!authority.is_valid(&token, t0 + Duration::from_secs(2)));
        assert!(!authority.is_valid(&token, t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn ttl_bounds_are_firecrackers() {
        let authority = TokenAuthority::new().unwrap();
        let now = Instant::now();
        assert!(authority.issue(MIN_TOKEN_TTL_SECONDS, now).is_ok());
        assert!(authority.issue(MAX_TOKEN_TTL_SECONDS, now).is_ok());
        for ttl in [0, MAX_TOKEN_TTL_SECONDS + 1, u32::MAX] {
            assert_eq!(authority.issue(ttl, now), Err(TokenError::InvalidTtl(ttl)));
        }
        assert_eq!(
            TokenError::InvalidTtl(0).to_string(),
            "Invalid time to live value provided for token: 0. Please provide a value between 1 \
             and 21600."
        );
    }

    #[test]
    fn a_new_key_or_another_authority_invalidates_tokens() {
        let mut authority = TokenAuthority::new().unwrap();
        let now = Instant::now();
        let token = authority.issue(60, now).unwrap();
        let other = TokenAuthority::new().unwrap();
        assert!(!other.is_valid(&token, now));
        authority.rekey().unwrap();
        assert!(!authority.is_valid(&token, now));
        let fresh = authority.issue(60, now).unwrap();
        assert!(authority.is_valid(&fresh, now));
    }

    #[test]
    fn forged_and_malformed_tokens_are_invalid() {
        let authority = TokenAuthority::new().unwrap();
        let now = Instant::now();
        let token = authority.issue(60, now).unwrap();
        let engine = base64::engine::general_purpose::STANDARD;
        let mut raw = engine.decode(&token).unwrap();
        // A later expiry under the old MAC.
        raw[0] ^= 0x80;
        assert!(!authority.is_valid(&engine.encode(&raw), now));
        raw[0] ^= 0x80;
        // A flipped MAC bit.
        raw[TOKEN_LEN - 1] ^= 1;
        assert!(!authority.is_valid(&engine.encode(&raw), now));
        // Truncated, extended, not base64, empty, huge.
        assert!(!authority.is_valid(&engine.encode(&raw[..TOKEN_LEN - 1]), now));
        let mut longer = engine.decode(&token).unwrap();
        longer.extend_from_slice(&[0; 8]);
        assert!(!authority.is_valid(&engine.encode(&longer), now));
        for bad in ["", "!!!!", "é", &token[..token.len() - 1], &"A".repeat(70)] {
            assert!(!authority.is_valid(bad, now), "{bad:?}");
        }
        assert!(!authority.is_valid(&"A".repeat(1 << 16), now));
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let authority = TokenAuthority::new().unwrap();
        let shown = format!("{authority:?}");
        assert!(shown.starts_with("TokenAuthority"));
        assert!(!shown.contains("key"));
    }
}
