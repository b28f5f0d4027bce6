//! The command line: `start`, `check`, `explain`, `download-settings`.
//! Wires configuration, gateway, signals and logging together.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command line reports to its terminal"
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Env, Severity, Snapshot};
use crate::gateway::Gateway;
use crate::policy::Caller;
use crate::reload::Source;

pub const DEFAULT_CONFIG: &str = "config/microgateway.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "microgateway",
    version,
    about = "A small, fast edge microgateway enforcing OAuth2 scopes per resource"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log format of `start`.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `download-settings`: where from, as whom, and where to.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The central gateway's admin URL (http://central:9485).
    #[arg(long)]
    pub gateway: String,
    #[arg(long)]
    pub user: String,
    /// Also `{encoded}BASE64` or `${env:NAME}`.
    #[arg(long, env = "MCGW_API_GATEWAY_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Only these APIs (names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub apis: Vec<String>,
    /// File to write (mode 0600).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Allow plain http:// to a host that is not loopback (the password
    /// and the settings' secrets travel in clear), as
    /// `api_gateway.allow_insecure_http` does.
    #[arg(long)]
    pub allow_insecure_http: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Start {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Central gateway to download settings from (overrides api_gateway.url;
        /// as MCGW_API_GATEWAY_URL does, and over it).
        #[arg(long)]
        gateway: Option<String>,
        /// The central's user (as MCGW_API_GATEWAY_USER, over it).
        #[arg(long)]
        user: Option<String>,
        /// The central's password (as MCGW_API_GATEWAY_PASSWORD, over it).
        #[arg(long)]
        password: Option<String>,
        /// Download settings (auth servers, aliases, scope mappings) and APIs
        /// (as MCGW_API_GATEWAY_DOWNLOAD_SETTINGS and _DOWNLOAD_APIS).
        #[arg(long)]
        download_settings: bool,
    },
    /// Validate a configuration: exit 0 (warnings allowed) or 1 with errors.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the JSON Schema (draft 2020-12) of the configuration file, for
    /// editors (`# yaml-language-server: $schema=…`) and validators.
    Schema,
    /// Show which API and resource a request matches, which API scopes it
    /// needs, which token scopes grant them, and the verdict (no network).
    Explain(ExplainArgs),
    /// Download a central gateway's settings once, as a configuration file
    /// (standard output when no -o is given).
    DownloadSettings(DownloadArgs),

    /// Make a new signing key current in the authorization server's
    /// PostgreSQL store; every replica signs with it within 10 s, and the
    /// previous ones stay published while tokens they signed may be valid.
    RotateSigningKey {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },

    /// Print an argon2id hash of a password read from standard input, for
    /// `authorization_server.users[].password_hash` and
    /// `applications[].basic_users[].password_hash`; a password of only
    /// whitespace is refused, as the configuration refuses such a secret.
    HashPassword,

    /// Probe a health endpoint: exit 0 when it answers 200, else 1 (for
    /// container health checks; the image needs no HTTP client).
    Health {
        #[arg(long, default_value = DEFAULT_HEALTH_URL)]
        url: String,
    },
}

/// Where `health` probes by default: the admin port's readiness.
pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:9485/health/ready";

/// The process environment, read once.
pub fn environment() -> Env {
    std::env::vars().collect()
}

