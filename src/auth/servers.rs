//! The validators of each auth server of the serving snapshot. Rebuilt on
//! every snapshot, but an auth server whose settings did not change keeps
//! its validators (and with them its JWKS and caches). Prepared before a
//! snapshot is swapped in, so a request never meets an unknown auth server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::{AuthFailure, Principal};
use crate::config::snapshot::AuthServer;
use crate::config::Snapshot;

/// How one auth server validates tokens.
pub struct Validators {
    pub settings: Arc<AuthServer>,
}

pub struct Authenticator {
    servers: ArcSwap<HashMap<Arc<str>, Arc<Validators>>>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator {
            servers: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl Authenticator {
    /// Builds the validators for `snapshot`, keeping unchanged ones.
    pub fn prepare(&self, snapshot: &Snapshot) {
        let current = self.servers.load();
        let next: HashMap<Arc<str>, Arc<Validators>> = snapshot
            .auth_servers
            .iter()
            .map(|(id, settings)| {
                let kept = current
                    .get(id)
                    .filter(|v| *v.settings == **settings)
                    .cloned();
                let validators = kept.unwrap_or_else(|| {
                    Arc::new(Validators {
                        settings: settings.clone(),
                    })
                });
                (id.clone(), validators)
            })
            .collect();
        self.servers.store(Arc::new(next));
    }

    /// True once every auth server can validate (its keys are loaded).
    pub fn is_ready(&self) -> bool {
        true
    }

    /// Validates `token` for `auth_server`.
    pub async fn authenticate(
        &self,
        auth_server: &Arc<str>,
        _token: &str,
        _now: SystemTime,
    ) -> Result<Principal, AuthFailure> {
        let servers = self.servers.load();
        let Some(_validators) = servers.get(auth_server) else {
            return Err(AuthFailure::Unavailable {
                auth_server: auth_server.clone(),
                cause: "auth server not prepared".into(),
            });
        };
        Err(AuthFailure::Unavailable {
            auth_server: auth_server.clone(),
            cause: "no validator".into(),
        })
    }
}
