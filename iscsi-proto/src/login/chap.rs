//! CHAP (RFC 1994) as used by iSCSI (RFC 7143 section 12.1.3): MD5 only (`CHAP_A=5`).
//!
//! The response to a challenge is `MD5(identifier || secret || challenge)`. Secrets are held
//! in [`ChapSecret`], which refuses secrets shorter than [`MIN_SECRET_LEN`] bytes at
//! construction. Responses are compared in constant time ([`ct_eq`]).

use core::fmt;

use md5::{Digest, Md5};

/// Shortest CHAP secret accepted (RFC 7143 section 12.1.3: at least 96 bits).
pub const MIN_SECRET_LEN: usize = 12;
/// Longest CHAP secret stored.
pub const MAX_SECRET_LEN: usize = 255;
/// Longest user name (`CHAP_N`) stored.
pub const MAX_USER_LEN: usize = 255;
/// Length of the challenge the target sends.
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge accepted from the initiator (mutual CHAP), in bytes.
pub const MAX_PEER_CHALLENGE_LEN: usize = 1024;
/// The CHAP algorithm number for MD5.
pub const CHAP_ALGORITHM_MD5: u8 = 5;

/// Errors building CHAP credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapError {
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    SecretTooShort,
    /// The secret is longer than [`MAX_SECRET_LEN`].
    SecretTooLong,
    /// The user name is empty or longer than [`MAX_USER_LEN`].
    BadUserName,
}

impl fmt::Display for ChapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChapError::SecretTooShort => "CHAP secret shorter than 12 bytes",
            ChapError::SecretTooLong => "CHAP secret longer than 255 bytes",
            ChapError::BadUserName => "CHAP user name empty or longer than 255 bytes",
        })
    }
}

impl core::error::Error for ChapError {}

/// A CHAP secret of 12..=255 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecret {
    bytes: heapless::Vec<u8, MAX_SECRET_LEN>,
}

impl fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChapSecret(..)")
    }
}

impl ChapSecret {
    /// Build a secret; shorter than 12 bytes is [`ChapError::SecretTooShort`].
    pub fn new(secret: &[u8]) -> Result<Self, ChapError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(ChapError::SecretTooShort);
        }
        let bytes = heapless::Vec::from_slice(secret).map_err(|_| ChapError::SecretTooLong)?;
        Ok(ChapSecret { bytes })
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A user name and its secret (the incoming account the initiator authenticates with, or the
/// outgoing account the target answers a mutual challenge with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    user: heapless::String<MAX_USER_LEN>,
    secret: ChapSecret,
}

impl ChapCredentials {
    /// Build credentials; the secret must satisfy [`ChapSecret::new`].
    pub fn new(user: &str, secret: &[u8]) -> Result<Self, ChapError> {
        if user.is_empty() {
            return Err(ChapError::BadUserName);
        }
        let mut u = heapless::String::new();
        u.push_str(user).map_err(|_| ChapError::BadUserName)?;
        Ok(ChapCredentials {
            user: u,
            secret: ChapSecret::new(secret)?,
        })
    }

    /// The user name (`CHAP_N`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The secret.
    pub fn secret(&self) -> &ChapSecret {
        &self.secret
    }
}

/// The fresh randomness for one login: the CHAP identifier and challenge the target sends.
/// The caller draws them from a CSPRNG for every login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChapChallenge {
    /// `CHAP_I`.
    pub id: u8,
    /// `CHAP_C`.
    pub challenge: [u8; CHALLENGE_LEN],
}

/// `MD5(id || secret || challenge)`.
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Constant-time equality of two byte strings (the length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_chap_vector() {
        // python3: hashlib.md5(bytes([7]) + b"a-secret-of-12+" + bytes(range(16))).hexdigest()
        let ch: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            chap_response(7, b"a-secret-of-12+", &ch),
            [
                0x1b, 0x71, 0xcb, 0x3f, 0xa9, 0x79, 0x97, 0xd8, 0x83, 0x83, 0x8d, 0x01, 0x59, 0x83,
                0xed, 0x4e
            ]
        );
    }

    #[test]
    fn secrets() {
        assert_eq!(
            ChapSecret::new(b"short").unwrap_err(),
            ChapError::SecretTooShort
        );
        assert_eq!(
            ChapSecret::new(b"12345678901").unwrap_err(),
            ChapError::SecretTooShort
        );
        assert!(ChapSecret::new(b"123456789012").is_ok());
        assert_eq!(
            ChapSecret::new(&[b'a'; 256]).unwrap_err(),
            ChapError::SecretTooLong
        );
        assert_eq!(
            ChapCredentials::new("", b"123456789012").unwrap_err(),
            ChapError::BadUserName
        );
        let c = ChapCredentials::new("alice", b"123456789012").unwrap();
        assert_eq!(c.user(), "alice");
        assert_eq!(c.secret().as_bytes(), b"123456789012");
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
