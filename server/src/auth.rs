//! Password hashing with argon2 (per-user random salt, PHC strings), run off the async
//! threads. Unknown users are checked against a dummy hash so that both failures take as long.
//!
//! Each hash needs 19 MiB; at most one hash per core runs at a time (others wait their turn), so
//! a burst of logins cannot make the process hold gigabytes of freed hashing memory.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::error::ServiceError;

/// Hashing slots: one per core.
fn hashing_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// Runs `work` on the blocking pool when a hashing slot is free.
async fn hashing<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|e| ServiceError::internal("hashing slots", &e))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ServiceError::internal("hashing task", &e))
}

/// Hashes a new password.
pub async fn hash_password(password: String) -> Result<String, ServiceError> {
    hashing(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| ServiceError::internal("hashing a password", &e))
    })
    .await?
}

/// Whether `password` matches `stored` (an argon2 PHC string); `None` checks against a dummy
/// hash and returns false, taking the same time.
pub async fn verify_password(
    stored: Option<String>,
    password: String,
) -> Result<bool, ServiceError> {
    let known = stored.is_some();
    let stored: Arc<str> = match stored {
        Some(s) => s.into(),
        None => dummy_hash(),
    };
    hashing(move || {
        let ok = PasswordHash::new(&stored)
            .map(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
}

/// A new resume token: 256 random bits, hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What the database stores of a token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn dummy_hash() -> Arc<str> {
    static DUMMY: OnceLock<Arc<str>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            Argon2::default()
                .hash_password(b"clusterchat dummy password")
                .map(|h| h.to_string())
                .unwrap_or_default()
                .into()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_password() {
        let hash = hash_password("s3cret".into()).await.unwrap();
        assert!(hash.starts_with("$argon2"));
        assert!(
            verify_password(Some(hash.clone()), "s3cret".into())
                .await
                .unwrap()
        );
        assert!(!verify_password(Some(hash), "S3cret".into()).await.unwrap());
        assert!(
            !verify_password(None, "clusterchat dummy password".into())
                .await
                .unwrap()
        );
    }
}