pub fn run(args: Args) -> ExitCode {
    let command = args.command.unwrap_or(Command::Start {
        config: PathBuf::from(DEFAULT_CONFIG),
        gateway: None,
        user: None,
        password: None,
        download_settings: false,
    });
    match command {
        Command::Check { config } => check(&config),
        Command::HashPassword => hash_password(),
        Command::RotateSigningKey { config } => rotate_signing_key(&config),
        Command::DownloadSettings(download) => download_settings(download),
        Command::Health { url } => health(&url),
        Command::Explain(args) => explain(&args),
        Command::Schema => {
            print!("{}", config::schema::json_schema());
            ExitCode::SUCCESS
        }
        Command::Start {
            config,
            gateway,
            user,
            password,
            download_settings,
        } => {
            let _log = crate::logging::init(match args.log_format {
                LogFormat::Text => crate::logging::Format::Text,
                LogFormat::Json => crate::logging::Format::Json,
            });
            let mut env = environment();
            // Command-line settings win over the file and the environment.
            let flags = [
                ("MCGW_API_GATEWAY_URL", gateway),
                ("MCGW_API_GATEWAY_USER", user),
                ("MCGW_API_GATEWAY_PASSWORD", password),
            ];
            for (name, value) in flags {
                if let Some(value) = value {
                    env.insert(name.to_owned(), value);
                }
            }
            if download_settings {
                env.insert("MCGW_API_GATEWAY_DOWNLOAD_SETTINGS".into(), "true".into());
                env.insert("MCGW_API_GATEWAY_DOWNLOAD_APIS".into(), "true".into());
            }
            start(&config, env)
        }
    }
}

fn health(url: &str) -> ExitCode {
    match probe(url, std::time::Duration::from_secs(3)) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url}: status {status}");
            ExitCode::FAILURE
        }
        Err(why) => {
            eprintln!("{url}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// One plain HTTP/1.1 GET; the status code of the answer.
fn probe(url: &str, timeout: std::time::Duration) -> Result<u16, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are probed".into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the host has no address")?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // "HTTP/1.1 200 " is 13 bytes; it may come in pieces.
    let mut head = [0u8; 13];
    let mut filled = 0;
    while filled < head.len() {
        match stream
            .read(&mut head[filled..])
            .map_err(|e| e.to_string())?
        {
            0 => break,
            n => filled += n,
        }
    }
    std::str::from_utf8(&head[..filled])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| "no HTTP status in the answer".to_owned())
}

