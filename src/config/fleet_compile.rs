//! Compiling the fleet roles: `central:` (who may download this instance's
//! settings) and `api_gateway:` (the central to download from).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::context::Ctx;
use super::diagnostic::Report;
use super::raw::{self, S};
use super::resolve::Env;
use super::security_compile::{url, warn_ignored};
use super::snapshot::*;

pub(super) fn central(ctx: &mut Ctx, central: &S<raw::Central>) -> Central {
    let users = central
        .value
        .users
        .iter()
        .filter_map(|u| {
            let user = ctx.required(&u.value.user, u.referenced, "user")?;
            let user = ctx.basic_user(user.referenced, &user.value, "central.users.user");
            let password = ctx.required(&u.value.password, u.referenced, "password")?;
            let password = ctx.secret(password, "password");
            user.zip(password)
        })
        .collect::<Vec<_>>();
    if users.is_empty() {
        ctx.report.error(
            central.referenced,
            "central: has no users, so no microgateway could download from it",
            "at least one { user, password }",
        );
    }
    Central { users }
}

/// The `api_gateway:` section alone, so a downstream can download its
/// settings before the rest of the file is compiled.
pub fn api_gateway_only(
    file: &raw::File,
    report: &mut Report,
    env: &Env,
    source: &Path,
) -> Option<ApiGateway> {
    let mut ctx = Ctx {
        report,
        env,
        base: source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        files: Vec::new(),
    };
    let entry = file.api_gateway.as_ref()?;
    api_gateway(&mut ctx, entry)
}

pub(super) fn api_gateway(ctx: &mut Ctx, entry: &S<raw::ApiGateway>) -> Option<ApiGateway> {
    let raw = &entry.value;
    if let Some(dir) = &raw.dir {
        warn_ignored(ctx, "dir", dir);
    }
    let download_settings = ctx.boolean(&raw.download_settings, "download_settings", false);
    let download_apis = ctx.boolean(&raw.download_apis, "download_apis", false);
    let poll_interval = ctx.duration(&raw.poll_interval, "poll_interval", Duration::from_secs(30));
    let cache_file = raw
        .cache_file
        .as_ref()
        .map(|c| c.value.0.clone())
        .unwrap_or_else(|| "data/downloaded-settings.yaml".to_owned());
    let cache_file = ctx.path(&cache_file);
    // Without a download the central is never contacted, so a section that
    // only tunes polling (say, from an MCGW_ variable) needs no credentials.
    let downloads = download_settings || download_apis;
    if !downloads && (raw.url.is_none() || raw.user.is_none() || raw.password.is_none()) {
        return None;
    }
    if downloads {
        super::plain_http::api_gateway(ctx, raw);
    }
    let at = entry.referenced;
    let url = ctx
        .required(&raw.url, at, "api_gateway.url")
        .and_then(|u| url(ctx, u, "api_gateway.url"));
    let user = ctx
        .required(&raw.user, at, "api_gateway.user")
        .and_then(|u| ctx.basic_user(u.referenced, &u.value.0, "api_gateway.user"));
    let password = ctx
        .required(&raw.password, at, "api_gateway.password")
        .and_then(|p| ctx.secret(p, "api_gateway.password"));
    Some(ApiGateway {
        url: url?,
        user: user?,
        password: password?,
        download_settings,
        download_apis,
        apis: raw.apis.iter().map(|a| a.value.clone()).collect(),
        poll_interval,
        cache_file,
    })
}
