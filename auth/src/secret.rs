//! Secrets and their digests: random tokens and keys, argon2id password hashes, SHA-256.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// 256 random bits, base64url: API keys and session tokens.
pub(crate) fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness from the OS: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// An argon2id PHC string of `password`, which must be long enough.
pub(crate) fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::InvalidArgument(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| Error::Internal(format!("no randomness from the OS: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::Internal(format!("cannot encode a salt: {e}")))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| Error::Internal(format!("cannot hash the password: {e}")))?
        .to_string())
}

/// Whether `password` matches the PHC string `hash` of user `user` (a hash that cannot be read
/// is a damaged file, not a wrong password).
pub(crate) fn verify_password(user: &str, hash: &str, password: &str) -> Result<bool> {
    let hash = PasswordHash::new(hash)
        .map_err(|e| Error::Corrupt(format!("password hash of {user:?}: {e}")))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

/// SHA-256 of `data`, lowercase hex.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `user` and `password` of Basic credentials; the base64 may lack its padding (ADBC's Go driver
/// omits it, pyarrow keeps it).
pub fn decode_basic(encoded: &str) -> Result<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim().trim_end_matches('='))
        .map_err(|_| Error::Unauthenticated("Basic credentials are not valid base64".into()))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Error::Unauthenticated("Basic credentials are not UTF-8".into()))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| Error::Unauthenticated("Basic credentials must be user:password".into()))?;
    Ok((user.to_string(), password.to_string()))
}
