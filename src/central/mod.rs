//! A fleet following one central configuration. The central role serves its
//! settings (`export`); a downstream downloads them (`poller`), merges them
//! over its local file (`merge`) and swaps the result in through the same
//! compile-validate-swap path as a file change (the poll loop doing so is
//! `reload::follow`: nothing here changes the serving snapshot). Both ends
//! take the APIs of a download by one rule (`selection`); what an instance
//! holds of its link (the document in use, a refusal, the status) is `link`;
//! what a download may reach of the downstream (no file, no environment
//! variable, no credential of its own file unless lent) is `trust`.
//!
//! Invariants: the central is never contacted when `download_settings` and
//! `download_apis` are both false; a download is applied only when it is
//! valid on its own *and* merged; the last good download is kept in memory
//! (so a later file reload merges it again) and in `cache_file` (mode 0600,
//! written atomically), beside the record of what it was downloaded for
//! (`provenance`), and a cache is used only for that; a refused download
//! is judged once: its [`Refusal`] stands (and is asked about by ETag, not
//! downloaded again) until something that could change the verdict
//! changes — a local reload applied ([`Link::local_reload_applied`]), or
//! another document from the central — and is never persisted, so a
//! restart judges it again; credentials and downloaded secrets are never
//! logged, nor a URL's user information.

pub mod export;
pub mod link;
pub mod merge;
pub mod poller;
pub mod provenance;
pub mod selection;
pub mod trust;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::snapshot::ApiGateway;
use crate::config::{self, Env, Invalid, Loaded};

pub use crate::config::secret::shown_url;
pub use link::{Link, Refusal, Status};
pub use poller::DownloadError;

/// A downloaded settings document (a configuration file's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    /// Quoted SHA-256 of `text`: equal to the ETag a central sends for it.
    pub etag: String,
    /// The cache file: names the document in diagnostics; relative paths in
    /// it start at its directory.
    pub origin: PathBuf,
    /// When it came from the central; `None` when read from the cache file.
    pub downloaded_at: Option<SystemTime>,
}

impl Document {
    /// A document just downloaded, to be kept in `cache`.
    pub fn downloaded(text: String, cache: PathBuf) -> Document {
        Document {
            etag: export::etag_of(&text),
            text,
            origin: cache,
            downloaded_at: Some(SystemTime::now()),
        }
    }

    /// A document read back from the cache file.
    pub fn cached(text: String, cache: PathBuf) -> Document {
        Document {
            downloaded_at: None,
            ..Document::downloaded(text, cache)
        }
    }

    /// Checks the document on its own (it is a configuration by itself;
    /// no `MCGW_` overrides apply, its secrets are in clear). It may name
    /// nothing of this host: a central exports secrets in clear, and a
    /// document that named one of this machine's files (`${file:}`) or
    /// variables (`${env:}`) would have the downstream read it and send it
    /// wherever the document says. That is judged on the text first,
    /// before anything is read (`trust`); its CA bundle paths are left out
    /// of the compiling (the merge refuses those it takes, `load`), and
    /// the files the compiled document names are checked after, for a path
    /// no key of `trust` knows. It must have every section of an export,
    /// so that what is not there is known to be empty, not lost on the way.
    pub fn validate(&self) -> Result<(), Invalid> {
        trust::local_references(&self.origin, &self.text)?;
        let loaded =
            config::load_text_with(&self.origin, &self.text, &Env::new(), 0, trust::strip_paths)?;
        match loaded
            .snapshot
            .files
            .iter()
            .find(|file| **file != self.origin)
        {
            Some(file) => Err(Invalid::single(
                &self.origin,
                format!(
                    "the downloaded settings name the local file {}",
                    file.display()
                ),
                "secrets in clear or {encoded}: a central names no file of its downstreams",
            )),
            None => whole_export(&self.origin, &self.text),
        }
    }
}

/// The sections every export has, empty lists included (`null` counts as
/// absent).
#[derive(Debug, Default, serde::Deserialize)]
struct Sections {
    security_settings: Option<serde::de::IgnoredAny>,
    scope_mappings: Option<serde::de::IgnoredAny>,
    apis: Option<serde::de::IgnoredAny>,
}

/// Refuses a document that lacks one of the sections of an export: an
/// empty answer or a body cut short is no export, and merging it would
/// remove what the missing sections held.
fn whole_export(origin: &Path, text: &str) -> Result<(), Invalid> {
    let sections = config::load::parse_first::<Sections>(origin, text)?.unwrap_or_default();
    let missing: Vec<&str> = [
        ("security_settings", sections.security_settings.is_none()),
        ("scope_mappings", sections.scope_mappings.is_none()),
        ("apis", sections.apis.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, absent)| absent.then_some(name))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Invalid::single(
        origin,
        format!(
            "the downloaded settings are not a whole export (an empty answer, or one cut short): \
             no {}",
            missing.join(", no ")
        ),
        "security_settings, scope_mappings and apis, as every export has them (empty lists included)",
    ))
}

