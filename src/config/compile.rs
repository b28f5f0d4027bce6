//! Raw model → immutable [`Snapshot`]. Every value is interpreted and checked
//! here (with its file position when it is wrong) and every cross-reference
//! resolved, so the request path never parses or looks anything up by string
//! that could have been decided once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::context::Ctx;
use super::diagnostic::Report;
use super::raw;
use super::resolve::Env;
use super::snapshot::*;
use super::{fleet_compile, listener_compile, security_compile};

/// Compiles a raw configuration. `source` is the file it came from. When
/// it is refused (the findings are in `report`), the files it names, as
/// far as they were reached.
pub fn compile(
    file: &raw::File,
    report: &mut Report,
    env: &Env,
    source: &Path,
    generation: u64,
) -> Result<Snapshot, Vec<PathBuf>> {
    let base = source
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut ctx = Ctx {
        report,
        env,
        base,
        files: vec![source.to_path_buf()],
        contents: Default::default(),
    };
    let listen = listener_compile::listen(&mut ctx, file);
    let tls = listener_compile::tls(&mut ctx, file, &listen);
    let admin = listener_compile::admin(&mut ctx, &file.admin, &listen);
    let trusted_proxies = listener_compile::trusted_proxies(&mut ctx, &file.trusted_proxies);
    let forwarding = listener_compile::forwarding(&mut ctx, &file.forwarding);
    let limits = listener_compile::limits(&mut ctx, &file.limits);
    let timeouts = listener_compile::timeouts(&mut ctx, &file.timeouts);
    let auth_servers =
        security_compile::auth_servers(&mut ctx, &file.security_settings.auth_servers);
    let aliases = security_compile::aliases(&mut ctx, &file.security_settings.aliases);
    // Aliases written but refused (an unset variable, say): their own
    // errors tell why, and an API naming one is not told again.
    let refused_aliases: BTreeSet<&str> = file
        .security_settings
        .aliases
        .iter()
        .filter_map(|alias| alias.value.name.as_ref())
        .map(|name| name.value.as_str())
        .filter(|name| !aliases.contains_key(*name))
        .collect();
    let authorization_server = file
        .authorization_server
        .as_ref()
        .and_then(|raw| super::authz_compile::compile(&mut ctx, raw, &file.ports));
    let scope_mappings =
        security_compile::scope_mappings(&mut ctx, &file.scope_mappings, &auth_servers, &file.apis);
    let applications = super::application_compile::compile(
        &mut ctx,
        &file.applications,
        &super::application_compile::ApiNames::of(&file.apis),
        &auth_servers,
    );
    let apis = super::api_compile::compile_all(
        &mut ctx,
        &file.apis,
        &super::api_compile::Refs {
            auth_servers: &auth_servers,
            aliases: &aliases,
            refused_aliases: &refused_aliases,
            scope_mappings: &scope_mappings,
            authorization_server: authorization_server.is_some(),
            applications: &applications,
            forwarding,
            ports: Transport {
                http: listen.http.is_some(),
                https: listen.https.is_some(),
            },
            // As written: a bundle that cannot be read has its own error.
            client_ca: file
                .tls
                .as_ref()
                .is_some_and(|tls| tls.value.client_ca.is_some()),
            trusted_proxies: &trusted_proxies,
            client_cert_required: file.tls.as_ref().is_some_and(|tls| {
                tls.value.client_ca.is_some()
                    && tls
                        .value
                        .client_auth
                        .as_ref()
                        .is_some_and(|auth| auth.value.0 == "required")
            }),
        },
    );
    super::audience::check(
        &mut ctx,
        &file.security_settings.auth_servers,
        &auth_servers,
        &apis,
    );
    if let Some(own) = &authorization_server {
        super::own_tokens::check(&mut ctx, &file.security_settings.auth_servers, own);
    }
    let own_issuer = authorization_server.as_ref().map(|a| a.issuer.as_str());
    super::plain_http::check(&mut ctx, file, own_issuer);
    let central = file
        .central
        .as_ref()
        .map(|c| fleet_compile::central(&mut ctx, c, file));
    let api_gateway = file
        .api_gateway
        .as_ref()
        .and_then(|g| fleet_compile::api_gateway(&mut ctx, g, fleet_compile::FILE_KEYS));
    let throttling = super::throttle_compile::throttling(&mut ctx, file.throttling.as_ref());
    let files = std::mem::take(&mut ctx.files);
    let contents = std::mem::take(&mut ctx.contents);
    if ctx.report.has_errors() {
        return Err(files);
    }
    let auth_server_series = auth_servers
        .keys()
        .map(|id| crate::metrics::Showing::auth_server(id))
        .collect();
    Ok(Snapshot {
        generation,
        loaded_at: SystemTime::now(),
        source: source.to_path_buf(),
        source_text: Arc::from(""),
        files,
        contents,
        listen,
        tls,
        admin,
        trusted_proxies,
        forwarding,
        limits,
        timeouts,
        auth_servers,
        auth_server_series,
        aliases,
        scope_mappings,
        apis,
        authorization_server: authorization_server.map(Arc::new),
        central,
        api_gateway,
        throttling,
        applications: Arc::new(applications),
    })
}
