//! Compiling the fleet roles: `central:` (who may download this instance's
//! settings) and `api_gateway:` (the central to download from). The
//! `download-settings` command's flags are checked as `api_gateway:` is,
//! their findings named by flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::context::Ctx;
use super::diagnostic::{Diagnostic, Invalid, Report, Severity};
use super::plain_http::OptIn;
use super::raw::{self, Location, Scalar, S};
use super::resolve::Env;
use super::security_compile::{url, warn_ignored};
use super::snapshot::*;

/// A path of the host that reads a configuration, where an exported entry
/// names it: a downstream that takes the entry refuses the download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath {
    pub owner: PathOwner,
    /// The key, as written under the entry.
    pub key: &'static str,
    pub at: Location,
}

/// The exported entry that names a [`HostPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOwner {
    /// An auth server, by `id` (taken with `download_settings`).
    AuthServer(String),
    /// An API, by `name` (taken with `download_apis`, by `apis:`).
    Api(Option<String>),
}

impl std::fmt::Display for PathOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathOwner::AuthServer(id) => write!(f, "auth server `{id}`"),
            PathOwner::Api(name) => write!(f, "API `{}`", name.as_deref().unwrap_or_default()),
        }
    }
}

/// The paths of this host that the exported sections of `file` name: an
/// auth server's `trustStoreAlias` (a `null` one names none), an API's
/// `upstream.ca_bundle`. A central exports them as written.
pub fn host_paths(file: &raw::File) -> Vec<HostPath> {
    let servers = file
        .security_settings
        .auth_servers
        .iter()
        .filter_map(|server| {
            let local = server.value.local_introspection.as_ref()?;
            let path = local.value.trust_store_alias.as_ref()?;
            path.value.as_ref()?;
            let id = server.value.id.as_ref().map_or("", |id| id.value.as_str());
            Some(HostPath {
                owner: PathOwner::AuthServer(id.to_owned()),
                key: "localIntrospectionConfig.trustStoreAlias",
                at: path.referenced,
            })
        });
    let apis = file.apis.iter().filter_map(|api| {
        let path = api.value.upstream.as_ref()?.value.ca_bundle.as_ref()?;
        Some(HostPath {
            owner: PathOwner::Api(api.value.name.as_ref().map(|n| n.value.clone())),
            key: "upstream.ca_bundle",
            at: path.referenced,
        })
    });
    servers.chain(apis).collect()
}

/// Removes every path [`host_paths`] finds from `file`.
pub fn strip_host_paths(file: &mut raw::File) {
    for server in &mut file.security_settings.auth_servers {
        if let Some(local) = &mut server.value.local_introspection {
            local.value.trust_store_alias = None;
        }
    }
    for api in &mut file.apis {
        if let Some(upstream) = &mut api.value.upstream {
            upstream.value.ca_bundle = None;
        }
    }
}

pub(super) fn central(ctx: &mut Ctx, central: &S<raw::Central>, file: &raw::File) -> Central {
    // A downstream reads no path its download names (its own host's file
    // of that name is no CA of the central's choosing): each is refused
    // by every downstream that takes the entry.
    for path in host_paths(file) {
        let taken_with = match path.owner {
            PathOwner::AuthServer(_) => "download_settings",
            PathOwner::Api(_) => "download_apis",
        };
        ctx.report.warning(
            path.at,
            format!(
                "{} names a path of this host in {}: every downstream that takes it ({taken_with}) refuses the download; keep that entry in the downstreams' own files",
                path.owner, path.key
            ),
        );
    }
    let users = central
        .value
        .users
        .iter()
        .filter_map(|u| {
            let user = ctx.required(&u.value.user, u.referenced, "user")?;
            let user = ctx.basic_user(user.referenced, &user.value, "central.users.user");
            let password = ctx.required(&u.value.password, u.referenced, "password")?;
            let secret = ctx.secret(password, "password");
            if let (Some(name), Some(secret)) = (&user, &secret) {
                ctx.short_secret(
                    password.referenced,
                    secret,
                    &format!("the password of central user `{name}`"),
                    "at the central's download, which hands out every secret of the fleet",
                );
            }
            user.zip(secret)
        })
        .collect::<Vec<_>>();
    // Users written but refused have errors of their own.
    if central.value.users.is_empty() {
        ctx.report.error(
            central.referenced,
            "central: has no users, so no microgateway could download from it",
            "at least one { user, password }",
        );
    }
    Central { users }
}