/// Why a downstream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the central gateway {} refused the credentials of user `{user}` ({status}); \
         check api_gateway.user and api_gateway.password (or --user/--password)",
        shown_url(url)
    )]
    Refused {
        url: String,
        user: String,
        status: http::StatusCode,
    },
    #[error(
        "cannot download settings from the central gateway {}: {cause}; \
         and there is no cached download at {} to start from",
        shown_url(url),
        cache.display()
    )]
    Unavailable {
        url: String,
        cause: DownloadError,
        cache: PathBuf,
    },
    #[error(
        "the settings downloaded from {} are invalid, and there is no cached download at {} to start from:\n{invalid}",
        shown_url(url),
        cache.display()
    )]
    InvalidDownload {
        url: String,
        invalid: Invalid,
        cache: PathBuf,
    },
    #[error("cannot read the cached download {}: {source}", cache.display())]
    CacheUnreadable {
        cache: PathBuf,
        source: std::io::Error,
    },
    #[error("the cached download {} is invalid:\n{invalid}", cache.display())]
    CacheInvalid { cache: PathBuf, invalid: Invalid },
    #[error("the cached download is not used: {0}")]
    CacheMismatch(provenance::Mismatch),
}

/// Compiles the file at `path` (or `text`, what was read from it), with
/// `document` merged over it when given (as the file's `api_gateway`
/// download flags say). Refused when what it takes of the document names
/// a path of this host (then nothing of it is merged), or a downloaded API
/// names an alias of the file that is not lent to downloaded APIs.
pub fn load(
    path: &Path,
    text: Option<&str>,
    env: &Env,
    generation: u64,
    document: Option<&Document>,
) -> Result<Loaded, Invalid> {
    let read;
    let text = match text {
        Some(text) => text,
        None => {
            read = config::load::read_text(path)?;
            &read
        }
    };
    let Some(document) = document else {
        return config::load_text(path, text, env, generation);
    };
    let (downloaded, _) = config::load::parse(&document.origin, &document.text)?;
    let mut borrowed = Vec::new();
    let mut paths = Ok(());
    let merged = config::load_text_with(path, text, env, generation, |file| {
        let flags = merge::Flags::of(file);
        let selection = merge::selection(file);
        paths = trust::refuse_paths(&document.origin, &downloaded, flags, &selection);
        if paths.is_ok() {
            borrowed = merge::merge(file, downloaded, flags, &selection);
        }
    });
    if let Err(mut invalid) = paths {
        if let Ok(mut loaded) = merged {
            invalid.files = std::mem::take(&mut loaded.snapshot.files);
        }
        return Err(invalid);
    }
    trust::refuse_borrowed(&document.origin, &borrowed, merged)
}

/// The document a downstream starts with: downloaded now, or (when the
/// central is unreachable or serves an invalid document) read from
/// `cache_file`. `None` when both download flags are false.
pub async fn first_document(settings: &ApiGateway) -> Result<Option<Arc<Document>>, StartError> {
    if !settings.download_settings && !settings.download_apis {
        return Ok(None);
    }
    let client = poller::client();
    let fetched = poller::download(&client, settings, &[]).await;
    let url = settings.url.clone();
    let text = match fetched {
        Ok(poller::Fetched::Document { text, .. }) => text,
        Ok(poller::Fetched::NotModified { .. }) => {
            return from_cache(settings, |cache| StartError::Unavailable {
                url,
                cause: DownloadError::Status(http::StatusCode::NOT_MODIFIED),
                cache,
            })
        }
        Err(DownloadError::Unauthorized(status)) => {
            return Err(StartError::Refused {
                url,
                user: settings.user.clone(),
                status,
            })
        }
        Err(cause) => {
            tracing::warn!(url = %shown_url(&url), error = %cause, "the central gateway is unreachable");
            return from_cache(settings, |cache| StartError::Unavailable {
                url,
                cause,
                cache,
            });
        }
    };
    let document = Document::downloaded(text, settings.cache_file.clone());
    if let Err(invalid) = document.validate() {
        tracing::error!(url = %shown_url(&url), "the downloaded settings are invalid:\n{invalid}");
        return from_cache(settings, |cache| StartError::InvalidDownload {
            url,
            invalid,
            cache,
        });
    }
    tracing::info!(url = %shown_url(&settings.url), etag = %document.etag, "settings downloaded from the central gateway");
    Ok(Some(Arc::new(document)))
}

/// The cached download, when there is a valid one: what a downstream
/// starts with when the document just downloaded does not merge with its
/// file.
pub fn cached_document(settings: &ApiGateway) -> Option<Arc<Document>> {
    read_cache(settings).ok().flatten()
}

/// Keeps `document` in the cache file once the configuration merged with
/// it is live (a document read from the cache is there already): a
/// download that was refused never replaces the last good one.
pub fn keep(settings: &ApiGateway, document: &Document) {
    if document.downloaded_at.is_some() {
        write_cache(settings, document);
    }
}

