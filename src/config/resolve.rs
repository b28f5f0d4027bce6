//! Interpreting scalars: durations, sizes, numbers, booleans, secrets
//! (`{encoded}`, `${env:}`, `${file:}`), paths relative to the configuration
//! file, and `MCGW_` environment overrides. Pure: the environment comes in as
//! a map, files are read through the caller's base directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use super::contents::Content;
use super::load::{read_bounded, utf8};
use super::raw::{self, Location, Scalar, S};
use super::Secret;

/// The process environment as seen by one load (never read here directly).
pub type Env = BTreeMap<String, String>;

/// Parses `30s`, `5m`, `1h`, `250ms`, `2d` or integer seconds.
pub fn duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => return Some(Duration::from_millis(number)),
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// Parses `32KiB`, `10MiB`, `1GiB`, `512B`, `64KB` or integer bytes.
pub fn size(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(bytes) = text.parse::<u64>() {
        return Some(bytes);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// YAML 1.1 spellings of booleans (any case). YAML 1.2 reads them as
/// text; a file that means `false` by `off` must not be read either way.
pub fn is_yaml11_boolean(text: &str) -> bool {
    ["y", "yes", "n", "no", "on", "off"]
        .iter()
        .any(|word| text.trim().eq_ignore_ascii_case(word))
}

pub fn boolean(text: &str) -> Option<bool> {
    match text.trim() {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Why a secret could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("the secret is masked (****); supply the real value")]
    Masked,
    #[error("{{encoded}} value is not valid base64 of UTF-8 text")]
    BadEncoding,
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {0}: {1}")]
    Unreadable(String, String),
    #[error("the secret is empty")]
    Empty,
    #[error("environment variable {0} is set but empty")]
    EmptyEnv(String),
    #[error("secret file {0} is empty (or holds only line breaks)")]
    EmptyFile(String),
    #[error("{{encoded}} value decodes to nothing")]
    EmptyEncoded,
    #[error("the secret is only whitespace")]
    Blank,
    /// `{ENCODED}`, ` {encoded}`: taken as the password itself, the base64
    /// would be the password, and whoever reads the file has it.
    #[error("`{{encoded}}` is written in lower case at the very start: \"{{encoded}}BASE64\" (a secret that starts so is written encoded itself)")]
    MistypedEncoded,
    /// The value is not quoted: a mistyped reference may be a password.
    #[error("`${{…}}` is no secret reference: write exactly \"${{env:NAME}}\" or \"${{file:/path}}\", no spaces around it (a secret that starts with `${{` is written as \"{{encoded}}BASE64\")")]
    MistypedReference,
}

/// Where a secret written as a reference is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference<'a> {
    Env(&'a str),
    File(&'a str),
}

/// The reference `text` is written as: `None` for a value that is no
/// reference (it does not start with `${`, spaces aside), an error for one
/// that starts so but is not exactly `${env:NAME}` or `${file:PATH}`. Taken
/// as the secret itself, a mistyped reference would let in whoever reads
/// the configuration file.
fn reference(text: &str) -> Result<Option<Reference<'_>>, SecretProblem> {
    if !text.trim_start().starts_with("${") {
        return Ok(None);
    }
    let inner = text.strip_prefix("${").and_then(|t| t.strip_suffix('}'));
    match inner.and_then(|t| t.split_once(':')) {
        Some(("env", name))
            if !name.is_empty()
                && !name.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') =>
        {
            Ok(Some(Reference::Env(name)))
        }
        Some(("file", path)) if !path.is_empty() && path.trim() == path => {
            Ok(Some(Reference::File(path)))
        }
        _ => Err(SecretProblem::MistypedReference),
    }
}

/// Resolves a secret written as `{encoded}BASE64`, `${env:NAME}`,
/// `${file:/path}` or in clear; a value starting with `${` (spaces aside)
/// must be one of the two references. Returns the file it read, if any,
/// as it read it.
/// A secret that is empty or only whitespace, from any source, is an
/// error: it would let anyone in who sends that much.
pub fn secret(
    text: &str,
    env: &Env,
    base: &Path,
) -> Result<(Secret, Option<Content>), SecretProblem> {
    let (secret, file) = written_secret(text, env, base)?;
    if is_blank(secret.expose()) {
        return Err(SecretProblem::Blank);
    }
    Ok((secret, file))
}

/// Whether a secret is empty or only whitespace: what [`secret`] refuses,
/// and what `hash-password` refuses to hash.
pub fn is_blank(secret: &str) -> bool {
    secret.trim().is_empty()
}

/// How to write the secret `clear` so that [`secret`] reads it back as it
/// is: in clear, unless it begins as the syntax would read it otherwise
/// (`****`, `{encoded}` in any case or after spaces, `${…}`), then
/// `{encoded}` and its base64.
pub fn written_as_itself(clear: &str) -> String {
    let syntax = clear.starts_with("****")
        || clear.starts_with("{encoded}")
        || is_mistyped_encoded(clear)
        || clear.trim_start().starts_with("${");
    if syntax {
        let encoded = base64::engine::general_purpose::STANDARD.encode(clear);
        format!("{{encoded}}{encoded}")
    } else {
        clear.to_owned()
    }
}

/// Whether `text` is written `{encoded}…` and its clear value `secret`
/// ends with a line break: `echo pw | base64` encodes one, which is then
/// part of the password.
pub fn encoded_with_line_break(text: &str, secret: &Secret) -> bool {
    text.starts_with("{encoded}") && secret.expose().ends_with(['\n', '\r'])
}

fn written_secret(
    text: &str,
    env: &Env,
    base: &Path,
) -> Result<(Secret, Option<Content>), SecretProblem> {
    if text.starts_with("****") {
        return Err(SecretProblem::Masked);
    }
    if is_mistyped_encoded(text) {
        return Err(SecretProblem::MistypedEncoded);
    }
    if let Some(encoded) = text.strip_prefix("{encoded}") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| SecretProblem::BadEncoding)?;
        let clear = String::from_utf8(bytes).map_err(|_| SecretProblem::BadEncoding)?;
        if clear.is_empty() {
            return Err(SecretProblem::EmptyEncoded);
        }
        return Ok((Secret::new(clear), None));
    }
    match reference(text)? {
        Some(Reference::Env(name)) => env_secret(name, env),
        Some(Reference::File(file)) => file_secret(file, base),
        None if text.is_empty() => Err(SecretProblem::Empty),
        None => Ok((Secret::new(text), None)),
    }
}

