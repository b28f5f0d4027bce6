//! The one reload pipeline, whatever asked for it (file watcher, SIGHUP,
//! REST, central poller): compile the configuration file (with the
//! central's document merged over it) → note a start met by then
//! ([`StartLatch`]) → prepare the runtime (authorization server, token
//! validators, endpoint health) → swap. Reloads run one at a time
//! (`Live::one_reload_at_a_time`), so generations are numbered in order;
//! on any error the serving snapshot stays and the findings are recorded.
//!
//! Who reads the configuration file: the file watcher compiles the content
//! it saw settle; SIGHUP and REST ask for the file as it is on disk (an
//! operator asking for a reload asks for it to be read); a download from
//! the central is merged with the text the serving snapshot was compiled
//! from (`Snapshot::source_text`), never with the file read again, so a
//! refused or half-written edit on disk cannot block it or ride in with it.
//! A local reload that applies lets the central link ask again for a
//! download refused against the file before.
//! Whoever asked, the snapshot swapped in notes what each file held as
//! its compilation read it (`Snapshot::contents`): the file watcher
//! compares the files on disk with that, so a file written after a reload
//! read it is a change, whichever source the reload came from.
//!
//! A reload blocks: it reads files, compiles, may open SQLite and generate
//! keys, and takes a std mutex. Async callers run it on the blocking pool
//! ([`Reloader::reload_on_blocking_pool`]), never on a runtime worker, so a
//! reload in progress never delays a request. It never touches listeners.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::ready::StartLatch;
use super::swap::{Live, Source};
use crate::auth::jwks::KeySet;
use crate::auth::servers::Authenticator;
use crate::authz_server::AuthorizationServer;
use crate::central::{self, Document, Link};
use crate::config::contents::{Content, Contents};
use crate::config::{Env, Invalid, Snapshot};
use crate::proxy::balance::Health;
use crate::server::tls::LiveTls;
use crate::throttle::Throttler;

/// What a reload reads and what it changes: the handle the lower layers
/// (admin, the central poller, the file watcher) get instead of the
/// gateway's state.
pub struct Reloader {
    pub live: Arc<Live>,
    pub config_path: PathBuf,
    pub env: Env,
    /// The export served as a central; the document downloaded as a downstream.
    pub central: Arc<Link>,
    /// This instance's authorization server, when `authorization_server:` is on.
    pub authz: Arc<ArcSwapOption<AuthorizationServer>>,
    /// The token validators of the data path.
    pub auth: Arc<Authenticator>,
    /// The throttle stores of the data path (their counters outlive reloads).
    pub throttle: Arc<Throttler>,
    /// The health of the endpoints of balanced upstreams.
    pub health: Arc<Health>,
    /// Listening, and whether the start conditions have once been met.
    pub start: Arc<StartLatch>,
    /// The client-certificate setting of the HTTPS listener, when there is
    /// one: told of each snapshot before it serves.
    pub tls: Option<Arc<LiveTls>>,
}

impl Reloader {
    /// Compiles the configuration again and swaps it in, or keeps the
    /// serving snapshot and records the findings. Blocking.
    pub fn reload(&self, source: Source) -> Result<u64, Invalid> {
        self.reload_from(source, None)
    }

    /// Like [`Reloader::reload`], for configuration text already read from
    /// `config_path` (the file watcher compiles exactly the content it saw
    /// settle, not what a writer may be halfway through replacing).
    pub fn reload_text(&self, source: Source, text: &str) -> Result<u64, Invalid> {
        self.reload_from(source, Some(text))
    }

    /// [`Reloader::reload`] on the blocking pool: the runtime worker that
    /// asks goes on serving requests meanwhile.
    pub async fn reload_on_blocking_pool(self: &Arc<Self>, source: Source) -> Result<u64, Invalid> {
        let reloader = Arc::clone(self);
        tokio::task::spawn_blocking(move || reloader.reload(source))
            .await
            .unwrap_or_else(|_| {
                Err(Invalid::single(
                    &self.config_path,
                    "the reload stopped before it finished",
                    "",
                ))
            })
    }

    fn reload_from(&self, source: Source, text: Option<&str>) -> Result<u64, Invalid> {
        let _serialised = self.live.one_reload_at_a_time();
        let document = self.central.document();
        let reloaded = self.reload_locked(source, text, document.as_deref());
        if reloaded.is_ok() {
            let settings = self.live.snapshot().api_gateway.clone();
            self.central.local_reload_applied(settings.as_ref());
        }
        reloaded
    }

    /// Compiles `text` (the file's content; the file read now when `None`),
    /// with `document` (downloaded from a central gateway) merged over it,
    /// and swaps the result in. The caller holds
    /// `live.one_reload_at_a_time()`, so reloads from every source neither
    /// interleave nor share a generation.
    pub fn reload_locked(
        &self,
        source: Source,
        text: Option<&str>,
        document: Option<&Document>,
    ) -> Result<u64, Invalid> {
        let next = self.live.generation() + 1;
        // TLS material is judged by the same function as `check` and
        // start: a certificate or key that cannot be used is a refused
        // reload, not a handshake failure later.
        let compile = || {
            central::load(&self.config_path, text, &self.env, next, document).and_then(|loaded| {
                crate::server::tls::check(&loaded.snapshot, std::time::SystemTime::now())?;
                Ok(loaded)
            })
        };
        // A fault of the compiler on some input is that input refused, not
        // the thread that asked gone (the watcher's, for good): nothing is
        // published before `install`, so the serving snapshot is whole.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(compile))
            .unwrap_or_else(|_| {
                Err(Invalid::single(
                    &self.config_path,
                    "the configuration could not be compiled (an internal fault, logged above)",
                    "",
                ))
            });
        match loaded {
            Ok(loaded) => match self.install(source, loaded.snapshot) {
                Ok(generation) => Ok(generation),
                Err(problem) => {
                    let invalid = Invalid::single(&self.config_path, problem, "");
                    tracing::error!(
                        source = source.label(),
                        "configuration refused; the last good one keeps serving:\n{invalid}"
                    );
                    self.live.refuse(source, invalid.to_string());
                    Err(invalid)
                }
            },
            Err(invalid) => {
                tracing::error!(
                    source = source.label(),
                    "configuration refused; the last good one keeps serving:\n{invalid}"
                );
                self.live.refuse(source, invalid.to_string());
                Err(invalid)
            }
        }
    }

