//! Resource owner password credentials grant (RFC 6749 §4.3).
//!
//! Passwords are checked against the configured Argon2 PHC strings (the
//! string carries its own parameters). An unknown user is checked against
//! a dummy hash, so a response's timing does not tell which usernames
//! exist. Failures count towards the per-user and per-source limits of
//! `attempts` (the source: a confidential client, or a public client as
//! called from one address); a locked user or source gets 429 with
//! `Retry-After`.

use std::collections::HashMap;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use super::attempts::Source;
use super::{granted_scopes, issue_new, may_refresh, GrantContext, TokenResponse};
use crate::authz_server::error::OAuthError;
use crate::authz_server::form::Form;
use crate::authz_server::settings::{Client, GrantType, User};
use crate::authz_server::tokens::{self, Issue};
use crate::authz_server::workers::CpuGate;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("user {username}: password_hash is not an Argon2 PHC string")]
    BadHash { username: String },
    #[error("cannot prepare the dummy password hash")]
    Dummy,
}

/// The configured resource owners and their parsed password hashes.
pub struct Users {
    hashes: HashMap<String, PasswordHash>,
    /// Each user's [`Users::credential`].
    credentials: HashMap<String, String>,
    dummy: PasswordHash,
    /// Argon2 runs on at most half the cores, however many jobs (and
    /// servers, across a reload) run.
    gate: &'static CpuGate,
}

impl Users {
    pub fn new(users: &[User]) -> Result<Users, PasswordError> {
        let mut hashes = HashMap::new();
        let mut credentials = HashMap::new();
        for user in users {
            let hash = PasswordHash::new(&user.password_hash)
                .ok()
                .filter(|h| h.algorithm.as_str().starts_with("argon2"))
                .ok_or_else(|| PasswordError::BadHash {
                    username: user.username.clone(),
                })?;
            hashes.insert(user.username.clone(), hash);
            credentials.insert(user.username.clone(), credential(user));
        }
        // Same cost as the users' hashes, so both paths take about as
        // long: the parameters most users' hashes have (of those, the
        // costliest), whatever order the map keeps them in.
        let dummy_params = crate::config::password_hashes::commonest_params(hashes.values());
        let dummy = Argon2::from(dummy_params)
            .hash_password(tokens::random_token().as_bytes())
            .map_err(|_| PasswordError::Dummy)?;
        Ok(Users {
            hashes,
            credentials,
            dummy,
            gate: CpuGate::for_passwords(),
        })
    }

    pub fn exists(&self, username: &str) -> bool {
        self.hashes.contains_key(username)
    }

    /// A fingerprint of `username`'s credential as configured: what a
    /// sign-in is bound to, so that it ends when the password changes or
    /// the user goes. `None` for no such user.
    pub fn credential(&self, username: &str) -> Option<&str> {
        self.credentials.get(username).map(String::as_str)
    }

    /// Constant work whether or not the user exists.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(username) {
            Some(hash) => (hash, true),
            None => (&self.dummy, false),
        };
        let matched = self.gate.run(|| {
            Argon2::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        });
        matched && known
    }
}

/// The SHA-256 (base64url) of the user's name and PHC string: any new
/// password hash (its salt too) changes it, and nothing of the password
/// can be learnt from it without that hash.
fn credential(user: &User) -> String {
    tokens::hash_token(&format!(
        "approval-session\0{}\0{}",
        user.username, user.password_hash
    ))
}

pub fn grant(
    cx: &GrantContext<'_>,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let username = form
        .get("username")
        .ok_or(OAuthError::InvalidRequest("username is required"))?;
    let password = form
        .get("password")
        .ok_or(OAuthError::InvalidRequest("password is required"))?;
    let scopes = granted_scopes(form.get("scope"), &client.scopes)?;
    let matched = cx
        .attempts
        .guarded(
            &Source::of_grant(client, cx.address),
            username,
            cx.now,
            || cx.users.verify(username, password),
        )
        .map_err(|retry_after| OAuthError::TooManyAttempts { retry_after })?;
    if !matched {
        tracing::info!(client_id = %client.client_id, "password grant refused: wrong credentials");
        return Err(OAuthError::InvalidGrant("wrong username or password"));
    }
    let issue = Issue {
        client,
        username: Some(username),
        scopes: &scopes,
        grant_type: GrantType::Password,
        family: None,
    };
    issue_new(cx, issue, may_refresh(client))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use argon2::{Algorithm, Params, Version};

    /// A user whose password is hashed cheaply.
    pub(crate) fn user(username: &str, password: &str) -> User {
        let params = Params::new(8, 1, 1, None).expect("params");
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .expect("hash")
            .to_string();
        User {
            username: username.into(),
            password_hash: hash,
        }
    }

    #[test]
    fn a_credential_changes_with_the_password_hash_and_goes_with_the_user() {
        let alice = user("alice", "wonderland");
        let before = Users::new(&[alice.clone(), user("bob", "builder")]).expect("users");
        let same = Users::new(std::slice::from_ref(&alice)).expect("users");
        let credential = before.credential("alice").expect("alice");
        assert_eq!(same.credential("alice"), Some(credential));
        assert_ne!(before.credential("bob"), Some(credential));
        assert!(!credential.contains("wonderland"));
        assert!(!credential.contains(&alice.password_hash));
        // The same password hashed again has another salt: another credential.
        let rehashed = Users::new(&[user("alice", "wonderland")]).expect("users");
        assert_ne!(rehashed.credential("alice"), Some(credential));
        let changed = Users::new(&[user("alice", "looking-glass")]).expect("users");
        assert_ne!(changed.credential("alice"), Some(credential));
        assert_eq!(changed.credential("bob"), None);
    }
}
