//! The key this server signs JWT access tokens with, and the public keys it
//! publishes (RFC 7517 JWKS).
//!
//! On first start a key is generated and written, owner-readable only
//! (0600), without ever replacing an existing file. Key type: RSA 2048 /
//! RS256, because RFC 9068 §2.1 makes RS256 the one algorithm every
//! conforming resource server supports; an operator may supply a P-256
//! (ES256) or P-384 (ES384) PKCS#8 key instead. `kid` is the RFC 7638
//! thumbprint. Every public key that has signed is recorded in the store,
//! and the JWKS keeps the previous ones, so tokens signed before a key
//! change (file replaced, then restart or reload) still validate.
//! The private key never leaves this module and is never logged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::store::{KnownKey, StoreError, TokenStore};
use crate::config::contents::Content;
use crate::config::signing_key::{self, ParsedKey};

/// Public keys kept in the JWKS besides the current one, however old the
/// tokens they signed (a key file replaced by hand, a rotation whose
/// key does not sign yet).
const PREVIOUS_KEYS_PUBLISHED: usize = 2;

/// The most keys the JWKS holds, the current one included, however many
/// were rotated within a token's lifetime.
const MOST_KEYS_PUBLISHED: usize = 16;

/// What a reading of the keys does when the store cannot tell the
/// previous ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Previous {
    /// At start: the current key alone is published until a re-read.
    UnknownIsNone,
    /// At a re-read: an error, so that the keys in use stay.
    Required,
}

/// How often replicas re-read signing keys kept in the store.
pub const KEY_REFRESH: Duration = Duration::from_secs(10);

/// How long a key rotated into the store is only published before it
/// signs: every replica re-reads the keys within [`KEY_REFRESH`] (plus the
/// time a re-read takes), so by then each one validates what the new key
/// signs, whichever replica issued it.
pub const KEY_PUBLISHED_BEFORE_SIGNING: Duration = Duration::from_secs(KEY_REFRESH.as_secs() + 5);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key {path} is not {}", signing_key::KINDS)]
    Unsupported { path: PathBuf },
    #[error("signing key generation failed")]
    Generate,
    #[error("signing key: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("known signing keys: {0}")]
    Store(#[from] StoreError),
    #[error("the token store's current signing key is not a usable private key")]
    BadStoredKey,
    #[error("a recorded public key is not a valid JWK: {0}")]
    BadRecordedKey(#[from] serde_json::Error),
}

/// The private key in use.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    /// A stand-in while the keys are pending: published nowhere, so
    /// nothing it signed would validate.
    placeholder: bool,
}

/// Nothing is signed while the keys live in a store not reached yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing keys are pending until the token store is reached")]
pub struct KeysPending;

impl SigningKey {
    /// The key to sign with; refused while it is a placeholder.
    pub fn encoding_key(&self) -> Result<&EncodingKey, KeysPending> {
        if self.placeholder {
            return Err(KeysPending);
        }
        Ok(&self.encoding)
    }

    /// A stand-in for keys pending in a store not reached yet.
    pub(super) fn placeholder() -> Result<SigningKey, KeyError> {
        let key = parse(generate_rsa_pem()?.as_bytes()).ok_or(KeyError::Generate)?;
        Ok(SigningKey {
            placeholder: true,
            ..key
        })
    }
}

/// A public key this server signed with, ready to verify.
struct Verifier {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
}

/// Current signing key plus every public key still published.
pub struct SigningKeys {
    path: PathBuf,
    current: SigningKey,
    published: Vec<Jwk>,
    verifiers: Vec<Verifier>,
    /// The keys live in a store not reached yet: `current` is a throwaway
    /// placeholder that signs nothing (the store may be reached before
    /// the keys are re-read) and nothing is published.
    pending: bool,
    /// What the key file held when `current` was read from it; `None`
    /// when the store keeps the keys.
    file: Option<Content>,
    /// How long a token signed by a key that no longer signs may still be
    /// presented: the longest `token_lifetime` of the clients.
    tokens_live: Duration,
}