fn rotate_signing_key(path: &Path) -> ExitCode {
    use crate::authz_server::keys::SigningKeys;
    use crate::authz_server::store::PostgresStore;
    let env = environment();
    let loaded = match crate::central::load(path, None, &env, 1, None) {
        Ok(loaded) => loaded,
        Err(invalid) => {
            for finding in &invalid.findings {
                eprintln!("{finding}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Some(postgres) = loaded
        .snapshot
        .authorization_server
        .as_ref()
        .and_then(|settings| settings.postgres.as_ref())
    else {
        eprintln!(
            "{}: the signing key is kept in the store only with `authorization_server.store: postgres://…`; \
             with SQLite, replace the signing_key file and reload",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let rotated = PostgresStore::open(postgres)
        .map_err(|e| e.to_string())
        .and_then(|store| {
            if !crate::authz_server::store::TokenStore::is_ready(&store) {
                return Err(format!("{}: database unreachable", postgres.display()));
            }
            SigningKeys::rotate(&store, crate::authz_server::unix_now()).map_err(|e| e.to_string())
        });
    match rotated {
        Ok(kid) => {
            println!(
                "new signing key {kid} is in {}; every replica publishes it within {} s \
                 and signs with it from {} s on",
                postgres.display(),
                crate::authz_server::KEY_REFRESH.as_secs(),
                crate::authz_server::KEY_PUBLISHED_BEFORE_SIGNING.as_secs()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("rotate-signing-key: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration `check` and `explain` judge: the file, merged with a
/// downstream's last good download as the gateway would serve them. Each
/// file read is named on standard error, one line each.
fn effective(
    path: &Path,
    env: &Env,
) -> Result<
    (
        Result<config::Loaded, config::Invalid>,
        Option<crate::central::Document>,
    ),
    ExitCode,
> {
    eprintln!("reading {}", path.display());
    let document = cached_download(path, env)?;
    if let Some(document) = &document {
        eprintln!("reading {} (cached download)", document.origin.display());
    }
    let loaded = crate::central::load(path, None, env, 1, document.as_ref());
    Ok((loaded, document))
}

fn check(path: &Path) -> ExitCode {
    let env = environment();
    let (loaded, document) = match effective(path, &env) {
        Ok(effective) => effective,
        Err(failure) => return failure,
    };
    // TLS material is judged by the function start and reload use.
    let loaded = loaded.and_then(|loaded| {
        crate::server::tls::check(&loaded.snapshot, std::time::SystemTime::now())?;
        Ok(loaded)
    });
    match loaded {
        Ok(loaded) => {
            for (variable, setting) in &loaded.overrides {
                eprintln!(
                    "{variable}: note: sets {setting} (the file's value, if any, is not used)"
                );
            }
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            let apis = loaded.snapshot.apis.len();
            let merged = document
                .as_ref()
                .map(|d| format!(", with {}", d.origin.display()))
                .unwrap_or_default();
            println!(
                "{}: ok ({apis} APIs, {} warnings{merged})",
                path.display(),
                loaded.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(invalid) => {
            let errors = invalid
                .findings
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            for finding in &invalid.findings {
                eprintln!("{finding}");
            }
            eprintln!("{}: {errors} errors", path.display());
            ExitCode::FAILURE
        }
    }
}

/// For `check` and `explain` of a file that downloads settings from a central gateway:
/// its last good download (`cache_file`), to be checked merged over the
/// file as the gateway would serve them. The central is not contacted.
fn cached_download(path: &Path, env: &Env) -> Result<Option<crate::central::Document>, ExitCode> {
    // A file that cannot be read fails the check that follows.
    let Ok(Some(settings)) = config::api_gateway(path, env) else {
        return Ok(None);
    };
    if !settings.download_settings && !settings.download_apis {
        return Ok(None);
    }
    let cache = settings.cache_file.clone();
    // Within 4 MiB, as `start` reads it: a device is no cache.
    let text = match config::load::read_own_text(&cache) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "note: the downloaded settings are not checked: cannot read the cache file {}: {error}",
                cache.display()
            );
            return Ok(None);
        }
    };
    // The gateway would not start from it either.
    if let Err(mismatch) = crate::central::provenance::check(&settings) {
        eprintln!(
            "note: the downloaded settings are not checked: the cache file is not used: {mismatch}"
        );
        return Ok(None);
    }
    let document = crate::central::Document::cached(text, cache);
    if let Err(invalid) = document.validate() {
        eprintln!("{invalid}");
        eprintln!(
            "{}: the cached download is invalid",
            document.origin.display()
        );
        return Err(ExitCode::FAILURE);
    }
    Ok(Some(document))
}

/// `explain`: a request described by its credential, decided as the
/// data path decides it.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("credential").args(["scopes", "api_key", "basic", "client_cert"])))]
pub struct ExplainArgs {
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    method: String,
    path: String,
    /// Token scopes, space-separated (omit for a request without token).
    #[arg(long)]
    scopes: Option<String>,
    /// Auth server that validated the token (default: the API's; another
    /// one's token is not valid on the API).
    #[arg(long)]
    auth_server: Option<String>,
    /// The client the token was issued to, for `applications: registered`
    /// and the applications its client id names.
    #[arg(long, requires = "scopes")]
    client_id: Option<String>,
    /// An API key, as sent in the API's `api_key_header`.
    #[arg(long)]
    api_key: Option<String>,
    /// Basic credentials, `USER:PASSWORD`.
    #[arg(long)]
    basic: Option<String>,
    /// A PEM client certificate (matched by fingerprint; its chain to
    /// `tls.client_ca` is the TLS handshake's to check).
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// The client address (default 127.0.0.1), for `ip_filter` and `ip_ranges`.
    #[arg(long)]
    client_ip: Option<std::net::IpAddr>,
}

fn explain(args: &ExplainArgs) -> ExitCode {
    let loaded = match effective(&args.config, &environment()) {
        Err(failure) => return failure,
        Ok((Ok(loaded), _)) => loaded,
        Ok((Err(invalid), _)) => {
            eprintln!("{invalid}");
            return ExitCode::FAILURE;
        }
    };
    let method = &args.method;
    // RFC 9110 §9.1: the method is case-sensitive; the gateway takes `get`
    // as written (no resource has it: 405), and so does explain.
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        eprintln!("`{method}` is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let caller = match caller(args, &loaded.snapshot) {
        Ok(caller) => caller,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::FAILURE;
        }
    };
    // Judged as the data path judges a peer: an IPv4-mapped address is
    // its IPv4 address.
    let client_ip = args
        .client_ip
        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |ip| {
            ip.to_canonical()
        });
    let request_path = &args.path;
    let verdict =
        crate::policy::decide_for(&loaded.snapshot, &method, request_path, &caller, client_ip);
    println!("{method} {request_path}");
    println!("{verdict}");
    match verdict.outcome {
        crate::policy::Outcome::Allow => ExitCode::SUCCESS,
        _ => ExitCode::from(2),
    }
}

/// The caller `explain` decides for, its credential checked as the data
/// path checks it.
fn caller(args: &ExplainArgs, snapshot: &Snapshot) -> Result<Caller, String> {
    use crate::auth::identity::{self, Identity};
    use crate::config::snapshot::CredentialType;
    let apps = &snapshot.applications;
    let identified = |kind, app: Option<&std::sync::Arc<_>>| match app {
        Some(app) => Caller::Identified(Identity::of_application(kind, std::sync::Arc::clone(app))),
        None => Caller::Refused(kind),
    };
    if let Some(scopes) = &args.scopes {
        // The same scope syntax as a token's: a scope string the gateway
        // would refuse in a token is not explained as if it granted something.
        let scopes = crate::auth::scope::split(scopes).map_err(|problem| {
            format!("--scopes: {problem}; allowed: scope tokens separated by single spaces")
        })?;
        if let Some(named) = &args.auth_server {
            if !snapshot.auth_servers.contains_key(named.as_str()) {
                let known: Vec<&str> = snapshot.auth_servers.keys().map(|k| &**k).collect();
                return Err(format!(
                    "--auth-server {named}: no such auth server; allowed: one of {}",
                    known.join(", ")
                ));
            }
        }
        return Ok(Caller::Token {
            scopes: scopes.map(str::to_owned).collect(),
            auth_server: args.auth_server.clone(),
            client_id: args.client_id.clone(),
        });
    }
    if let Some(key) = &args.api_key {
        let app = apps.by_api_key_digest(&identity::digest(key.as_bytes()));
        return Ok(identified(CredentialType::ApiKey, app));
    }
    if let Some(basic) = &args.basic {
        let (user, password) = basic
            .split_once(':')
            .ok_or("--basic: allowed: USER:PASSWORD")?;
        return Ok(match identity::verify_basic(apps, user, password) {
            Some(app) => {
                let mut who = Identity::of_application(CredentialType::Basic, app);
                who.user_name = Some(user.to_owned());
                Caller::Identified(who)
            }
            None => Caller::Refused(CredentialType::Basic),
        });
    }
    if let Some(file) = &args.client_cert {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_file(file).map_err(|e| {
            format!(
                "--client-cert {}: {e}; allowed: a PEM certificate",
                file.display()
            )
        })?;
        let fingerprint = crate::server::client_cert::fingerprint(&der);
        return Ok(identified(
            CredentialType::Certificate,
            apps.by_certificate(&fingerprint),
        ));
    }
    Ok(Caller::Nobody)
}

fn start(path: &Path, env: Env) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (code, stopped_at_once) = runtime.block_on(async move {
        // Before anything listens: a signal sent as soon as the gateway
        // answers is handled, not taken by its default (SIGHUP's and
        // SIGTERM's end the process at once).
        let mut signals = Signals::install();
        // A downstream may wait for its central for a while (30 s for a
        // silent one): a stop asked for meanwhile ends the start.
        let gateway = tokio::select! {
            started = Gateway::start(path, env) => match started {
                Ok(gateway) => gateway,
                Err(error) => {
                    eprintln!("{error}");
                    return (ExitCode::FAILURE, false);
                }
            },
            () = signals.stop() => {
                tracing::info!("stopped during start-up");
                return (ExitCode::SUCCESS, true);
            }
        };
        tracing::info!(
            http = %Listening(gateway.http),
            https = %Listening(gateway.https),
            admin = %Listening(gateway.admin),
            config = %path.display(),
            "microgateway started"
        );
        return_startup_code();
        signals.serve(&gateway).await;
        tracing::info!(
            "shutting down: draining in-flight requests (a second SIGTERM or SIGINT stops at once)"
        );
        // Envoy, nginx (`quit`, then `term`) and most proxies: a second
        // signal does not wait for the drain.
        tokio::select! {
            () = gateway.shutdown() => {
                tracing::info!("stopped");
                (ExitCode::SUCCESS, false)
            }
            () = signals.second_stop() => {
                tracing::warn!("second signal: stopped at once, requests in flight cut");
                (ExitCode::SUCCESS, true)
            }
        }
    });
    if stopped_at_once {
        // Without waiting for what the start or the drain left running
        // on the blocking pool (a listener thread's join, a file read).
        runtime.shutdown_background();
    } else {
        // What the drain left behind on purpose (a configuration watcher
        // held by a stalled file system) does not hold the exit.
        runtime.shutdown_timeout(LEFT_BEHIND);
    }
    code
}

/// A SIGTERM or SIGINT sooner than this after the one that started the
/// drain is taken as sent with it, not as a second one.
const SECOND_SIGNAL_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// How long the exit waits for work left on the blocking pool.
const LEFT_BEHIND: std::time::Duration = std::time::Duration::from_secs(2);

/// Once serving, the program's pages that only starting up read are given
/// back (`allocator::return_startup_code`).
fn return_startup_code() {
    match crate::allocator::return_startup_code() {
        Ok((before, after)) => tracing::debug!(
            resident_kib_before = before,
            resident_kib_after = after,
            "gave back the program pages read at start"
        ),
        Err(error) => tracing::debug!(%error, "cannot give back the program pages read at start"),
    }
}

/// A listener's address in the log (`127.0.0.1:4485`), or `off`.
struct Listening(Option<std::net::SocketAddr>);

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// The signals `start` answers: SIGTERM and SIGINT drain and stop (during
/// start-up, they stop; during the drain, they stop at once), SIGHUP
/// reloads.
#[cfg(unix)]
struct Signals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

#[cfg(unix)]
impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some((term, int, hup))),
            _ => {
                tracing::error!("cannot install signal handlers");
                Signals(None)
            }
        }
    }

    /// Until a SIGTERM or SIGINT that comes [`SECOND_SIGNAL_AFTER`] or
    /// later: one sent with the first (a terminal's Ctrl-C beside an
    /// orchestrator's SIGTERM) does not cut the drain.
    async fn second_stop(&mut self) {
        tokio::time::sleep(SECOND_SIGNAL_AFTER).await;
        if let Some((term, int, _)) = &mut self.0 {
            use futures_util::FutureExt;
            while term.recv().now_or_never().is_some() || int.recv().now_or_never().is_some() {}
        }
        self.stop().await;
    }

    /// Until the next SIGTERM or SIGINT (a SIGHUP meanwhile waits).
    async fn stop(&mut self) {
        let Some((term, int, _)) = &mut self.0 else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }

    /// Until SIGTERM or SIGINT; each SIGHUP reloads meanwhile.
    async fn serve(&mut self, gateway: &Gateway) {
        let Some((term, int, hup)) = &mut self.0 else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    // Off the runtime workers; logged and counted by the reload.
                    let reloader = gateway.state.reloader.clone();
                    tokio::spawn(async move {
                        let _ = reloader.reload_on_blocking_pool(Source::Signal).await;
                    });
                }
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Signals {
        Signals
    }

    async fn stop(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }

    async fn second_stop(&mut self) {
        tokio::time::sleep(SECOND_SIGNAL_AFTER).await;
        self.stop().await;
    }

    async fn serve(&mut self, _gateway: &Gateway) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Downloads a central gateway's settings once, checks them, and writes
/// them (mode 0600) or prints them.
fn download_settings(args: DownloadArgs) -> ExitCode {
    let output = args.output.as_deref();
    let label = output.unwrap_or(Path::new("downloaded-settings.yaml"));
    let flags = config::fleet_compile::DownloadFlags {
        url: args.gateway,
        user: args.user,
        password: args.password,
        apis: args.apis,
        allow_insecure_http: args.allow_insecure_http,
        output: label.to_path_buf(),
    };
    // The flags are checked as `api_gateway:` is: no credentials in clear
    // to a host that is not loopback unless asked for.
    let settings = match config::fleet_compile::download_flags(flags, &environment()) {
        Ok((settings, warnings)) => {
            for warning in &warnings {
                eprintln!("{warning}");
            }
            settings
        }
        Err(invalid) => {
            eprintln!("{invalid}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot start the runtime");
        return ExitCode::FAILURE;
    };
    let shown = crate::central::shown_url(&settings.url);
    let client = crate::central::poller::client();
    let fetched = runtime.block_on(crate::central::poller::download(&client, &settings, &[]));
    let text = match fetched {
        Ok(crate::central::poller::Fetched::Document { text, .. }) => text,
        Ok(crate::central::poller::Fetched::NotModified { .. }) => {
            eprintln!("{shown}: unexpected 304 Not Modified");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("cannot download settings from {shown}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let document = crate::central::Document::downloaded(text, label.to_path_buf());
    if let Err(invalid) = document.validate() {
        eprintln!("the downloaded settings are invalid:\n{invalid}");
        return ExitCode::FAILURE;
    }
    match output {
        None => print!("{}", document.text),
        Some(path) => {
            // With its record: the file can be a downstream's cache_file.
            if let Err(error) = crate::central::provenance::write(&settings, &document.text) {
                eprintln!("cannot write {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("{}: settings of {shown} written", path.display());
        }
    }
    ExitCode::SUCCESS
}

fn hash_password() -> ExitCode {
    use argon2::PasswordHasher;
    use std::io::Read;
    /// More than any password: the input is read no further.
    const MAX_INPUT: u64 = 64 * 1024;
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    // Typed at a terminal: the line ends the input. Piped: all of it,
    // so that a second line is seen rather than dropped.
    let read = if std::io::IsTerminal::is_terminal(&stdin) {
        std::io::BufRead::read_until(&mut stdin.lock(), b'\n', &mut input)
    } else {
        stdin.take(MAX_INPUT + 1).read_to_end(&mut input)
    };
    if read.is_err() {
        eprintln!("cannot read standard input; type the password on it");
        return ExitCode::FAILURE;
    }
    if input.len() as u64 > MAX_INPUT {
        eprintln!("the input is larger than 64 KiB; type one password on standard input");
        return ExitCode::FAILURE;
    }
    let Ok(text) = String::from_utf8(input) else {
        eprintln!("the input is not UTF-8 text; type the password on standard input");
        return ExitCode::FAILURE;
    };
    // One line, its line break (if any) no part of it: a second line
    // would be dropped without a word, and the hash not be of what was
    // typed.
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        eprintln!("type the password on standard input");
        return ExitCode::FAILURE;
    }
    if password.contains(['\n', '\r']) {
        eprintln!("the input has more than one line; type one password on standard input");
        return ExitCode::FAILURE;
    }
    // A password the configuration would refuse as a secret is no
    // password to hash either: whoever sends that much would get in.
    if crate::config::resolve::is_blank(password) {
        eprintln!("the password is only whitespace; type a password on standard input");
        return ExitCode::FAILURE;
    }
    match argon2::Argon2::default().hash_password(password.as_bytes()) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot hash: {error}");
            ExitCode::FAILURE
        }
    }
}