    /// Prepares the runtime for `snapshot` (throttle store, authorization
    /// server, then validators), then swaps it in. Nothing is swapped on
    /// error, and nothing the serving snapshot uses has changed: each step
    /// that can fail comes before the first that publishes anything (the
    /// throttle store is made here, connected from each listener thread,
    /// and put in use by `bind`). The HTTPS
    /// listener learns of a changed client-certificate setting just before
    /// the swap, so that, once the generation shows, no request is served
    /// on it over a connection verified under the setting it replaced. The
    /// caller holds `live.one_reload_at_a_time()`.
    pub fn install(&self, source: Source, mut snapshot: Snapshot) -> Result<u64, String> {
        // The last moment the runtime is all the serving snapshot's: a
        // start met by now is noted before the validators of `snapshot`
        // (and its JWKS not fetched yet) replace it, probed or not.
        self.start.note_locked();
        let generation = snapshot.generation;
        generate_signing_key(&mut snapshot)?;
        let store = self.throttle.prepare(&snapshot)?;
        self.throttle.connect_listeners(&store);
        self.prepare_authz(&snapshot)?;
        self.auth.prepare(&snapshot);
        self.health.prepare(&snapshot);
        self.throttle.bind(&snapshot, store);
        if let Some(tls) = &self.tls {
            tls.follow(&snapshot);
        }
        self.live.swap(source, snapshot);
        tracing::info!(generation, source = source.label(), "configuration applied");
        Ok(generation)
    }

    /// Opens the authorization server when its settings changed (it keeps
    /// its store and keys otherwise), taking over the failed-attempt
    /// counts and sessions of the one it replaces, and publishes its keys
    /// in-process. It publishes only once nothing in it can fail, and is
    /// the last step of [`Reloader::install`] that can.
    pub fn prepare_authz(&self, snapshot: &Snapshot) -> Result<(), String> {
        let Some(settings) = &snapshot.authorization_server else {
            self.authz.store(None);
            return Ok(());
        };
        let current = self.authz.load_full();
        let mut reread = None;
        let server = match current {
            Some(server) if server.settings() == &**settings => {
                // The same settings, but the key file the snapshot read
                // is not the one the server signs with: read it again.
                if server.key_file().is_some_and(|signing| {
                    snapshot.contents.covers(&signing.path)
                        && !snapshot.contents.holds(&Contents::from(signing))
                }) {
                    reread = Some(server.reread_keys().map_err(|e| e.to_string())?);
                }
                server
            }
            previous => {
                let settings = (**settings).clone();
                let server = match previous {
                    // Its locks and sessions carry over.
                    Some(previous) => previous.reopen(settings),
                    None => AuthorizationServer::open(settings),
                }
                .map_err(|e| e.to_string())?;
                // The cleanup and key refresh tasks end when the server is
                // dropped.
                let _ = server.spawn_cleanup();
                let local_keys = Arc::clone(self.auth.local_keys());
                let _ = server.spawn_key_refresh(move |jwks| match KeySet::from_json(jwks) {
                    Ok(keys) => local_keys.store(Arc::new(keys)),
                    Err(error) => tracing::warn!(%error, "signing keys from the token store"),
                });
                Arc::new(server)
            }
        };
        // Keys kept in a store not reached yet are published by the key
        // refresh once it is.
        if !server.keys_pending() {
            let jwks = reread
                .as_ref()
                .map_or_else(|| server.published_keys(), |keys| keys.jwks_json());
            let keys = KeySet::from_json(&jwks).map_err(|e| format!("signing keys: {e}"))?;
            if let Some(reread) = reread {
                server.use_keys(reread);
            }
            self.auth.local_keys().store(Arc::new(keys));
        }
        self.authz.store(Some(server));
        Ok(())
    }
}

/// Generates the authorization server's signing key file when it is
/// missing (as opening the server would), before `snapshot` serves, and
/// notes in the snapshot what the file holds then: the file is followed
/// from then on like every file the snapshot read, and its generation is
/// no change to reload for. Keys kept in the token store have no file.
pub fn generate_signing_key(snapshot: &mut Snapshot) -> Result<(), String> {
    let Some(settings) = &snapshot.authorization_server else {
        return Ok(());
    };
    if settings.postgres.is_some() {
        return Ok(());
    }
    let path = settings.signing_key_path.clone();
    let generated =
        crate::authz_server::keys::generate_missing(&path).map_err(|e| e.to_string())?;
    if let Some(pem) = generated {
        snapshot.contents.renote(Content::of(&path, Some(&pem)));
    }
    Ok(())
}