impl SigningKeys {
    /// Loads the key at `path` (generating it when missing), records its
    /// public half in `store` and collects the previous ones.
    ///
    /// A store that keeps signing keys (PostgreSQL) is used instead of the
    /// file: its newest key older than [`KEY_PUBLISHED_BEFORE_SIGNING`]
    /// signs (the oldest one while none is that old), newer ones are only
    /// published, and the first replica to find none generates it under
    /// the store's lock. While such a store cannot be reached the keys are
    /// [pending](Self::is_pending).
    ///
    /// A previous key stays published while a token it signed may still be
    /// valid — until `tokens_live` after the key that followed it took
    /// over (published [`KEY_PUBLISHED_BEFORE_SIGNING`]) — and the
    /// [`PREVIOUS_KEYS_PUBLISHED`] newest ones whatever their age; at most
    /// [`MOST_KEYS_PUBLISHED`] in all.
    pub fn open(
        path: &Path,
        store: &dyn TokenStore,
        now: u64,
        tokens_live: Duration,
    ) -> Result<SigningKeys, KeyError> {
        SigningKeys::read(path, store, now, tokens_live, Previous::UnknownIsNone)
    }

    fn read(
        path: &Path,
        store: &dyn TokenStore,
        now: u64,
        tokens_live: Duration,
        previous: Previous,
    ) -> Result<SigningKeys, KeyError> {
        let mut file = None;
        let current = if store.keeps_signing_keys() {
            match stored_key(store) {
                Ok(key) => key,
                Err(KeyError::Store(StoreError::Unavailable(reason))) => {
                    tracing::warn!(%reason, "signing keys pending until the token store is reached");
                    return Ok(SigningKeys {
                        path: path.to_owned(),
                        current: SigningKey::placeholder()?,
                        published: Vec::new(),
                        verifiers: Vec::new(),
                        pending: true,
                        file: None,
                        tokens_live,
                    });
                }
                Err(error) => return Err(error),
            }
        } else {
            let (key, pem) = load_or_generate(path)?;
            file = Some(Content::of(path, Some(&pem)));
            key
        };
        let recorded = store
            .record_key(&KnownKey {
                kid: current.kid.clone(),
                jwk: serde_json::to_string(&current.jwk)?,
                first_seen: now,
            })
            .and_then(|()| store.known_keys());
        // A database store not reached yet: the current key signs and is
        // published; the previous ones join at the next reload.
        let known = match recorded {
            Err(StoreError::Unavailable(reason)) if previous == Previous::UnknownIsNone => {
                tracing::warn!(%reason, "previous signing keys unknown until the token store is reached");
                Vec::new()
            }
            other => other?,
        };
        let mut published = vec![current.jwk.clone()];
        // Newest first: the key before each in the list is the one that
        // followed it.
        let took_over_within = |followed_at: u64| {
            let signs_from = followed_at.saturating_add(KEY_PUBLISHED_BEFORE_SIGNING.as_secs());
            signs_from.saturating_add(tokens_live.as_secs()) > now
        };
        let mut followed_at: Option<u64> = None;
        for known in known {
            let followed = followed_at.replace(known.first_seen);
            if known.kid == current.kid {
                continue;
            }
            let recent = published.len() <= PREVIOUS_KEYS_PUBLISHED;
            let tokens_may_live = followed.is_some_and(took_over_within);
            if published.len() >= MOST_KEYS_PUBLISHED || !(recent || tokens_may_live) {
                break;
            }
            published.push(serde_json::from_str(&known.jwk)?);
        }
        let verifiers = published
            .iter()
            .filter_map(|jwk| {
                let alg = jwk.common.key_algorithm?.to_string().parse().ok()?;
                Some(Verifier {
                    kid: jwk.common.key_id.clone()?,
                    alg,
                    decoding: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect();
        Ok(SigningKeys {
            path: path.to_owned(),
            current,
            published,
            verifiers,
            pending: false,
            file,
            tokens_live,
        })
    }

    /// What the key file held when the current key was read from it
    /// (`None` when the store keeps the keys): the configuration's
    /// reading of the file tells whether it has changed since.
    pub fn file(&self) -> Option<&Content> {
        self.file.as_ref()
    }

    /// The keys live in a store not reached yet (nothing is published).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// `microgateway rotate-signing-key`: a new RS256 key joins the store;
    /// every replica publishes it at its next re-read and signs with it
    /// once it is [`KEY_PUBLISHED_BEFORE_SIGNING`] old; the previous ones
    /// stay published while tokens they signed may be valid
    /// ([`SigningKeys::open`]). Returns its `kid`.
    pub fn rotate(store: &dyn TokenStore, now: u64) -> Result<String, KeyError> {
        let pem = generate_rsa_pem()?;
        let key = parse(pem.as_bytes()).ok_or(KeyError::Generate)?;
        store.add_signing_key(&key.kid, &pem, false)?;
        store.record_key(&KnownKey {
            kid: key.kid.clone(),
            jwk: serde_json::to_string(&key.jwk)?,
            first_seen: now,
        })?;
        Ok(key.kid)
    }

    /// Re-reads the key file; a changed key becomes current and the old one
    /// stays published.
    ///
    /// A store that cannot tell the previous keys now is an error: the
    /// keys in use stay (published whole) until a re-read succeeds.
    pub fn reload(&self, store: &dyn TokenStore, now: u64) -> Result<SigningKeys, KeyError> {
        SigningKeys::read(&self.path, store, now, self.tokens_live, Previous::Required)
    }

    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// The key with this `kid` and its algorithm, to verify this server's
    /// own tokens.
    pub fn verifier(&self, kid: &str) -> Option<(&DecodingKey, Algorithm)> {
        self.verifiers
            .iter()
            .find(|v| v.kid == kid)
            .map(|v| (&v.decoding, v.alg))
    }

    /// RFC 7517 §5 JWK Set of the public keys, current first.
    pub fn jwks_json(&self) -> Vec<u8> {
        serde_json::json!({ "keys": self.published })
            .to_string()
            .into_bytes()
    }
}

/// The store's signing key (see [`SigningKeys::open`]), generated (once,
/// whichever replica is first) when it has none.
fn stored_key(store: &dyn TokenStore) -> Result<SigningKey, KeyError> {
    let pem = match store.current_signing_key(KEY_PUBLISHED_BEFORE_SIGNING)? {
        Some(pem) => pem,
        None => {
            let pem = generate_rsa_pem()?;
            let key = parse(pem.as_bytes()).ok_or(KeyError::Generate)?;
            let current = store.add_signing_key(&key.kid, &pem, true)?;
            if current == pem {
                tracing::info!(kid = %key.kid, "generated the first RS256 signing key in the token store");
            }
            current
        }
    };
    parse(pem.as_bytes()).ok_or(KeyError::BadStoredKey)
}

/// The key in the file at `path` (generated when missing) and the bytes
/// it was read from.
fn load_or_generate(path: &Path) -> Result<(SigningKey, Vec<u8>), KeyError> {
    let pem = match generate_missing(path)? {
        Some(generated) => generated,
        None => {
            warn_if_readable_by_others(path);
            read_key_file(path)?
        }
    };
    let key = parse(&pem).ok_or_else(|| KeyError::Unsupported {
        path: path.to_owned(),
    })?;
    Ok((key, pem))
}

/// Generates the key file at `path` when there is none, and returns what
/// it holds then (`None`: it was there already). Never replaces a file.
pub fn generate_missing(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    let pem = generate_rsa_pem()?;
    match write_new(path, pem.as_bytes()) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a new RS256 signing key");
            Ok(Some(pem.into_bytes()))
        }
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key_file(path).map(Some)
        }
        Err(error) => Err(io(error)),
    }
}

/// The key file's bytes, within the bound the configuration reads it with.
fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    crate::config::load::read_bounded(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The key in `pem`, judged as `check` judges the `signing_key` file.
fn parse(pem: &[u8]) -> Option<SigningKey> {
    let ParsedKey {
        kid,
        alg,
        encoding,
        jwk,
    } = signing_key::parse(pem)?;
    Some(SigningKey {
        kid,
        alg,
        encoding,
        jwk,
        placeholder: false,
    })
}

fn generate_rsa_pem() -> Result<String, KeyError> {
    use aws_lc_rs::encoding::AsDer;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| KeyError::Generate)?;
    let der = pair.as_der().map_err(|_| KeyError::Generate)?;
    Ok(pem_encode("PRIVATE KEY", der.as_ref()))
}

/// RFC 7468 §2: base64 in lines of 64 characters between labels.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Writes through a private temporary file and links it into place, so
/// the key is never visible half-written or with wider permissions, and an
/// existing file is never replaced.
fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "signing key is readable by group or others; chmod 600 it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz_server::store::SqliteStore;