/// How the settings of a download are named in findings.
#[derive(Debug, Clone, Copy)]
pub struct DownloadKeys {
    pub url: &'static str,
    pub user: &'static str,
    pub password: &'static str,
    pub allow_insecure_http: OptIn,
}

/// The keys of `api_gateway:` in a file.
pub const FILE_KEYS: DownloadKeys = DownloadKeys {
    url: "api_gateway.url",
    user: "api_gateway.user",
    password: "api_gateway.password",
    allow_insecure_http: super::plain_http::ENTRY,
};

/// The flags of `download-settings`.
pub const FLAG_KEYS: DownloadKeys = DownloadKeys {
    url: "--gateway",
    user: "--user",
    password: "--password",
    allow_insecure_http: OptIn {
        name: "--allow-insecure-http",
        how: "--allow-insecure-http",
    },
};

/// What `download-settings` was given.
#[derive(Debug)]
pub struct DownloadFlags {
    pub url: String,
    pub user: String,
    /// As written: a value, `{encoded}…`, `${env:…}` or `${file:…}`.
    pub password: String,
    pub apis: Vec<String>,
    pub allow_insecure_http: bool,
    /// Where the document goes (names it in diagnostics).
    pub output: PathBuf,
}

/// The download `flags` describe, checked as `api_gateway:` is (URL form,
/// plain HTTP, Basic user, secret syntax), with the warnings found; or
/// every finding when one is an error. Relative paths start at the
/// working directory.
pub fn download_flags(
    flags: DownloadFlags,
    env: &Env,
) -> Result<(ApiGateway, Vec<Diagnostic>), Invalid> {
    let given = |text: String| Some(S::new(Scalar(text), Location::UNKNOWN, Location::UNKNOWN));
    let section = raw::ApiGateway {
        url: given(flags.url),
        user: given(flags.user),
        password: given(flags.password),
        download_settings: given("true".into()),
        download_apis: given("true".into()),
        apis: (flags.apis.into_iter())
            .map(|name| S::new(name, Location::UNKNOWN, Location::UNKNOWN))
            .collect(),
        poll_interval: given("0".into()),
        allow_insecure_http: given(flags.allow_insecure_http.to_string()),
        ..raw::ApiGateway::default()
    };
    let mut report = Report::new(Path::new("download-settings"));
    let mut ctx = Ctx {
        report: &mut report,
        env,
        base: PathBuf::from("."),
        files: Vec::new(),
        contents: Default::default(),
    };
    let entry = S::new(section, Location::UNKNOWN, Location::UNKNOWN);
    let settings = api_gateway(&mut ctx, &entry, FLAG_KEYS);
    let findings = report.findings;
    match settings {
        Some(settings) if !findings.iter().any(|d| d.severity == Severity::Error) => {
            let cache_file = flags.output;
            Ok((
                ApiGateway {
                    cache_file,
                    ..settings
                },
                findings,
            ))
        }
        _ => Err(Invalid::new(findings)),
    }
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
        contents: Default::default(),
    };
    let entry = file.api_gateway.as_ref()?;
    api_gateway(&mut ctx, entry, FILE_KEYS)
}

