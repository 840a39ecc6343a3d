//! Random tokens, their hashes, and argon2id password hashing.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// A new random token: `prefix` followed by 48 hex characters (192 bits).
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// SHA-256 of a token, hex-encoded: what the database stores.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Argon2id with OWASP's recommended parameters (19 MiB, 2 iterations, 1 lane).
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password. CPU-heavy: call through [`hash_password_blocking`] in async code.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// True when `password` matches the stored PHC string.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A fixed hash to verify against when the account does not exist, so the
/// response takes as long as for a real account.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("sanhak-dummy-password").unwrap_or_default())
}

pub async fn hash_password_blocking(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password)).await?
}

/// Verifies off the async runtime; with `stored = None` it verifies against
/// the dummy hash and returns false, taking the same time.
pub async fn verify_password_blocking(
    password: String,
    stored: Option<String>,
) -> anyhow::Result<bool> {
    Ok(tokio::task::spawn_blocking(move || match stored {
        Some(hash) => verify_password(&password, &hash),
        None => {
            let _ = verify_password(&password, dummy_hash());
            false
        }
    })
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token("shk_");
        let b = new_token("shk_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 48);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
