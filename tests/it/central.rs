//! A central gateway and the microgateways that follow it: the export
//! endpoint, the download at start, polling with ETags, the cache file,
//! refusals, and `download-settings`.
use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use microgateway::central::poller::IDLE;
use microgateway::reload::Source;
use tokio::net::TcpListener;

use common::{env, Gateway};

const USER: &str = "fleet";
const PASSWORD: &str = "fleet-secret";

/// The start of a central's file: its ports and its one user, `USER`.
const CENTRAL: &str = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
central:
  users:
  - { user: fleet, password: "{encoded}ZmxlZXQtc2VjcmV0" }
"#;

/// A central whose `Catalog` API declares `resources`; its introspection
/// client secret is `{encoded}`, its alias password comes from the environment.
fn central_yaml(resources: &str) -> String {
    format!(
        r#"{CENTRAL}security_settings:
  auth_servers:
  - !<authServerAlias>
    id: idp
    name: Central IdP
    type: authServerAlias
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: gateway
      clientSecret: "{{encoded}}aW50cm9zcGVjdC1zZWNyZXQ="
  aliases:
  - {{ name: backend, type: basic, username: svc, password: "${{env:BACKEND_PASSWORD}}" }}
scope_mappings:
- {{ auth_server: idp, scope: view, api_scopes: ["Secure:View"] }}
- {{ auth_server: idp, scope: order, api_scopes: ["Orders:Place"] }}
apis:
- name: Catalog
  version: "1.0"
  base_path: /catalog
  upstream: {{ echo: true }}
  resources: [{resources}]
  authentication:
    type: none
- name: Secure
  version: "1.0"
  base_path: /secure
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - {{ name: View, resources: ["GET /items"] }}
- name: Orders
  version: "1.0"
  base_path: /orders
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - {{ name: Place, resources: ["POST /orders"] }}
  policies:
    outbound_auth: {{ alias: backend }}
"#
    )
}

fn central_env() -> common::Env {
    env(&[("BACKEND_PASSWORD", "backend-from-env")])
}

async fn start_central(resources: &str) -> Gateway {
    Gateway::start_with_env(&central_yaml(resources), central_env()).await
}

/// What a downstream downloads, from where, and where it caches it.
struct Downstream<'a> {
    url: String,
    password: &'a str,
    settings: bool,
    apis_flag: bool,
    apis: &'a [&'a str],
    cache: &'a Path,
}

impl Downstream<'_> {
    /// Downloading settings and every API from `url`, with the right
    /// password, keeping its download in `cache`.
    fn of_all(url: String, cache: &Path) -> Downstream<'_> {
        Downstream {
            url,
            password: PASSWORD,
            settings: true,
            apis_flag: true,
            apis: &[],
            cache,
        }
    }

    fn yaml(&self) -> String {
        let apis: Vec<String> = self.apis.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
api_gateway:
  url: "{}"
  user: {USER}
  password: "{}"
  download_settings: {}
  download_apis: {}
  apis: [{}]
  poll_interval: 1s
  cache_file: "{}"
apis:
- name: Local
  version: "1.0"
  base_path: /local
  upstream: {{ echo: true }}
  resources: ["GET /ping"]
  authentication:
    type: none
"#,
            self.url,
            self.password,
            self.settings,
            self.apis_flag,
            apis.join(", "),
            self.cache.display()
        )
    }
}

fn following<'a>(central: &Gateway, cache: &'a Path) -> Downstream<'a> {
    Downstream {
        url: format!("http://{}", central.admin.expect("central admin port")),
        password: PASSWORD,
        settings: true,
        apis_flag: true,
        apis: &[],
        cache,
    }
}

/// A temporary directory, and the path of a settings cache in it.
fn cache_in_tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("settings.yaml");
    (dir, cache)
}

fn generation(gw: &Gateway) -> u64 {
    gw.state().live.generation()
}

/// Polls `check` every 50 ms for up to 10 s, each time moving the tokio
/// clock, which the poll loops wait by, 250 ms forward: a poll interval of
/// 1 s (or a backoff) passes in a fifth of it.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        advance(Duration::from_millis(250)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not reached within 10 s: {what}");
}