/// Whether `text` starts with `{encoded}` in another case, or after
/// spaces: the webMethods prefix mistyped, not a password.
fn is_mistyped_encoded(text: &str) -> bool {
    const PREFIX: &str = "{encoded}";
    let trimmed = text.trim_start();
    trimmed
        .get(..PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
        && !text.starts_with(PREFIX)
}

fn env_secret(name: &str, env: &Env) -> Result<(Secret, Option<Content>), SecretProblem> {
    let value = env
        .get(name)
        .ok_or_else(|| SecretProblem::MissingEnv(name.to_owned()))?;
    // A value taken from a file (Kubernetes `secretKeyRef`, `$(cat pw)`
    // kept verbatim) often ends with the file's line break, no part of
    // the secret: one is dropped, as `${file:}` drops them.
    let value = value
        .strip_suffix("\r\n")
        .or_else(|| value.strip_suffix('\n'))
        .unwrap_or(value);
    // `ADMIN_PW=` is a mistake, not a password: an empty secret would
    // let anyone in with an empty password.
    if value.is_empty() {
        return Err(SecretProblem::EmptyEnv(name.to_owned()));
    }
    Ok((Secret::new(value), None))
}

/// The file a `${file:PATH}` secret names, whether or not it can be read.
pub fn referenced_file(text: &str, base: &Path) -> Option<PathBuf> {
    match reference(text) {
        Ok(Some(Reference::File(file))) => Some(relative(base, file)),
        _ => None,
    }
}

/// The variable a `${env:NAME}` secret names, whether or not it is set.
pub fn referenced_env(text: &str) -> Option<&str> {
    match reference(text) {
        Ok(Some(Reference::Env(name))) => Some(name),
        _ => None,
    }
}

fn file_secret(file: &str, base: &Path) -> Result<(Secret, Option<Content>), SecretProblem> {
    let path = relative(base, file);
    let unreadable =
        |e: std::io::Error| SecretProblem::Unreadable(path.display().to_string(), e.to_string());
    let bytes = read_bounded(&path).map_err(unreadable)?;
    let content = Content::of(&path, Some(&bytes));
    let value = utf8(bytes).map_err(unreadable)?;
    // Editors end a file with a line break that is no part of the secret.
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        return Err(SecretProblem::EmptyFile(path.display().to_string()));
    }
    Ok((Secret::new(value), Some(content)))
}