/// Writes `document` to the cache file of `settings` with its record; a
/// failure is logged (the settings serve without it).
pub fn write_cache(settings: &ApiGateway, document: &Document) {
    if let Err(error) = provenance::write(settings, &document.text) {
        tracing::warn!(cache = %settings.cache_file.display(), %error, "cannot write the cache file");
    }
}

fn from_cache(
    settings: &ApiGateway,
    missing: impl FnOnce(PathBuf) -> StartError,
) -> Result<Option<Arc<Document>>, StartError> {
    match read_cache(settings)? {
        Some(document) => Ok(Some(document)),
        None => Err(missing(settings.cache_file.clone())),
    }
}

/// The cached download, checked; `None` when there is no cache file.
fn read_cache(settings: &ApiGateway) -> Result<Option<Arc<Document>>, StartError> {
    let cache = settings.cache_file.clone();
    let text = match config::load::read_own_text(&cache) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StartError::CacheUnreadable { cache, source }),
    };
    if let Err(mismatch) = provenance::check(settings) {
        tracing::error!("the cached download is not used: {mismatch}");
        return Err(StartError::CacheMismatch(mismatch));
    }
    let document = Document::cached(text, cache.clone());
    document
        .validate()
        .map_err(|invalid| StartError::CacheInvalid {
            cache: cache.clone(),
            invalid,
        })?;
    tracing::warn!(
        cache = %cache.display(),
        "starting from the cached download of the central gateway's settings"
    );
    Ok(Some(Arc::new(document)))
}

/// Writes `text` to `path` atomically (a temporary file in the same
/// directory, then rename), readable by the owner only: it holds secrets.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "settings".to_owned());
    // A new file of a name no one could have made ready for it: one
    // another user of a shared directory made (world-readable, or a link
    // elsewhere) would be written into, secrets and all.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let (temp, file) = {
        let mut attempt = 0u32;
        loop {
            let nonce: u64 = rand::random();
            let temp = dir.join(format!(".{name}.{}.{nonce:016x}.tmp", std::process::id()));
            match options.open(&temp) {
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                opened => break (temp, opened?),
            }
        }
    };
    let written = (|| {
        let mut file = file;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(text: &str) -> Document {
        Document::cached(text.to_owned(), PathBuf::from("settings.yaml"))
    }

    #[test]
    fn the_export_of_an_empty_central_is_a_whole_document() {
        let central = "central:\n  users: [{ user: fleet, password: secret }]\n";
        let loaded =
            config::load_text(Path::new("central.yaml"), central, &Env::new(), 1).expect("central");
        let body = export::build(&loaded.snapshot, &Env::new())
            .and_then(|tree| tree.render())
            .expect("export")
            .body;
        assert_eq!(
            document(&body).validate().map_err(|e| e.to_string()),
            Ok(())
        );
    }

    #[test]
    fn a_document_without_a_section_of_the_export_is_refused() {
        let whole =
            "security_settings:\n  auth_servers:\n  - !<authServerAlias>\n    id: idp\n    \
                     localIntrospectionConfig: { issuer: \"https://idp\" }\n  aliases: []\n\
                     scope_mappings: []\napis: []\n";
        assert_eq!(
            document(whole).validate().map_err(|e| e.to_string()),
            Ok(())
        );
        for (text, missing) in [
            ("", "no security_settings, no scope_mappings, no apis"),
            (
                "# nothing\n",
                "no security_settings, no scope_mappings, no apis",
            ),
            (&whole[..whole.find("apis").expect("apis")], "no apis"),
            ("security_settings: {}\napis: []\n", "no scope_mappings"),
        ] {
            let error = document(text).validate().expect_err(text).to_string();
            assert!(error.contains("not a whole export"), "{error}");
            assert!(error.contains(&format!("{missing};")), "{text:?}: {error}");
        }
        let cut_after_the_key = format!("{}apis:\n", &whole[..whole.find("apis").expect("apis")]);
        assert!(document(&cut_after_the_key).validate().is_err());
    }

    #[test]
    fn private_file_is_written_whole_with_mode_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/settings.yaml");
        write_private(&path, "one").expect("write");
        write_private(&path, "two").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .count();
        assert_eq!(leftovers, 1, "no temporary file left");
    }

    /// In a directory others may write, a file (or a link) made ready
    /// under the name the temporary file once had is never written into.
    #[cfg(unix)]
    #[test]
    fn a_file_made_ready_beside_it_is_not_written_into() {
        let dir = tempfile::tempdir().expect("temp dir");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").expect("write");
        let ready = dir
            .path()
            .join(format!(".settings.yaml.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&elsewhere, &ready).expect("link");
        let path = dir.path().join("settings.yaml");
        write_private(&path, "secret: yes").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret: yes");
        assert_eq!(
            std::fs::read_to_string(&elsewhere).expect("read"),
            "untouched"
        );
    }
}