/// Moves the tokio clock forward without waiting (paused only for the
/// jump: sockets are real).
async fn advance(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

async fn status_of(gw: &Gateway) -> serde_json::Value {
    gw.client
        .get(gw.admin_url("/rest/microgateway/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status JSON")
}

async fn export(gw: &Gateway, query: &str, password: &str) -> reqwest::Response {
    gw.client
        .get(gw.admin_url(&format!("/rest/microgateway/settings/export{query}")))
        .basic_auth(USER, Some(password))
        .send()
        .await
        .expect("export")
}

fn central_errors() -> u64 {
    microgateway::metrics::get()
        .config_reload
        .with_label_values(&["central", "error"])
        .get()
}

#[tokio::test]
async fn export_needs_central_credentials_and_has_secrets_in_clear() {
    let central = start_central(r#""GET /items""#).await;
    let anonymous = central
        .client
        .get(central.admin_url("/rest/microgateway/settings/export"))
        .send()
        .await
        .expect("export");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        r#"Basic realm="microgateway central""#
    );
    assert_eq!(export(&central, "", "wrong").await.status(), 401);

    let resp = export(&central, "", PASSWORD).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/yaml");
    let etag = resp.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    let body = resp.text().await.expect("body");
    assert!(body.contains("introspect-secret"), "clientSecret in clear");
    assert!(body.contains("backend-from-env"), "alias password resolved");
    assert!(!body.contains("{encoded}") && !body.contains("${env:"));
    assert!(!body.contains("central:") && !body.contains("ports:"));

    let again = central
        .client
        .get(central.admin_url("/rest/microgateway/settings/export"))
        .basic_auth(USER, Some(PASSWORD))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional export");
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    central.shutdown().await;
}

#[tokio::test]
async fn export_is_404_without_central_section() {
    let gw = Gateway::start("ports: { http: 0, bind: 127.0.0.1 }\nadmin: { port: 0 }\n").await;
    assert_eq!(export(&gw, "", PASSWORD).await.status(), 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn export_filters_apis_and_their_scope_mappings() {
    let central = start_central(r#""GET /items""#).await;
    let body = export(&central, "?apis=Secure", PASSWORD)
        .await
        .text()
        .await
        .expect("body");
    let doc: serde_json::Value = serde_saphyr::from_str(&body).expect("YAML");
    let names: Vec<&str> = doc["apis"]
        .as_array()
        .expect("apis")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["Secure"]);
    let mappings = doc["scope_mappings"].as_array().expect("mappings");
    assert_eq!(mappings.len(), 1);
    assert_eq!(
        mappings[0]["api_scopes"],
        serde_json::json!(["Secure:View"])
    );
    central.shutdown().await;
}

#[tokio::test]
async fn downstream_serves_what_the_central_defines_and_follows_its_changes() {
    let central = start_central(r#""GET /items""#).await;
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("cache/settings.yaml");
    let down = Gateway::start(&following(&central, &cache).yaml()).await;

    // The central's APIs and auth servers, merged with the local file.
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    assert_eq!(down.get("/local/ping").await.status(), 200);
    assert_eq!(
        down.get("/secure/items").await.status(),
        401,
        "oauth2 from the central"
    );
    assert_eq!(down.get("/catalog/orders").await.status(), 404);
    assert!(cache.is_file(), "the download is cached");
    let start_generation = generation(&down);

    // Unchanged: 304s and no new generation.
    let link = &down.state().central;
    eventually("two 304s", || link.status().not_modified >= 2).await;
    assert_eq!(generation(&down), start_generation);

    // A reload of the central with the same content changes nothing downstream.
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    let seen = link.status().not_modified;
    eventually("another 304", || link.status().not_modified > seen).await;
    assert_eq!(generation(&down), start_generation);

    // A change on the central is followed within the poll interval.
    let applied = link.status().applied;
    central.write_config(&central_yaml(r#""GET /items", "GET /orders""#));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    down.wait_generation(start_generation + 1).await;
    // The new generation serves first; the cache file and the status
    // follow it (nothing of a refused download may reach them).
    eventually("the download counted as applied", || {
        link.status().applied > applied
    })
    .await;
    assert_eq!(down.get("/catalog/orders").await.status(), 200);
    let status = status_of(&down).await;
    let etag = status["central"]["etag"].as_str().expect("etag").to_owned();
    assert_eq!(
        status["central"]["url"],
        format!("http://{}", central.admin.expect("admin"))
    );
    assert!(status["central"]["last_download_at"].is_u64());
    assert!(status["central"]["last_error"].is_null());
    assert_eq!(
        std::fs::read_to_string(&cache)
            .map(|t| microgateway::central::export::etag_of(&t))
            .expect("cache"),
        etag
    );

    // A file reload of the downstream merges the download again.
    down.state()
        .reload(Source::File)
        .expect("downstream reload");
    assert_eq!(down.get("/catalog/orders").await.status(), 200);

    // The central stops: the downstream keeps serving and says why it cannot update.
    central.shutdown().await;
    eventually("an error in status", || link.status().last_error.is_some()).await;
    assert_eq!(down.get("/catalog/orders").await.status(), 200);
    assert!(status_of(&down).await["central"]["last_error"].is_string());
    down.shutdown().await;
}

#[tokio::test]
async fn downstream_restarted_while_central_is_down_starts_from_cache() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let yaml = following(&central, &cache).yaml();
    let first = Gateway::start(&yaml).await;
    first.shutdown().await;
    central.shutdown().await;

    let second = Gateway::start(&yaml).await;
    assert_eq!(second.get("/catalog/items").await.status(), 200);
    assert_eq!(second.get("/secure/items").await.status(), 401);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache)
            .expect("cache")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    second.shutdown().await;
}

#[tokio::test]
async fn central_down_and_no_cache_is_a_start_error() {
    let (_dir, cache) = cache_in_tempdir();
    let closed = crate::common::Refusing::new();
    let url = format!("http://{}", closed.addr);
    let downstream = Downstream {
        url,
        password: PASSWORD,
        settings: true,
        apis_flag: true,
        apis: &[],
        cache: &cache,
    };
    let error = Gateway::try_start(&downstream.yaml(), common::Env::new())
        .await
        .err()
        .expect("no start");
    assert!(error.contains("cannot download settings"), "{error}");
    assert!(error.contains("no cached download"), "{error}");
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_start_error() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        password: "not-the-password",
        ..following(&central, &cache)
    };
    let error = Gateway::try_start(&downstream.yaml(), common::Env::new())
        .await
        .err()
        .expect("no start");
    assert!(error.contains("refused the credentials"), "{error}");
    assert!(
        !error.contains("not-the-password"),
        "no password in messages"
    );
    assert!(!cache.exists(), "nothing cached");
    central.shutdown().await;
}

#[tokio::test]
async fn downstream_takes_only_the_apis_it_names() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        apis: &["Catalog"],
        ..following(&central, &cache)
    };
    let down = Gateway::start(&downstream.yaml()).await;
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    assert_eq!(down.get("/secure/items").await.status(), 404);
    down.shutdown().await;
    central.shutdown().await;
}

/// A central whose `Orders` API has the scope `orders:read`, granted by
/// the token scope `ordering` of `idp`.
fn colon_scope_central_yaml(idp: &common::idp::Idp) -> String {
    format!(
        r#"{CENTRAL}security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig:
      issuer: "{issuer}"
      jwksuri: "{jwks}"
      audience: {audience}
scope_mappings:
- {{ auth_server: idp, scope: ordering, api_scopes: ["Orders:orders:read"] }}
apis:
- name: Orders
  version: "1.0"
  base_path: /orders
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - {{ name: "orders:read", resources: ["GET /items"] }}
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        audience = common::idp::AUDIENCE,
    )
}

/// A downstream that takes `Orders` by name grants its scope
/// `orders:read` as the central does: by the mapping, not by a token
/// scope that happens to be called so.
#[tokio::test]
async fn a_downstream_taking_an_api_grants_its_colon_scopes_as_the_central_does() {
    let idp = common::idp::Idp::start().await;
    let central = Gateway::start(&colon_scope_central_yaml(&idp)).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        apis: &["Orders"],
        ..following(&central, &cache)
    };
    let down = Gateway::start(&downstream.yaml()).await;
    for gw in [&central, &down] {
        gw.wait_ready().await;
        let call = |scope: &str| {
            gw.request(reqwest::Method::GET, "/orders/items")
                .bearer_auth(idp.token(&[scope]))
                .send()
        };
        assert_eq!(call("ordering").await.expect("mapped").status(), 200);
        assert_eq!(call("orders:read").await.expect("literal").status(), 403);
    }
    down.shutdown().await;
    central.shutdown().await;
}

/// The central's `Local` without `version` is the downstream's `Local`
/// version 1.0: the download replaces it, the merged file has one.
#[tokio::test]
async fn an_api_without_a_version_replaces_the_local_one_of_the_default_version() {
    let central = Gateway::start(&format!(
        r#"{CENTRAL}apis:
- name: Local
  base_path: /from-central
  upstream: {{ echo: true }}
  resources: ["GET /ping"]
  authentication: {{ type: none }}
"#
    ))
    .await;
    let (_dir, cache) = cache_in_tempdir();
    let down = Gateway::try_start(&following(&central, &cache).yaml(), common::Env::new())
        .await
        .expect("the download merges");
    assert_eq!(down.get("/from-central/ping").await.status(), 200);
    assert_eq!(down.get("/local/ping").await.status(), 404, "replaced");
    down.shutdown().await;
    central.shutdown().await;
}

/// A central whose auth server `idp` trusts the CA bundle `bundle` and
/// whose API `Pinned` verifies its upstream against it, beside `Catalog`.
fn pinned_central_yaml(bundle: &Path) -> String {
    let bundle = bundle.display();
    format!(
        r#"{CENTRAL}security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig:
      issuer: "https://idp.example"
      jwksuri: "https://idp.example/jwks"
      audience: catalog
      trustStoreAlias: "{bundle}"
apis:
- name: Catalog
  version: "1.0"
  base_path: /catalog
  upstream: {{ echo: true }}
  resources: ["GET /items"]
  authentication: {{ type: none }}
- name: Pinned
  version: "1.0"
  base_path: /pinned
  upstream: {{ url: "https://localhost:9/api", ca_bundle: "{bundle}" }}
  resources: ["GET /items"]
  authentication: {{ type: oauth2, auth_server: idp }}
"#
    )
}

/// A central's CA bundle paths are told at its check, and keep out only
/// the downstreams that take the entries naming them: one that takes
/// neither its settings nor `Pinned` follows it.
#[tokio::test]
async fn a_ca_bundle_of_the_central_keeps_out_only_the_downstreams_that_take_it() {
    let dir = tempfile::tempdir().expect("dir");
    let bundle = dir.path().join("ca.pem");
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("CA");
    std::fs::write(&bundle, ca.cert.pem()).expect("write CA");
    let yaml = pinned_central_yaml(&bundle);
    let file = dir.path().join("central.yaml");
    std::fs::write(&file, &yaml).expect("write central");
    let checked = microgateway::config::load(&file, &common::Env::new(), 1).expect("valid");
    let warnings: Vec<String> = checked.warnings.iter().map(|w| w.to_string()).collect();
    for told in [
        "auth server `idp` names a path of this host in localIntrospectionConfig.trustStoreAlias: every downstream that takes it (download_settings) refuses the download",
        "API `Pinned` names a path of this host in upstream.ca_bundle: every downstream that takes it (download_apis) refuses the download",
    ] {
        assert!(warnings.iter().any(|w| w.contains(told)), "{told}: {warnings:#?}");
    }

    let central = Gateway::start(&yaml).await;
    let (_catalog_dir, catalog_cache) = cache_in_tempdir();
    let catalog = Downstream {
        settings: false,
        apis: &["Catalog"],
        ..following(&central, &catalog_cache)
    };
    let down = Gateway::try_start(&catalog.yaml(), common::Env::new())
        .await
        .expect("a downstream that takes no entry naming a path follows the central");
    assert_eq!(down.get("/catalog/items").await.status(), 200);

    let (_all_dir, all_cache) = cache_in_tempdir();
    let refused = Gateway::try_start(&following(&central, &all_cache).yaml(), common::Env::new())
        .await
        .err()
        .expect("a downstream that takes them refuses the download");
    for told in [
        "the downloaded auth server `idp`: localIntrospectionConfig.trustStoreAlias names a path of this host",
        "the downloaded API `Pinned`: upstream.ca_bundle names a path of this host",
    ] {
        assert!(refused.contains(told), "{told}: {refused}");
    }
    down.shutdown().await;
    central.shutdown().await;
}

/// A central whose `Keyed` API is called with API keys, and whose
/// application `Partner` calls it (and `Catalog`) with `key`.
fn keyed_central_yaml(key: &str) -> String {
    format!(
        r#"{CENTRAL}apis:
- name: Catalog
  version: "1.0"
  base_path: /catalog
  upstream: {{ echo: true }}
  resources: ["GET /items"]
  authentication: {{ type: none }}
- name: Keyed
  version: "1.0"
  base_path: /keyed
  upstream: {{ echo: true }}
  resources: ["GET /items"]
  authentication: {{ type: api_key }}
applications:
- name: Partner
  api_keys: ["{key}"]
  apis: ["Keyed", "Catalog:1.0"]
"#
    )
}

/// A fleet follows the central's applications as it follows its APIs:
/// the key the central gives an application opens the API downstream,
/// the central's change of key is followed, and a downstream that takes
/// some APIs only keeps the application's subscriptions to those.
#[tokio::test]
async fn downstream_follows_the_centrals_applications() {
    let central = Gateway::start_with_env(
        &keyed_central_yaml("${env:PARTNER_KEY}"),
        env(&[("PARTNER_KEY", "partner-key-1")]),
    )
    .await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        apis: &["Keyed"],
        ..following(&central, &cache)
    };
    let down = Gateway::start(&downstream.yaml()).await;
    let call = |key: &'static str| {
        down.request(reqwest::Method::GET, "/keyed/items")
            .header("X-API-Key", key)
            .send()
    };
    assert_eq!(call("partner-key-1").await.unwrap().status(), 200);
    assert_eq!(call("partner-key-2").await.unwrap().status(), 401);
    assert_eq!(down.get("/catalog/items").await.status(), 404, "not taken");

    let start_generation = generation(&down);
    central.write_config(&keyed_central_yaml("partner-key-2"));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    down.wait_generation(start_generation + 1).await;
    assert_eq!(call("partner-key-2").await.unwrap().status(), 200);
    assert_eq!(call("partner-key-1").await.unwrap().status(), 401);
    down.shutdown().await;
    central.shutdown().await;
}