pub(super) fn api_gateway(
    ctx: &mut Ctx,
    entry: &S<raw::ApiGateway>,
    keys: DownloadKeys,
) -> Option<ApiGateway> {
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
    if let Some(named) = names_a_file_of_the_configuration(ctx, &cache_file) {
        let at = raw
            .cache_file
            .as_ref()
            .map_or(entry.referenced, |c| c.referenced);
        ctx.report.error(
            at,
            format!(
                "api_gateway.cache_file `{}` is {named}: each download would overwrite it",
                cache_file.display()
            ),
            "a file of its own, such as data/downloaded-settings.yaml",
        );
    }
    // Without a download the central is never contacted, so a section that
    // only tunes polling (say, from an MCGW_ variable) needs no credentials.
    let downloads = download_settings || download_apis;
    if !downloads && (raw.url.is_none() || raw.user.is_none() || raw.password.is_none()) {
        return None;
    }
    if downloads {
        super::plain_http::api_gateway(ctx, raw, keys.url, keys.allow_insecure_http);
    }
    let at = entry.referenced;
    let url = ctx
        .required(&raw.url, at, keys.url)
        .and_then(|u| url(ctx, u, keys.url).and_then(|text| central_base(ctx, u, text, keys.url)));
    let user = ctx
        .required(&raw.user, at, keys.user)
        .and_then(|u| ctx.basic_user(u.referenced, &u.value.0, keys.user));
    let password = ctx
        .required(&raw.password, at, keys.password)
        .and_then(|p| ctx.secret(p, keys.password));
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

/// What `cache` is of the configuration's own files, if it is one: the
/// configuration file, or a file it names (read so far).
fn names_a_file_of_the_configuration(ctx: &Ctx, cache: &Path) -> Option<&'static str> {
    let same = |other: &Path| match (cache.canonicalize(), other.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => cache == other,
    };
    if same(&ctx.report.path) {
        Some("the configuration file itself")
    } else if ctx.files.iter().any(|file| same(file)) {
        Some("a file the configuration names")
    } else {
        None
    }
}

/// A central's URL is the base its export's path is put after: a query
/// or a fragment there would end up before that path, and the download
/// ask for something else.
fn central_base(ctx: &mut Ctx, value: &S<Scalar>, text: String, key: &str) -> Option<String> {
    if text.contains(['?', '#']) {
        ctx.report.error(
            value.referenced,
            format!(
                "{key}: `{}` has a query or a fragment; the export's path is put after the URL",
                super::secret::shown_url(&text)
            ),
            "https://central.example[:port][/path], without `?` or `#`",
        );
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(url: &str, allow_insecure_http: bool) -> DownloadFlags {
        DownloadFlags {
            url: url.into(),
            user: "fleet".into(),
            password: "{encoded}ZmxlZXQtc2VjcmV0".into(),
            apis: vec!["Catalog".into()],
            allow_insecure_http,
            output: "out.yaml".into(),
        }
    }

    #[test]
    fn download_flags_refuse_plain_http_to_a_remote_host_by_flag_name() {
        let invalid = download_flags(flags("http://fleet:pw@192.0.2.1:9485", false), &Env::new())
            .expect_err("plain HTTP refused");
        assert_eq!(
            invalid.to_string(),
            "download-settings: error: --gateway: `http://****@192.0.2.1:9485` would carry the \
             central's settings and the download password over plain HTTP to a host that is not \
             loopback; allowed: https://…, http:// only to localhost, 127.0.0.0/8 or [::1], or \
             --allow-insecure-http"
        );
    }

    #[test]
    fn download_flags_allow_plain_http_when_asked_and_to_loopback() {
        let (settings, warnings) =
            download_flags(flags("http://192.0.2.1:9485", true), &Env::new()).expect("allowed");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.ends_with("(--allow-insecure-http)"));
        assert_eq!(settings.password.expose(), "fleet-secret");
        assert_eq!(settings.apis, ["Catalog"]);
        assert_eq!(settings.cache_file, PathBuf::from("out.yaml"));
        let (_, warnings) =
            download_flags(flags("http://127.0.0.1:9485", false), &Env::new()).expect("loopback");
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_central_url_with_a_query_or_a_fragment_is_refused_its_values_unshown() {
        for (given, shown) in [
            (
                "https://central.example:9485/?key=s3cret",
                "https://central.example:9485/?key=****",
            ),
            (
                "https://central.example#top",
                "https://central.example#****",
            ),
        ] {
            let invalid = download_flags(flags(given, false), &Env::new()).expect_err("refused");
            let message = invalid.findings[0].message.as_str();
            assert_eq!(
                message,
                format!(
                    "--gateway: `{shown}` has a query or a fragment; the export's path is put after the URL"
                )
            );
            assert!(!invalid.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn download_flags_check_the_url_and_user_as_the_file_does() {
        let mut bad = flags("central:9485", false);
        bad.user = "a:b".into();
        let invalid = download_flags(bad, &Env::new()).expect_err("refused");
        let messages: Vec<&str> = invalid
            .findings
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(
            messages,
            [
                "--gateway: `central:9485` is not an http(s) URL",
                "--user: `a:…` contains `:`, which Basic authentication cannot carry in a user name",
            ]
        );
    }
}