/// A path as written, relative to the configuration file's directory.
pub fn relative(base: &Path, written: &str) -> PathBuf {
    let path = Path::new(written);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

type Slot = fn(&mut raw::File) -> &mut Option<S<Scalar>>;

fn section<T: Default>(slot: &mut Option<S<T>>) -> &mut T {
    &mut slot
        .get_or_insert_with(|| S::new(T::default(), Location::UNKNOWN, Location::UNKNOWN))
        .value
}

/// The scalar settings an `MCGW_` variable may override, by YAML path
/// joined with `_`.
const OVERRIDES: &[(&str, Slot)] = &[
    ("ports_http", |f| &mut f.ports.http),
    ("ports_https", |f| &mut f.ports.https),
    ("ports_bind", |f| &mut f.ports.bind),
    ("ports_pin_threads", |f| &mut f.ports.pin_threads),
    ("tls_certificate", |f| &mut section(&mut f.tls).certificate),
    ("tls_key", |f| &mut section(&mut f.tls).key),
    ("tls_client_ca", |f| &mut section(&mut f.tls).client_ca),
    ("tls_client_auth", |f| &mut section(&mut f.tls).client_auth),
    ("admin_port", |f| &mut f.admin.port),
    ("admin_bind", |f| &mut f.admin.bind),
    ("admin_user", |f| &mut f.admin.user),
    ("admin_password", |f| &mut f.admin.password),
    ("limits_max_header_bytes", |f| {
        &mut f.limits.max_header_bytes
    }),
    ("limits_max_headers", |f| &mut f.limits.max_headers),
    ("limits_max_uri", |f| &mut f.limits.max_uri),
    ("limits_max_body", |f| &mut f.limits.max_body),
    ("limits_max_connections", |f| &mut f.limits.max_connections),
    ("limits_max_tunnels", |f| &mut f.limits.max_tunnels),
    ("limits_max_streams", |f| &mut f.limits.max_streams),
    ("forwarding_x_forwarded", |f| &mut f.forwarding.x_forwarded),
    ("forwarding_forwarded", |f| &mut f.forwarding.forwarded),
    ("forwarding_request_id", |f| &mut f.forwarding.request_id),
    ("forwarding_traceparent", |f| &mut f.forwarding.traceparent),
    ("timeouts_header_read", |f| &mut f.timeouts.header_read),
    ("timeouts_idle", |f| &mut f.timeouts.idle),
    ("timeouts_upstream_connect", |f| {
        &mut f.timeouts.upstream_connect
    }),
    ("timeouts_drain", |f| &mut f.timeouts.drain),
    ("timeouts_body_read", |f| &mut f.timeouts.body_read),
    ("timeouts_send", |f| &mut f.timeouts.send),
    ("timeouts_tunnel_idle", |f| &mut f.timeouts.tunnel_idle),
    ("api_gateway_url", |f| &mut section(&mut f.api_gateway).url),
    ("api_gateway_user", |f| {
        &mut section(&mut f.api_gateway).user
    }),
    ("api_gateway_password", |f| {
        &mut section(&mut f.api_gateway).password
    }),
    ("api_gateway_download_settings", |f| {
        &mut section(&mut f.api_gateway).download_settings
    }),
    ("api_gateway_download_apis", |f| {
        &mut section(&mut f.api_gateway).download_apis
    }),
    ("api_gateway_poll_interval", |f| {
        &mut section(&mut f.api_gateway).poll_interval
    }),
    ("api_gateway_cache_file", |f| {
        &mut section(&mut f.api_gateway).cache_file
    }),
    ("authorization_server_issuer", |f| {
        &mut section(&mut f.authorization_server).issuer
    }),
    ("authorization_server_token_format", |f| {
        &mut section(&mut f.authorization_server).token_format
    }),
    ("authorization_server_signing_key", |f| {
        &mut section(&mut f.authorization_server).signing_key
    }),
    ("authorization_server_store", |f| {
        &mut section(&mut f.authorization_server).store
    }),
    ("authorization_server_require_https", |f| {
        &mut section(&mut f.authorization_server).require_https
    }),
    ("authorization_server_require_pkce", |f| {
        &mut section(&mut f.authorization_server).require_pkce
    }),
    ("authorization_server_token_lifetime", |f| {
        &mut section(&mut f.authorization_server).token_lifetime
    }),
    ("authorization_server_refresh_limit", |f| {
        &mut section(&mut f.authorization_server).refresh_limit
    }),
    ("authorization_server_cleanup_interval", |f| {
        &mut section(&mut f.authorization_server).cleanup_interval
    }),
    ("authorization_server_authorization_code_lifetime", |f| {
        &mut section(&mut f.authorization_server).authorization_code_lifetime
    }),
    ("authorization_server_refresh_token_lifetime", |f| {
        &mut section(&mut f.authorization_server).refresh_token_lifetime
    }),
    ("authorization_server_refresh_reuse_interval", |f| {
        &mut section(&mut f.authorization_server).refresh_reuse_interval
    }),
    ("authorization_server_approval_page", |f| {
        &mut section(&mut f.authorization_server).approval_page
    }),
    ("throttling_store", |f| {
        &mut section(&mut f.throttling).store
    }),
    ("throttling_password", |f| {
        &mut section(&mut f.throttling).password
    }),
    ("throttling_on_store_error", |f| {
        &mut section(&mut f.throttling).on_store_error
    }),
    ("throttling_timeout", |f| {
        &mut section(&mut f.throttling).timeout
    }),
    ("throttling_max_keys", |f| {
        &mut section(&mut f.throttling).max_keys
    }),
];

/// `MCGW_` variables that configure the process, not a setting
/// (`MCGW_LOG` is the log filter).
const PROCESS_VARIABLES: &[&str] = &["log"];

/// The sections of the settings `OVERRIDES` names, to tell the section
/// from the key in a name joined with `_` (longer names first).
const OVERRIDE_SECTIONS: &[&str] = &[
    "authorization_server",
    "api_gateway",
    "throttling",
    "forwarding",
    "timeouts",
    "limits",
    "ports",
    "admin",
    "tls",
];

/// Sections whose presence in the file turns a role on: a variable may
/// change their settings but never add them (a variable set for every
/// container of a platform would otherwise open an authorization server
/// on each of them).
const ROLE_SECTIONS: &[&str] = &["authorization_server"];

/// What the `MCGW_` variables did to a configuration.
#[derive(Debug, Default)]
pub struct Overrides {
    /// Variables that match no setting (reported as warnings).
    pub unknown: Vec<String>,
    /// Variables of a role's section the file does not have, with that
    /// section (reported as warnings; not applied).
    pub without_section: Vec<(String, &'static str)>,
    /// Each variable applied, with the dotted path of the setting it set.
    pub applied: Vec<(String, String)>,
}

/// `timeouts_header_read` → `timeouts.header_read`.
fn dotted(key: &str) -> String {
    OVERRIDE_SECTIONS
        .iter()
        .find_map(|section| {
            let rest = key.strip_prefix(section)?.strip_prefix('_')?;
            Some(format!("{section}.{rest}"))
        })
        .unwrap_or_else(|| key.to_owned())
}

/// Applies `MCGW_`/`mcgw_` variables to the raw model.
pub fn apply_overrides(file: &mut raw::File, env: &Env) -> Overrides {
    let mut overrides = Overrides::default();
    for (name, value) in env {
        let Some(key) = name
            .strip_prefix("MCGW_")
            .or_else(|| name.strip_prefix("mcgw_"))
        else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if PROCESS_VARIABLES.contains(&key.as_str()) {
            continue;
        }
        let role = ROLE_SECTIONS.iter().find(|section| {
            key.strip_prefix(**section)
                .is_some_and(|rest| rest.starts_with('_'))
        });
        match OVERRIDES.iter().find(|(path, _)| *path == key) {
            Some(_) if role.is_some_and(|_| file.authorization_server.is_none()) => {
                if let Some(section) = role {
                    overrides.without_section.push((name.clone(), section));
                }
            }
            Some((_, slot)) => {
                *slot(file) = Some(S::new(
                    Scalar(value.clone()),
                    Location::UNKNOWN,
                    Location::UNKNOWN,
                ));
                overrides.applied.push((name.clone(), dotted(&key)));
            }
            None => overrides.unknown.push(name.clone()),
        }
    }
    overrides
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the central's export writes of a secret reads back as the
    /// same secret on the downstream, whatever it begins with.
    #[test]
    fn a_secret_written_as_itself_reads_back_as_itself() {
        for clear in [
            "plain-password",
            "${env:HOME}",
            "  ${file:/etc/passwd}",
            "{encoded}c2VjcmV0",
            "****",
            "**** and more",
            "p@ss{encoded}",
            // Read as the prefix mistyped, were they written as they are.
            "{Encoded}abcdef",
            "  {encoded}abcdef",
        ] {
            let written = written_as_itself(clear);
            let (read, file) = secret(&written, &Env::default(), Path::new("/")).expect(clear);
            assert_eq!(read.expose(), clear, "{written}");
            assert!(file.is_none());
        }
        assert_eq!(written_as_itself("plain"), "plain");
    }

    #[test]
    fn a_file_secret_is_read_within_a_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let large = dir.path().join("large");
        std::fs::write(&large, vec![b'x'; 4 * 1024 * 1024 + 1]).expect("write");
        let problem = secret("${file:large}", &Env::default(), dir.path()).unwrap_err();
        assert!(
            matches!(&problem, SecretProblem::Unreadable(_, why) if why.contains("4 MiB")),
            "{problem:?}"
        );
        // A device gives without end: not read at all.
        let problem = secret("${file:/dev/zero}", &Env::default(), Path::new("/")).unwrap_err();
        assert!(
            matches!(&problem, SecretProblem::Unreadable(_, why) if why.contains("not a regular file")),
            "{problem:?}"
        );
    }

    #[test]
    fn every_override_names_its_setting_by_section_and_key() {
        for (key, _) in OVERRIDES {
            let path = dotted(key);
            let (section, rest) = path.split_once('.').expect("a section");
            assert!(OVERRIDE_SECTIONS.contains(&section), "{key}");
            assert_eq!(format!("{section}_{rest}"), *key);
        }
        assert_eq!(
            dotted("api_gateway_poll_interval"),
            "api_gateway.poll_interval"
        );
        assert_eq!(dotted("timeouts_header_read"), "timeouts.header_read");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("5 parsecs"), None);
        assert_eq!(duration("s"), None);
        assert_eq!(size("32KiB"), Some(32 * 1024));
        assert_eq!(size("10MiB"), Some(10 * 1024 * 1024));
        assert_eq!(size("100"), Some(100));
        assert_eq!(size("lots"), None);
    }

    #[test]
    fn secrets_in_every_form() {
        let mut env = Env::new();
        env.insert("PW".into(), "from-env".into());
        let base = Path::new("/nonexistent");
        assert_eq!(
            secret("{encoded}bWFuYWdl", &env, base).unwrap().0.expose(),
            "manage"
        );
        assert_eq!(
            secret("${env:PW}", &env, base).unwrap().0.expose(),
            "from-env"
        );
        assert_eq!(
            secret("${env:NOPE}", &env, base),
            Err(SecretProblem::MissingEnv("NOPE".into()))
        );
        assert_eq!(secret("****", &env, base), Err(SecretProblem::Masked));
        assert!(matches!(
            secret("${file:missing}", &env, base),
            Err(SecretProblem::Unreadable(..))
        ));
    }

    #[test]
    fn a_mistyped_encoded_prefix_is_refused_not_taken_as_the_secret() {
        let (env, base) = (Env::new(), Path::new("/nonexistent"));
        for mistyped in [
            "{ENCODED}bWFuYWdl",
            "{Encoded}bWFuYWdl",
            " {encoded}bWFuYWdl",
            "\t{eNcOdEd}bWFuYWdl",
        ] {
            assert_eq!(
                secret(mistyped, &env, base),
                Err(SecretProblem::MistypedEncoded),
                "{mistyped:?}"
            );
        }
        for clear in ["{encode}bWFu", "x{ENCODED}bWFu", "{encoded"] {
            assert_eq!(secret(clear, &env, base).unwrap().0.expose(), clear);
        }
        let problem = SecretProblem::MistypedEncoded.to_string();
        assert!(!problem.contains("bWFu"), "{problem}");
    }

    #[test]
    fn a_mistyped_reference_is_refused_not_taken_as_the_secret() {
        let mut env = Env::new();
        env.insert("PW".into(), "from-env".into());
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pw"), "from-file").expect("write");
        let base = dir.path();
        for mistyped in [
            "${env:PW",
            "${ENV:PW}",
            " ${env:PW}",
            "${env:PW} ",
            "${env:PW}\n",
            "${env: PW}",
            "${env:}",
            "${env:PW}${env:PW}",
            "${vault:x}",
            "${PW}",
            "${file:}",
            "${file: pw}",
            "${",
            "\t${file:pw}",
        ] {
            assert_eq!(
                secret(mistyped, &env, base),
                Err(SecretProblem::MistypedReference),
                "{mistyped:?}"
            );
        }
        assert_eq!(
            secret("${file:pw}", &env, base).unwrap().0.expose(),
            "from-file"
        );
        // Only a value that starts with `${` is read as a reference.
        for clear in ["pa${env:PW}", "$ {env:PW}", "{env:PW}", "$env:PW"] {
            assert_eq!(secret(clear, &env, base).unwrap().0.expose(), clear);
        }
        // The problem never quotes the value.
        let problem = SecretProblem::MistypedReference.to_string();
        assert!(!problem.contains("PW"), "{problem}");
    }

    #[test]
    fn a_secret_that_resolves_to_nothing_is_refused_from_every_source() {
        let mut env = Env::new();
        env.insert("EMPTY".into(), String::new());
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("blank"), "\r\n\n").expect("write");
        std::fs::write(dir.path().join("pw"), "s3cret\r\n").expect("write");
        let base = dir.path();
        assert_eq!(secret("", &env, base), Err(SecretProblem::Empty));
        assert_eq!(
            secret("${env:EMPTY}", &env, base),
            Err(SecretProblem::EmptyEnv("EMPTY".into()))
        );
        assert!(matches!(
            secret("${file:blank}", &env, base),
            Err(SecretProblem::EmptyFile(_))
        ));
        assert_eq!(
            secret("{encoded}", &env, base),
            Err(SecretProblem::EmptyEncoded)
        );
        assert_eq!(
            secret("${file:pw}", &env, base).unwrap().0.expose(),
            "s3cret"
        );
    }

    #[test]
    fn overrides_match_paths_case_insensitively() {
        let mut file = raw::File::default();
        let mut env = Env::new();
        env.insert("MCGW_API_GATEWAY_POLL_INTERVAL".into(), "10s".into());
        env.insert("mcgw_ports_http".into(), "8080".into());
        env.insert("MCGW_NOPE".into(), "x".into());
        env.insert("MCGW_LOG".into(), "debug".into());
        env.insert("PATH".into(), "/bin".into());
        let unknown = apply_overrides(&mut file, &env).unknown;
        assert_eq!(unknown, ["MCGW_NOPE"]);
        assert_eq!(file.ports.http.unwrap().value.0, "8080");
        let gateway = file.api_gateway.unwrap().value;
        assert_eq!(gateway.poll_interval.unwrap().value.0, "10s");
    }
}