#[tokio::test]
async fn settings_alone_give_local_apis_the_central_auth_servers() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        apis_flag: false,
        ..following(&central, &cache)
    };
    // The local API names an auth server only the central defines.
    let yaml = downstream.yaml().replace(
        "  authentication:\n    type: none",
        "  authentication: { type: oauth2, auth_server: idp }",
    );
    let down = Gateway::start(&yaml).await;
    assert_eq!(down.get("/local/ping").await.status(), 401);
    assert_eq!(
        down.get("/catalog/items").await.status(),
        404,
        "APIs not downloaded"
    );
    down.shutdown().await;
    central.shutdown().await;
}

/// A stand-in central: answers every request with `body` (200, no ETag)
/// and counts requests.
struct FakeCentral {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCentral {
    async fn start(body: &str) -> FakeCentral {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body.to_owned()));
        let (h, b) = (hits.clone(), body.clone());
        let task = common::serve_each(listener, move |_req: Request<Incoming>| {
            h.fetch_add(1, Ordering::SeqCst);
            let text = b.lock().expect("body").clone();
            async move { Response::new(Full::new(Bytes::from(text))) }
        });
        FakeCentral {
            addr,
            hits,
            body,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for FakeCentral {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const GOOD_DOCUMENT: &str = r#"
security_settings: { auth_servers: [], aliases: [] }
scope_mappings: []
apis:
- { name: Remote, version: "1.0", base_path: /remote, upstream: { echo: true }, resources: ["GET /a"], authentication: { type: none } }
"#;

/// A scope mapping naming an API scope no API declares.
const BAD_DOCUMENT: &str = r#"
security_settings:
  auth_servers:
  - { id: idp, localIntrospectionConfig: { issuer: "http://idp" } }
scope_mappings:
- { auth_server: idp, scope: view, api_scopes: ["Nowhere:View"] }
apis:
- { name: Remote, version: "1.0", base_path: /remote, upstream: { echo: true }, resources: ["GET /b"], authentication: { type: none } }
"#;

/// `api_gateway.url` changed to another name of a central that serves the
/// same settings: nothing new is applied, but the cache file's record is
/// written again for the new URL, so a start while it is down uses it.
#[tokio::test]
async fn a_central_confirming_the_settings_in_use_under_a_new_url_records_the_cache_for_it() {
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (_dir, cache) = cache_in_tempdir();
    let down = Gateway::start(&Downstream::of_all(fake.url(), &cache).yaml()).await;
    assert_eq!(down.get("/remote/a").await.status(), 200);
    let record = microgateway::central::provenance::record_path(&cache);
    let recorded = || std::fs::read_to_string(&record).unwrap_or_default();
    assert!(recorded().contains("127.0.0.1"), "{}", recorded());

    let renamed = format!("http://localhost:{}", fake.addr.port());
    let generation_before = generation(&down);
    down.write_config(&Downstream::of_all(renamed.clone(), &cache).yaml());
    down.wait_generation(generation_before + 1).await;
    eventually("the record names the new URL", || {
        recorded().contains("localhost")
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&cache).expect("cache"),
        GOOD_DOCUMENT
    );
    let mut settings = down
        .state()
        .live
        .snapshot()
        .api_gateway
        .clone()
        .expect("api_gateway");
    settings.url = renamed;
    assert!(microgateway::central::provenance::check(&settings).is_ok());
    down.shutdown().await;
}

#[tokio::test]
async fn invalid_download_is_refused_and_the_last_good_one_keeps_serving() {
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream::of_all(fake.url(), &cache);
    let down = Gateway::start(&downstream.yaml()).await;
    assert_eq!(down.get("/remote/a").await.status(), 200);
    let start_generation = generation(&down);
    let errors = central_errors();

    *fake.body.lock().expect("body") = BAD_DOCUMENT.to_owned();
    let link = &down.state().central;
    eventually("a refusal", || link.status().refused >= 1).await;
    assert!(
        central_errors() > errors,
        "config_reload_total{{source=central,result=error}}"
    );
    // A central that ignores `If-None-Match` sends the same refused
    // document again: it is not judged again.
    let hits = fake.hits();
    eventually("three more polls", || fake.hits() >= hits + 3).await;
    assert_eq!(link.status().refused, 1, "{}", link_summary(&down));
    assert_eq!(generation(&down), start_generation);
    assert_eq!(
        down.get("/remote/a").await.status(),
        200,
        "old snapshot kept"
    );
    assert_eq!(down.get("/remote/b").await.status(), 404);
    let status = status_of(&down).await;
    let error = status["central"]["last_error"]
        .as_str()
        .expect("last_error");
    assert!(error.contains("Nowhere:View"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&cache).expect("cache"),
        GOOD_DOCUMENT,
        "the cache keeps the last good download"
    );
    down.shutdown().await;
}

#[tokio::test]
async fn central_is_never_contacted_when_both_flags_are_false() {
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        url: fake.url(),
        password: PASSWORD,
        settings: false,
        apis_flag: false,
        apis: &[],
        cache: &cache,
    };
    let down = Gateway::start(&downstream.yaml()).await;
    assert_eq!(down.get("/local/ping").await.status(), 200);
    assert_eq!(down.get("/remote/a").await.status(), 404);
    // Two rounds of the poll loop, on the tokio clock it waits by.
    for _ in 0..2 {
        advance(IDLE + Duration::from_secs(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(down.get("/local/ping").await.status(), 200);
    assert_eq!(fake.hits(), 0);
    assert!(!cache.exists());
    down.shutdown().await;
}

fn run_binary(args: Vec<String>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .args(args)
        .env_remove("MCGW_API_GATEWAY_PASSWORD")
        .output()
        .expect("run microgateway")
}

#[tokio::test]
async fn download_settings_writes_a_file_that_check_accepts() {
    let central = start_central(r#""GET /items""#).await;
    let dir = tempfile::tempdir().expect("dir");
    let out: PathBuf = dir.path().join("downloaded.yaml");
    let args: Vec<String> = vec![
        "download-settings".into(),
        "--gateway".into(),
        format!("http://{}", central.admin.expect("admin")),
        "--user".into(),
        USER.into(),
        "--password".into(),
        PASSWORD.into(),
        "--apis".into(),
        "Catalog,Secure".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    let download = tokio::task::spawn_blocking(move || run_binary(args))
        .await
        .expect("join");
    assert!(
        download.status.success(),
        "{}",
        String::from_utf8_lossy(&download.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("written");
    assert!(text.contains("Catalog") && !text.contains("name: Orders"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("out").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let check_args = vec!["check".into(), "-c".into(), out.display().to_string()];
    let check = tokio::task::spawn_blocking(move || run_binary(check_args))
        .await
        .expect("join");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    central.shutdown().await;
}

/// Plain HTTP to a central on loopback is allowed because it never leaves
/// the machine: a proxy the environment names must not take it (with the
/// credentials and the fleet's secrets) elsewhere.
#[tokio::test]
async fn a_central_on_loopback_is_never_reached_through_a_proxy() {
    let central = start_central(r#""GET /items""#).await;
    // A proxy that answers 502 to whatever reaches it, and counts.
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = proxy.local_addr().expect("addr");
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut tcp, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = tcp
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("downloaded.yaml");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command
        .args(["download-settings", "--gateway"])
        .arg(format!("http://{}", central.admin.expect("admin")))
        .args(["--user", USER, "--password", PASSWORD, "-o"])
        .arg(&out)
        .env_remove("MCGW_API_GATEWAY_PASSWORD")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
        command.env(name, format!("http://{proxy_addr}"));
    }
    let download = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    assert!(
        download.status.success(),
        "{}",
        String::from_utf8_lossy(&download.stderr)
    );
    assert!(out.exists());
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the proxy was used");
    central.shutdown().await;
}

// ---- the first download, the cache and what a document may name ----

/// Valid on its own, but its API takes the base path of the downstream's
/// local API `/local`: the merged configuration is invalid.
const CLASHING_DOCUMENT: &str = r#"
security_settings: { auth_servers: [], aliases: [] }
scope_mappings: []
apis:
- { name: Clash, version: "1.0", base_path: /local, upstream: { echo: true }, resources: ["GET /ping"], authentication: { type: none } }
"#;

/// A download that is valid alone but does not merge with the file is
/// refused at start as it is while polling: the downstream starts from the
/// last good download, which stays on disk.
#[tokio::test]
async fn start_keeps_the_good_cache_when_the_download_does_not_merge() {
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream::of_all(fake.url(), &cache);
    let yaml = downstream.yaml();
    let first = Gateway::start(&yaml).await;
    assert_eq!(first.get("/remote/a").await.status(), 200);
    first.shutdown().await;
    assert_eq!(
        std::fs::read_to_string(&cache).expect("cache"),
        GOOD_DOCUMENT
    );

    // The central now serves a document the downstream cannot merge.
    *fake.body.lock().expect("body") = CLASHING_DOCUMENT.to_owned();
    let second = Gateway::start(&yaml).await;
    assert_eq!(
        second.get("/remote/a").await.status(),
        200,
        "from the cache"
    );
    second.shutdown().await;
    let cached = std::fs::read_to_string(&cache).expect("cache");
    assert_eq!(
        cached, GOOD_DOCUMENT,
        "the refused download replaced the good one"
    );
}

/// The cached download is refused unless it is a regular file (a FIFO
/// would hold the start for good), and read within the configuration's
/// bound.
#[cfg(unix)]
#[tokio::test]
async fn cache_file_is_read_bounded_and_regular_when_the_central_is_down() {
    let closed = crate::common::Refusing::new();
    let (_dir, cache) = cache_in_tempdir();
    common::mkfifo(&cache);
    let yaml = Downstream::of_all(format!("http://{}", closed.addr), &cache).yaml();
    // On a thread of its own: an open that waits would hold this one.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(Gateway::try_start(&yaml, common::Env::new()));
        let _ = tx.send(result.err());
    });
    let error = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("a FIFO as the cache file does not hold the start")
        .expect("no start");
    assert!(error.contains("not a regular file"), "{error}");

    let (_dir, cache) = cache_in_tempdir();
    std::fs::write(&cache, "#".repeat(4 * 1024 * 1024 + 1)).expect("write cache");
    let downstream = Downstream::of_all(format!("http://{}", closed.addr), &cache);
    let result = Gateway::try_start(&downstream.yaml(), common::Env::new()).await;
    let error = result.err().expect("no start");
    assert!(error.contains("4 MiB"), "{error}");
}

/// A central exports secrets in clear: a document naming a file of the
/// downstream (`${file:}`) is refused, and never read into a credential
/// sent upstream.
#[tokio::test]
async fn downloaded_document_cannot_read_the_downstreams_local_files() {
    let upstream = common::Upstream::start().await;
    // A secret of the downstream's own host, which the central never had.
    let local = tempfile::tempdir().expect("dir");
    let secret_path = local.path().join("downstream-only-secret");
    std::fs::write(&secret_path, "downstream-private-value\n").expect("write");
    let document = format!(
        r#"
security_settings:
  auth_servers: []
  aliases:
  - {{ name: grab, type: basic, username: x, password: "${{file:{}}}" }}
scope_mappings: []
apis:
- name: Remote
  version: "1.0"
  base_path: /remote
  upstream: {{ url: "{}" }}
  resources: ["GET /a"]
  authentication: {{ type: none }}
  policies: {{ outbound_auth: {{ alias: grab }} }}
"#,
        secret_path.display(),
        upstream.url("/up")
    );
    let fake = FakeCentral::start(&document).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream::of_all(fake.url(), &cache);
    let error = Gateway::try_start(&downstream.yaml(), common::Env::new())
        .await
        .err()
        .expect("the download is refused");
    assert!(error.contains("names a file of this host"), "{error}");
    assert!(!cache.exists(), "a refused download is not kept");
    assert_eq!(upstream.hits(), 0);
}

/// The downstream's own configuration file named relative to where the
/// document is checked (`${file:microgateway.yaml}`, beside a cache file
/// of that name): refused on the text, before any file is read, so the
/// file is read into no secret and sent to no endpoint the document names.
#[tokio::test]
async fn a_download_naming_the_downstreams_config_file_is_refused() {
    let introspection = common::Upstream::start().await;
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let cache_dir = tempfile::tempdir().expect("dir");
    // Named as the configuration file is, in another directory.
    let cache = cache_dir.path().join("microgateway.yaml");
    let down = Gateway::start(&Downstream::of_all(fake.url(), &cache).yaml()).await;
    assert_eq!(down.get("/remote/a").await.status(), 200);
    let start_generation = generation(&down);

    *fake.body.lock().expect("body") = format!(
        r#"
security_settings:
  auth_servers:
  - id: grab
    remoteIntrospectionConfig:
      introspectionEndpoint: "{}"
      clientId: gateway
      clientSecret: "${{file:microgateway.yaml}}"
  aliases: []
scope_mappings: []
apis:
- {{ name: Grab, version: "1.0", base_path: /grab, upstream: {{ echo: true }}, resources: ["GET /a"], authentication: {{ type: oauth2, auth_server: grab }} }}
"#,
        introspection.url("/introspect")
    );
    let link = &down.state().central;
    eventually("the download refused", || link.status().refused >= 1).await;
    let error = link.status().last_error.expect("the refusal in the status");
    assert!(
        error.contains(
            "security_settings.auth_servers[0].remoteIntrospectionConfig.clientSecret: \"${file:microgateway.yaml}\" names a file of this host"
        ),
        "{error}"
    );
    assert_eq!(generation(&down), start_generation);
    assert_eq!(
        down.get("/remote/a").await.status(),
        200,
        "the last good configuration serves"
    );
    let grab = down
        .request(reqwest::Method::GET, "/grab/a")
        .bearer_auth("an-opaque-token")
        .send()
        .await
        .expect("request");
    assert_eq!(grab.status(), 404);
    assert_eq!(
        introspection.hits(),
        0,
        "a request to the document's endpoint"
    );
    assert_eq!(
        std::fs::read_to_string(&cache).expect("cache"),
        GOOD_DOCUMENT
    );
    down.shutdown().await;
}

/// The writer end of the FIFO at its path: opened and closed, it lets
/// whoever waits to read go on (an end of file). Dropped unreleased, it
/// does so for a reader waiting then: also when the test fails while one
/// waits.
#[cfg(unix)]
struct FifoWriter {
    path: PathBuf,
    released: bool,
}

#[cfg(unix)]
impl FifoWriter {
    fn new(path: PathBuf) -> FifoWriter {
        FifoWriter {
            path,
            released: false,
        }
    }

    /// Whether a reader was waiting, and has been let go on.
    fn try_release(&mut self) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        // Not blocking: with no reader waiting, opening fails at once.
        self.released = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .is_ok();
        self.released
    }
}

#[cfg(unix)]
impl Drop for FifoWriter {
    fn drop(&mut self) {
        if !self.released {
            self.try_release();
        }
    }
}

/// A document naming a FIFO (whose reader waits for a writer that never
/// comes) is refused at once, without opening it, and the reload lock is
/// free for the local reloads that follow.
#[cfg(unix)]
#[tokio::test]
async fn a_download_naming_a_fifo_is_refused_at_once_and_local_reloads_go_on() {
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (dir, cache) = cache_in_tempdir();
    let fifo = dir.path().join("secret");
    common::mkfifo(&fifo);
    let _writer = FifoWriter::new(fifo.clone());
    let down = Gateway::start(&Downstream::of_all(fake.url(), &cache).yaml()).await;
    let start_generation = generation(&down);

    *fake.body.lock().expect("body") = format!(
        r#"
security_settings:
  auth_servers: []
  aliases:
  - {{ name: grab, type: basic, username: x, password: "${{file:{}}}" }}
scope_mappings: []
apis: []
"#,
        fifo.display()
    );
    let link = &down.state().central;
    eventually("the download refused", || link.status().refused >= 1).await;
    let error = link.status().last_error.expect("the refusal in the status");
    assert!(
        error.contains("security_settings.aliases[0].password"),
        "{error}"
    );
    let reload = down.state().reloader.reload_on_blocking_pool(Source::Api);
    let reloaded = tokio::time::timeout(Duration::from_secs(10), reload)
        .await
        .expect("the local reload finished");
    assert_eq!(reloaded.expect("applied"), start_generation + 1);
    assert_eq!(down.get("/remote/a").await.status(), 200);
    down.shutdown().await;
}

/// A REST reload answered as soon as the admin port answers merges the
/// document downloaded at start. Whether it lands before the start has
/// returned (after the listeners are up, the start still writes the
/// cache file) is up to the machine: nothing can hold the start there
/// any more, since the cache file and its record are read only when
/// regular. The document is the link's before anything listens, so a
/// reload in that window keeps the downloaded APIs too.
#[tokio::test]
async fn a_reload_while_the_gateway_starts_keeps_the_downloaded_apis() {
    common::crypto();
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (dir, cache) = cache_in_tempdir();
    let admin_port = common::ports::unused();
    let yaml = Downstream::of_all(fake.url(), &cache).yaml().replace(
        "admin: { port: 0 }",
        &format!(
            r#"admin: {{ port: {admin_port}, user: Administrator, password: "{{encoded}}bWFuYWdl" }}"#
        ),
    );
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(&config, yaml).expect("write config");

    // A runtime of its own, on a thread of its own, starts the gateway
    // while this one reloads it.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let starting = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let started = microgateway::gateway::Gateway::start(&config, common::Env::new()).await;
            let gateway = started.expect("the downstream starts");
            let _ = started_tx.send(gateway.http.expect("http"));
            let _ = stop_rx.await;
            gateway.shutdown().await;
        });
    });

    let client = common::client();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let mut reloaded = false;
    for _ in 0..4000 {
        let reload = client
            .post(format!("{admin}/rest/microgateway/reload"))
            .basic_auth("Administrator", Some("manage"))
            .send()
            .await;
        if let Ok(reload) = reload {
            assert_eq!(reload.status(), 200);
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reloaded, "the admin port did not answer within 20 s");

    let started =
        tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)));
    let http = started.await.expect("join").expect("the start returned");
    let remote = client
        .get(format!("http://{http}/remote/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        remote.status(),
        200,
        "the downloaded API was lost to the reload during the start"
    );
    let _ = stop_tx.send(());
    tokio::task::spawn_blocking(move || starting.join())
        .await
        .expect("join")
        .expect("the downstream's thread");
}

/// The downstream's own alias, whose password comes from its environment.
const LOCAL_ALIAS: &str = r#"security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: "${env:BACKEND_PASSWORD}" }
apis:"#;

/// A document whose API sends the alias `backend` to `upstream` (with an
/// alias of that name of its own, so that it is valid alone).
fn borrowing_document(upstream: &common::Upstream) -> String {
    format!(
        r#"
security_settings:
  auth_servers: []
  aliases:
  - {{ name: backend, type: basic, username: dummy, password: dummy }}
scope_mappings: []
apis:
- name: Borrow
  version: "1.0"
  base_path: /borrow
  upstream: {{ url: "{}" }}
  resources: ["GET /a"]
  authentication: {{ type: none }}
  policies: {{ outbound_auth: {{ alias: backend }} }}
"#,
        upstream.url("/up")
    )
}

/// With `download_apis` alone, the download's aliases are not merged: a
/// downloaded API naming `backend` would send the downstream's own
/// credentials to the upstream the central chose. The download is refused
/// unless the local alias lends itself (`allow_downloaded_apis: true`).
#[tokio::test]
async fn a_downloaded_api_sends_a_local_alias_upstream_only_where_it_is_lent() {
    let upstream = common::Upstream::start().await;
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        settings: false,
        ..Downstream::of_all(fake.url(), &cache)
    };
    let yaml = downstream
        .yaml()
        .replacen("apis:\n-", &format!("{LOCAL_ALIAS}\n-"), 1);
    let env = env(&[("BACKEND_PASSWORD", "downstream-only-password")]);
    let down = Gateway::start_with_env(&yaml, env.clone()).await;
    assert_eq!(down.get("/remote/a").await.status(), 200);
    let start_generation = generation(&down);

    *fake.body.lock().expect("body") = borrowing_document(&upstream);
    let link = &down.state().central;
    eventually("the download refused", || link.status().refused >= 1).await;
    let error = link.status().last_error.expect("the refusal in the status");
    assert!(
        error.contains(
            "the downloaded API `Borrow` 1.0 names the alias `backend` of this gateway's own file"
        ),
        "{error}"
    );
    assert!(error.contains("allow_downloaded_apis: true"), "{error}");
    assert_eq!(generation(&down), start_generation);
    assert_eq!(
        down.get("/remote/a").await.status(),
        200,
        "the last good configuration serves"
    );
    assert_eq!(down.get("/borrow/a").await.status(), 404);
    assert_eq!(upstream.hits(), 0);
    down.shutdown().await;

    // Lent: the same document is served, with the local credentials.
    let lent = yaml.replace(
        r#"password: "${env:BACKEND_PASSWORD}" }"#,
        r#"password: "${env:BACKEND_PASSWORD}", allow_downloaded_apis: true }"#,
    );
    let down = Gateway::start_with_env(&lent, env).await;
    assert_eq!(down.get("/borrow/a").await.status(), 200);
    let sent = base64::engine::general_purpose::STANDARD.encode("svc:downstream-only-password");
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Basic {sent}").as_str()
    );
    down.shutdown().await;
}

/// User information in `api_gateway.url` is masked on the admin port, as
/// `api_gateway.password` is.
#[tokio::test]
async fn status_and_settings_do_not_show_a_password_in_the_central_url() {
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        url: "https://fleet:url-password-123@central.example:9485".to_owned(),
        password: PASSWORD,
        settings: false,
        apis_flag: false,
        apis: &[],
        cache: &cache,
    };
    let yaml = downstream.yaml().replace(
        "admin: { port: 0 }",
        r#"admin: { port: 0, user: Administrator, password: "{encoded}bWFuYWdl" }"#,
    );
    let gw = Gateway::start(&yaml).await;
    let mut leaks = Vec::new();
    for path in ["/rest/microgateway/status", "/rest/microgateway/settings"] {
        let text = gw
            .client
            .get(gw.admin_url(path))
            .basic_auth("Administrator", Some("manage"))
            .send()
            .await
            .expect("admin")
            .text()
            .await
            .expect("text");
        if text.contains("url-password-123") {
            leaks.push(path);
        }
    }
    gw.shutdown().await;
    assert!(
        leaks.is_empty(),
        "the password in api_gateway.url is shown by {leaks:?}"
    );
}