    const HOUR: Duration = Duration::from_secs(3600);

    /// The kids `keys` publishes, current first.
    fn published(keys: &SigningKeys) -> Vec<String> {
        let jwks: serde_json::Value = serde_json::from_slice(&keys.jwks_json()).expect("json");
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    #[test]
    fn previous_keys_stay_published_while_tokens_they_signed_may_be_valid() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("db")).expect("store");
        // Four keys before the file's, each followed by the next 1,000 s
        // later; the file's key comes at 4,000.
        let mut older = Vec::new();
        for seen in [0u64, 1000, 2000, 3000] {
            let key = parse(generate_rsa_pem().expect("pem").as_bytes()).expect("key");
            store
                .record_key(&KnownKey {
                    kid: key.kid.clone(),
                    jwk: serde_json::to_string(&key.jwk).expect("jwk"),
                    first_seen: seen,
                })
                .expect("record");
            older.push(key.kid);
        }
        let path = dir.path().join("k.pem");
        let keys = SigningKeys::open(&path, &store, 4000, Duration::from_secs(2500)).expect("open");
        let current = keys.current().kid.clone();
        // Followed at 2,000 and signing until 2,015, the key of 1,000 has
        // tokens until 4,515; the key of 0, until 3,515: gone.
        assert_eq!(
            published(&keys),
            [
                current.clone(),
                older[3].clone(),
                older[2].clone(),
                older[1].clone()
            ]
        );
        assert!(keys.verifier(&older[1]).is_some());
        assert!(keys.verifier(&older[0]).is_none());
        // Tokens of a minute: the two newest previous keys, whatever their age.
        let keys = SigningKeys::open(&path, &store, 4000, Duration::from_secs(60)).expect("open");
        assert_eq!(
            published(&keys),
            [current, older[3].clone(), older[2].clone()]
        );
    }

    #[test]
    fn a_placeholder_key_signs_nothing() {
        let placeholder = SigningKey::placeholder().expect("placeholder");
        assert_eq!(placeholder.encoding_key().err(), Some(KeysPending));
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("db")).expect("store");
        let keys =
            SigningKeys::open(&dir.path().join("k.pem"), &store, 10, HOUR).expect("generate");
        assert!(keys.current().encoding_key().is_ok());
    }

    #[test]
    fn generates_once_with_owner_only_mode_and_keeps_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("db")).expect("store");
        let path = dir.path().join("keys/signing.pem");
        let first = SigningKeys::open(&path, &store, 10, HOUR).expect("generate");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = SigningKeys::open(&path, &store, 20, HOUR).expect("load");
        assert_eq!(first.current().kid, again.current().kid);
        assert_eq!(again.current().alg, Algorithm::RS256);
    }

    #[test]
    fn a_replaced_key_keeps_the_old_one_published() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("db")).expect("store");
        let path = dir.path().join("signing.pem");
        let old = SigningKeys::open(&path, &store, 10, HOUR).expect("generate");
        let old_kid = old.current().kid.clone();
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .expect("ec key");
        let der = pair.to_pkcs8v1().expect("pkcs8");
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, pem_encode("PRIVATE KEY", der.as_ref())).expect("write");
        let new = old.reload(&store, 20).expect("reload");
        assert_eq!(new.current().alg, Algorithm::ES256);
        assert_ne!(new.current().kid, old_kid);
        assert!(new.verifier(&old_kid).is_some());
        assert_eq!(published(&new), [new.current().kid.clone(), old_kid]);
        let jwks: serde_json::Value = serde_json::from_slice(&new.jwks_json()).expect("json");
        assert_eq!(jwks["keys"][0]["use"], "sig");
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
    }
}