// ---- the configuration life cycle of a downstream, under faults ----

/// The downstream's central link as the status shows it, for failure messages.
/// The downstream's operator moves its local API (`yaml`'s, at `/local`)
/// out of the way: the central's download, refused while the two clashed,
/// is applied, its API serves at `/local`, and the error is gone.
async fn move_the_local_api_aside(down: &Gateway, yaml: &str) {
    let link = &down.state().central;
    let before = generation(down);
    down.write_config(&yaml.replace("base_path: /local", "base_path: /local-moved"));
    down.wait_generation(before + 1).await;
    eventually("the download applied", || link.status().applied >= 1).await;
    assert_eq!(
        down.get("/local/items").await.status(),
        200,
        "{}",
        link_summary(down)
    );
    assert!(link.status().last_error.is_none());
}

fn link_summary(gw: &Gateway) -> String {
    let status = gw.state().central.status();
    format!(
        "applied {}, refused {}, not_modified {}, last_error {:?}",
        status.applied, status.refused, status.not_modified, status.last_error
    )
}

/// A download refused because it clashed with the local file is applied
/// once the local file no longer clashes: the central's current settings
/// are not left behind by a 304 that names the refused document.
#[tokio::test]
async fn a_refused_download_is_applied_once_the_local_file_no_longer_clashes() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let yaml = following(&central, &cache).yaml();
    let down = Gateway::start(&yaml).await;
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    let link = &down.state().central;

    // The central moves Catalog onto the base path of the downstream's local API.
    central.write_config(
        &central_yaml(r#""GET /items""#).replace("base_path: /catalog", "base_path: /local"),
    );
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    eventually("the clashing download refused", || {
        link.status().refused >= 1
    })
    .await;
    assert_eq!(
        down.get("/catalog/items").await.status(),
        200,
        "last good kept"
    );

    // The downstream's operator moves the local API out of the way.
    let before = generation(&down);
    down.write_config(&yaml.replace("base_path: /local", "base_path: /local-moved"));
    down.wait_generation(before + 1).await;
    assert_eq!(down.get("/local-moved/ping").await.status(), 200);

    // The central's current settings merge now: a few polls later they serve.
    for _ in 0..40 {
        if link.status().applied >= 1 {
            break;
        }
        advance(Duration::from_millis(500)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        down.get("/local/items").await.status(),
        200,
        "the central's current settings were never applied ({})",
        link_summary(&down)
    );
    down.shutdown().await;
    central.shutdown().await;
}

/// One request a downstream sent its central, as the relay passed it on.
#[derive(Debug, Clone)]
struct Relayed {
    if_none_match: Option<String>,
    status: u16,
}

/// Between a downstream and its central: passes each request on over HTTP
/// and records the `If-None-Match` it carried and the status answered, so
/// a test counts the full downloads the central served.
struct CountingRelay {
    addr: SocketAddr,
    relayed: Arc<Mutex<Vec<Relayed>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    async fn start(central: &Gateway) -> CountingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = format!("http://{}", central.admin.expect("central admin port"));
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let (record, client) = (relayed.clone(), common::client());
        let task = common::serve_each(listener, move |req: Request<Incoming>| {
            let (record, client, target) = (record.clone(), client.clone(), target.clone());
            async move { relay(&client, &target, &record, req).await }
        });
        CountingRelay {
            addr,
            relayed,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn relayed(&self) -> Vec<Relayed> {
        self.relayed.lock().expect("relayed").clone()
    }

    /// Requests relayed after the first `from` that the central answered 200.
    fn downloads_since(&self, from: usize) -> usize {
        let relayed = self.relayed();
        relayed[from.min(relayed.len())..]
            .iter()
            .filter(|r| r.status == 200)
            .count()
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `req` on to `target` with the fields a download carries and
/// answers with what came back (status, `ETag`, body).
async fn relay(
    client: &reqwest::Client,
    target: &str,
    record: &Mutex<Vec<Relayed>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut onward = client.get(format!("{target}{path}"));
    for name in ["authorization", "accept", "if-none-match"] {
        if let Some(value) = req.headers().get(name) {
            onward = onward.header(name, value.clone());
        }
    }
    let answer = onward.send().await.expect("the central answers");
    let status = answer.status();
    let etag = answer.headers().get("etag").cloned();
    let body = answer.bytes().await.expect("the central's body");
    record.lock().expect("relayed").push(Relayed {
        if_none_match: req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        status: status.as_u16(),
    });
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Some(etag) = etag {
        response.headers_mut().insert("etag", etag);
    }
    response
}

/// The central's settings moved onto the base path of the downstream's
/// local API (`/local`): they clash with the downstream's file.
fn clashing_central(resources: &str) -> String {
    central_yaml(resources).replace("base_path: /catalog", "base_path: /local")
}

/// A downstream of `central` through a counting relay, once it has refused
/// the central's settings for a clash with its file: the relay's count of
/// requests then, and the configuration the downstream started with.
async fn refusing_through_relay(
    central: &Gateway,
    relay: &CountingRelay,
    cache: &Path,
) -> (Gateway, usize, String) {
    let yaml = Downstream::of_all(relay.url(), cache).yaml();
    let down = Gateway::start(&yaml).await;
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    central.write_config(&clashing_central(r#""GET /items""#));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    let link = &down.state().central;
    eventually("the clashing download refused", || {
        link.status().refused >= 1
    })
    .await;
    let refused_at = relay.relayed().len();
    (down, refused_at, yaml)
}

/// Moves the tokio clock on until the downstream has asked its central
/// `polls` more times through `relay` since `from` requests.
async fn polls_since(relay: &CountingRelay, from: usize, polls: usize) {
    eventually(&format!("{polls} more polls"), || {
        relay.relayed().len() >= from + polls
    })
    .await;
}

/// A refused document is downloaded once: later polls ask the central with
/// its ETag beside the one in use, a 304 names it, and nothing is merged,
/// refused or counted again; the status goes on saying why it is refused.
/// Once the local file no longer clashes, the next poll downloads it again
/// and it applies.
#[tokio::test]
async fn a_refused_download_is_not_downloaded_again_until_the_local_file_changes() {
    let central = start_central(r#""GET /items""#).await;
    let relay = CountingRelay::start(&central).await;
    let (_dir, cache) = cache_in_tempdir();
    let (down, refused_at, yaml) = refusing_through_relay(&central, &relay, &cache).await;
    let link = &down.state().central;
    let reload_status = down.state().live.status();
    let error = link.status().last_error.expect("the refusal in the status");
    assert!(error.contains("refused"), "{error}");

    polls_since(&relay, refused_at, 3).await;
    assert_eq!(
        relay.downloads_since(refused_at),
        0,
        "the refused document downloaded again ({}; {:?})",
        link_summary(&down),
        relay.relayed()
    );
    let asked = relay.relayed()[refused_at]
        .if_none_match
        .clone()
        .expect("a conditional request");
    assert_eq!(asked.split(", ").count(), 2, "in use and refused: {asked}");
    let status = link.status();
    assert_eq!(status.refused, 1, "{}", link_summary(&down));
    assert_eq!(
        down.state().live.status().last_reload_at,
        reload_status.last_reload_at,
        "a failed reload recorded again"
    );
    assert_eq!(
        status_of(&down).await["central"]["last_error"].as_str(),
        Some(error.as_str()),
        "the status no longer says why the central's settings are refused"
    );

    let fixed_at = relay.relayed().len();
    move_the_local_api_aside(&down, &yaml).await;
    assert_eq!(relay.downloads_since(fixed_at), 1);
    down.shutdown().await;
    central.shutdown().await;
}

/// A central that goes back to the document in use after serving one the
/// downstream refused: the refusal no longer stands, in the link's status
/// and in the reload status alike.
#[tokio::test]
async fn a_central_back_to_the_document_in_use_clears_the_refusal() {
    let central = start_central(r#""GET /items""#).await;
    let relay = CountingRelay::start(&central).await;
    let (_dir, cache) = cache_in_tempdir();
    let (down, _, _) = refusing_through_relay(&central, &relay, &cache).await;
    let link = &down.state().central;
    assert!(down.state().live.status().last_reload_error.is_some());
    central.write_config(&central_yaml(r#""GET /items""#));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    eventually("the refusal no longer stands", || {
        link.status().last_error.is_none() && down.state().live.status().last_reload_error.is_none()
    })
    .await;
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    down.shutdown().await;
    central.shutdown().await;
}

/// While a download stands refused, a new document from the central (another
/// ETag) is downloaded and judged again, once; one that merges applies.
#[tokio::test]
async fn a_new_document_from_the_central_is_judged_again_while_one_stands_refused() {
    let central = start_central(r#""GET /items""#).await;
    let relay = CountingRelay::start(&central).await;
    let (_dir, cache) = cache_in_tempdir();
    let (down, refused_at, _) = refusing_through_relay(&central, &relay, &cache).await;
    let link = &down.state().central;

    // Another document, clashing still: downloaded once, refused once.
    central.write_config(&clashing_central(r#""GET /items", "GET /orders""#));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    eventually("the second document refused", || link.status().refused >= 2).await;
    let second_at = relay.relayed().len();
    polls_since(&relay, second_at, 3).await;
    assert_eq!(
        relay.downloads_since(refused_at),
        1,
        "{}; {:?}",
        link_summary(&down),
        relay.relayed()
    );
    assert_eq!(link.status().refused, 2, "{}", link_summary(&down));

    // A document that merges: downloaded and applied.
    central.write_config(&central_yaml(r#""GET /items", "GET /orders""#));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    eventually("the third document applied", || link.status().applied >= 1).await;
    assert_eq!(down.get("/catalog/orders").await.status(), 200);
    assert!(link.status().last_error.is_none());
    assert_eq!(relay.downloads_since(refused_at), 2);
    down.shutdown().await;
    central.shutdown().await;
}

/// A download is merged with the configuration that serves, not with an
/// edit of the local file that was refused (or is still being written):
/// a typo on disk does not block the central's changes.
#[tokio::test]
async fn a_download_merges_with_the_serving_file_not_a_refused_edit_on_disk() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let yaml = following(&central, &cache).yaml();
    let down = Gateway::start(&yaml).await;
    assert_eq!(down.get("/catalog/orders").await.status(), 404);
    let link = &down.state().central;

    // A broken edit of the downstream's file: refused, the last good one serves.
    down.write_config(&format!("{yaml}\n  broken: [\n"));
    for _ in 0..200 {
        if down.state().live.status().last_reload_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(down.state().live.status().last_reload_error.is_some());
    assert_eq!(down.get("/local/ping").await.status(), 200);

    // The central adds a resource.
    central.write_config(&central_yaml(r#""GET /items", "GET /orders""#));
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    eventually("the download decided", || {
        let status = link.status();
        status.applied + status.refused >= 1
    })
    .await;
    assert_eq!(
        down.get("/catalog/orders").await.status(),
        200,
        "the central's change was not applied ({})",
        link_summary(&down)
    );
    // The edit on disk is still refused: the status goes on saying so.
    let error = down.state().live.status().last_reload_error;
    assert!(
        error.as_deref().is_some_and(|e| e.contains("broken")),
        "{error:?}"
    );
    down.shutdown().await;
    central.shutdown().await;
}

/// Every answer the downstream has had from its central.
fn answers(gw: &Gateway) -> u64 {
    let status = gw.state().central.status();
    status.applied + status.refused + status.unchanged + status.not_modified + status.failed
}

/// Moves the tokio clock, which the poll loop waits by, 10 s forward in
/// steps, each with time to send a request: the downstream asks its
/// central nothing meanwhile.
async fn assert_asks_nothing_more(gw: &Gateway, what: &str) {
    let before = answers(gw);
    for _ in 0..20 {
        advance(Duration::from_millis(500)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answers(gw), before, "{what} ({})", link_summary(gw));
}

/// A downstream of `central` that downloads once (`poll_interval: 0`).
fn downloading_once(central: &Gateway, cache: &Path) -> String {
    following(central, cache)
        .yaml()
        .replace("poll_interval: 1s", "poll_interval: 0s")
}

/// With `poll_interval: 0` a downstream that started from its cache file
/// asks until the central answers; a 304 (the cache is current) is that
/// answer, and the status says when it came.
#[tokio::test]
async fn a_zero_poll_interval_stops_asking_once_a_304_confirms_the_cache() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let yaml = downloading_once(&central, &cache);
    Gateway::start(&yaml).await.shutdown().await;

    // The central stops serving its settings (without `central:` the
    // export is 404): the downstream starts from its cache.
    let serving = central_yaml(r#""GET /items""#);
    let without_export: String = serving
        .lines()
        .filter(|line| {
            !["central:", "  users:", "  - { user:"]
                .iter()
                .any(|s| line.starts_with(s))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    central.write_config(&without_export);
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    let down = Gateway::start(&yaml).await;
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    let link = &down.state().central;
    assert!(link.status().last_download_at.is_none());

    // It serves them again, unchanged.
    central.write_config(&serving);
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    eventually("a 304", || link.status().not_modified >= 1).await;
    assert!(
        link.status().last_download_at.is_some(),
        "the 304 is not shown as the central's last answer"
    );
    assert_asks_nothing_more(&down, "asked again after the 304").await;
    down.shutdown().await;
    central.shutdown().await;
}

/// With `poll_interval: 0` a download refused because it clashes with the
/// local file is not asked for over and over, but again right after a
/// local reload applied; then it merges.
#[tokio::test]
async fn a_zero_poll_interval_asks_again_for_a_refused_download_after_a_local_reload() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let yaml = downloading_once(&central, &cache);
    Gateway::start(&yaml).await.shutdown().await;

    // The central moves Catalog onto the base path of the downstream's
    // local API: the downstream starts from its cache and refuses the
    // download once.
    central.write_config(
        &central_yaml(r#""GET /items""#).replace("base_path: /catalog", "base_path: /local"),
    );
    central
        .state()
        .reload(Source::File)
        .expect("central reload");
    let down = Gateway::start(&yaml).await;
    assert_eq!(
        down.get("/catalog/items").await.status(),
        200,
        "from the cache"
    );
    let link = &down.state().central;
    eventually("the clashing download refused", || {
        link.status().refused >= 1
    })
    .await;
    assert_asks_nothing_more(&down, "a refused download asked for over and over").await;

    move_the_local_api_aside(&down, &yaml).await;
    down.shutdown().await;
    central.shutdown().await;
}

/// A downstream whose file comes to name another central downloads from
/// it at once, even with `poll_interval: 0`: the settings of the central
/// it followed are merged only until the new one answers.
#[tokio::test]
async fn a_file_naming_another_central_downloads_from_it_at_once() {
    let first = start_central(r#""GET /items""#).await;
    let second = start_central(r#""GET /other""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let down = Gateway::start(&downloading_once(&first, &cache)).await;
    assert_eq!(down.get("/catalog/items").await.status(), 200);
    assert_eq!(down.get("/catalog/other").await.status(), 404);
    let link = &down.state().central;
    let before = generation(&down);
    down.write_config(&downloading_once(&second, &cache));
    down.wait_generation(before + 1).await;
    eventually("the second central's settings applied", || {
        link.status().applied >= 1
    })
    .await;
    assert_eq!(down.get("/catalog/other").await.status(), 200);
    assert_eq!(down.get("/catalog/items").await.status(), 404);
    down.shutdown().await;
    second.shutdown().await;
    first.shutdown().await;
}

/// A 200 whose body is empty is not an export (an export always has its
/// three sections): it does not wipe the downloaded APIs, nor the cache.
#[tokio::test]
async fn an_empty_answer_does_not_replace_the_downloaded_settings() {
    let fake = FakeCentral::start(GOOD_DOCUMENT).await;
    let (_dir, cache) = cache_in_tempdir();
    let down = Gateway::start(&Downstream::of_all(fake.url(), &cache).yaml()).await;
    assert_eq!(down.get("/remote/a").await.status(), 200);
    let link = &down.state().central;

    *fake.body.lock().expect("body") = String::new();
    eventually("the empty answer decided", || {
        let status = link.status();
        status.applied + status.refused >= 1
    })
    .await;
    let served = down.get("/remote/a").await.status();
    let cached = std::fs::read_to_string(&cache).expect("cache");
    down.shutdown().await;
    assert_eq!(served, 200, "an empty answer removed the downloaded API");
    assert_eq!(cached, GOOD_DOCUMENT, "an empty answer replaced the cache");
}

/// A stand-in central over raw TCP that answers with `ETag` = SHA-256 of
/// `full`, and either the whole of it (with `Content-Length`) or, once
/// `cut` is set, its first `cut` bytes delimited by closing the connection
/// (as a proxy that gives up mid-answer does).
struct CuttingCentral {
    addr: SocketAddr,
    cut: Arc<Mutex<Option<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingCentral {
    async fn start(full: &'static str) -> CuttingCentral {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(Mutex::new(None::<usize>));
        let shared = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let cut = *shared.lock().expect("cut");
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let etag = microgateway::central::export::etag_of(full);
                    let answer = match cut {
                        None => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/yaml\r\netag: {etag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{full}",
                            full.len()
                        ),
                        Some(cut) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/yaml\r\netag: {etag}\r\nconnection: close\r\n\r\n{}",
                            &full[..cut]
                        ),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        CuttingCentral { addr, cut, task }
    }
}

impl Drop for CuttingCentral {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TWO_APIS: &str = r#"
security_settings: { auth_servers: [], aliases: [] }
scope_mappings: []
apis:
- { name: Remote, version: "1.0", base_path: /remote, upstream: { echo: true }, resources: ["GET /a"], authentication: { type: none } }
- { name: Second, version: "1.0", base_path: /second, upstream: { echo: true }, resources: ["GET /b"], authentication: { type: none } }
"#;

/// A download cut short (the body does not hash to the strong ETag the
/// central sent with it) is refused: it does not drop the APIs it lost.
#[tokio::test]
async fn a_download_cut_short_is_refused() {
    let fake = CuttingCentral::start(TWO_APIS).await;
    let (_dir, cache) = cache_in_tempdir();
    let url = format!("http://{}", fake.addr);
    let down = Gateway::start(&Downstream::of_all(url, &cache).yaml()).await;
    assert_eq!(down.get("/second/b").await.status(), 200);
    let link = &down.state().central;

    // The answer now ends right before the second API.
    let cut = TWO_APIS.find("- { name: Second").expect("second API");
    *fake.cut.lock().expect("cut") = Some(cut);
    eventually("the cut answer decided", || {
        let status = link.status();
        status.applied + status.refused + status.failed >= 1
    })
    .await;
    let served = down.get("/second/b").await.status();
    let cached = std::fs::read_to_string(&cache).expect("cache");
    down.shutdown().await;
    assert_eq!(served, 200, "a truncated download removed an API");
    assert_eq!(cached, TWO_APIS, "a truncated download replaced the cache");
}

/// The cache of a download of other APIs (here the file named `Catalog`,
/// now names `Secure`) is not served when the central is down at start.
#[tokio::test]
async fn a_cache_of_other_apis_is_not_served_when_the_central_is_down() {
    let central = start_central(r#""GET /items""#).await;
    let (_dir, cache) = cache_in_tempdir();
    let catalog = Downstream {
        apis: &["Catalog"],
        ..following(&central, &cache)
    }
    .yaml();
    let secure = Downstream {
        apis: &["Secure"],
        ..following(&central, &cache)
    }
    .yaml();
    let first = Gateway::start(&catalog).await;
    assert_eq!(first.get("/catalog/items").await.status(), 200);
    first.shutdown().await;
    central.shutdown().await;

    // Restarted with another selection while the central is down.
    match Gateway::try_start(&secure, common::Env::new()).await {
        Err(_) => {}
        Ok(second) => {
            let served = second.get("/catalog/items").await.status();
            second.shutdown().await;
            assert_ne!(served, 200, "an API the file does not name is served");
        }
    }
}

/// A downstream serves only the APIs its `apis:` names, whatever the
/// central answers.
#[tokio::test]
async fn a_downstream_serves_only_the_apis_it_names_whatever_the_central_sends() {
    let fake = FakeCentral::start(TWO_APIS).await;
    let (_dir, cache) = cache_in_tempdir();
    let downstream = Downstream {
        apis: &["Remote"],
        ..Downstream::of_all(fake.url(), &cache)
    };
    let down = Gateway::start(&downstream.yaml()).await;
    assert_eq!(down.get("/remote/a").await.status(), 200);
    let served = down.get("/second/b").await.status();
    down.shutdown().await;
    assert_eq!(served, 404, "an API the file does not name is served");
}

/// User information in `api_gateway.url` is a password: the start error
/// (printed by `start`) does not show it.
#[tokio::test]
async fn start_error_does_not_show_a_password_in_the_central_url() {
    let (_dir, cache) = cache_in_tempdir();
    let closed = crate::common::Refusing::new();
    let downstream = Downstream {
        url: format!("http://fleet:url-password-123@{}", closed.addr),
        ..Downstream::of_all(String::new(), &cache)
    };
    let error = Gateway::try_start(&downstream.yaml(), common::Env::new())
        .await
        .err()
        .expect("no start");
    assert!(!error.contains("url-password-123"), "{error}");
}

/// `download-settings` sends the password (and receives secrets in clear)
/// only as `api_gateway.url` may: not over plain HTTP to a host that is
/// not loopback.
#[tokio::test]
async fn download_settings_refuses_plain_http_to_a_remote_host() {
    let args: Vec<String> = vec![
        "download-settings".into(),
        "--gateway".into(),
        // TEST-NET-1: nothing answers there.
        "http://192.0.2.1:9485".into(),
        "--user".into(),
        USER.into(),
        "--password".into(),
        PASSWORD.into(),
    ];
    let out = tokio::task::spawn_blocking(move || run_binary(args))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(stderr.contains("plain HTTP"), "{stderr}");
}
