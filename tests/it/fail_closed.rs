//! A configuration mistake closes the hole it would open, end to end over
//! loopback: an API cannot lose its authentication, an empty secret stops
//! the start, unusable TLS material is a refused reload (and a failed
//! `check`), a second instance cannot join a port another one serves, and
//! introspection tells only resource servers what a token says.

use crate::common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{env, metric, Env, Gateway};
use microgateway::reload::Source;
use serde_json::{json, Value};

// ------------------------------------------------------------ no open API

fn guarded_api(authentication: &str) -> String {
    format!(
        r#"ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
security_settings:
  auth_servers:
  - id: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: gw
      clientSecret: gw-secret
apis:
- name: Orders
  base_path: /orders
  upstream: {{ echo: true }}{authentication}
  scopes:
  - name: View
    resources: ["GET /items"]
"#
    )
}

#[tokio::test]
async fn an_api_cannot_lose_its_authentication_block() {
    let guarded = guarded_api("\n  authentication: { type: oauth2, auth_server: remote }");
    let gw = Gateway::start(&guarded).await;
    assert_eq!(gw.get("/orders/items").await.status(), 401);

    // The block deleted by mistake: the reload is refused, the API stays closed.
    gw.write_config(&guarded_api(""));
    let generation = gw.state().live.generation();
    let refused = gw
        .state()
        .reload(Source::Api)
        .expect_err("an API without authentication is refused");
    assert!(
        refused
            .to_string()
            .contains(":11:9: error: API has no `authentication`"),
        "{refused}"
    );
    assert_eq!(gw.state().live.generation(), generation);
    assert_eq!(gw.get("/orders/items").await.status(), 401);
    gw.shutdown().await;

    // Nor can such a file start a gateway.
    let error = Gateway::try_start(&guarded_api(""), Env::new())
        .await
        .err()
        .expect("start refused");
    assert!(error.contains("API has no `authentication`"), "{error}");
}

// ------------------------------------------------------------ no empty secret

#[tokio::test]
async fn an_empty_admin_password_from_the_environment_refuses_the_start() {
    let yaml = r#"ports: { http: 0, bind: 127.0.0.1 }
admin:
  port: 0
  user: Administrator
  password: "${env:ADMIN_PW}"
"#;
    let error = Gateway::try_start(yaml, env(&[("ADMIN_PW", "")]))
        .await
        .err()
        .expect("an empty password refuses the start");
    assert!(
        error.contains(
            ":5:13: error: admin.password: environment variable ADMIN_PW is set but empty"
        ),
        "{error}"
    );
    // With a value, the same file starts and asks for it.
    let gw = Gateway::start_with_env(yaml, env(&[("ADMIN_PW", "s3cret")])).await;
    let reload = gw
        .client
        .post(gw.admin_url("/rest/microgateway/reload"))
        .basic_auth("Administrator", Some(""))
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 401);
    gw.shutdown().await;
}

// ------------------------------------------------------------ TLS material

struct Pem {
    cert: String,
    key: String,
}

fn certificate(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Pem {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).expect("certificate");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn valid() -> Pem {
    certificate((2020, 1, 1), (2999, 1, 1))
}

const TLS_YAML: &str = r#"ports: { http: 0, https: 0, bind: 127.0.0.1 }
admin: { port: 0 }
tls:
  certificate: server.crt
  key: server.key
"#;

fn write_tls(dir: &Path, pem: &Pem) {
    std::fs::write(dir.join("server.crt"), &pem.cert).expect("write certificate");
    std::fs::write(dir.join("server.key"), &pem.key).expect("write key");
}

#[test]
fn tls_material_is_judged_with_the_position_of_what_is_wrong() {
    common::crypto();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, TLS_YAML).expect("write config");
    let other = valid();
    let good = valid();
    let cases = [
        (
            Pem {
                cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                key: good.key.clone(),
            },
            ":4:16: error: tls.certificate: ",
            "certificate 1 of the chain is not a DER X.509 certificate",
        ),
        (
            certificate((2000, 1, 1), (2001, 1, 1)),
            ":4:16: error: tls.certificate: ",
            "certificate 1 of the chain expired on Mon, 01 Jan 2001 00:00:00 GMT",
        ),
        (
            certificate((2990, 1, 1), (2999, 1, 1)),
            ":4:16: error: tls.certificate: ",
            "is not valid before",
        ),
        (
            Pem {
                cert: good.cert.clone(),
                key: other.key.clone(),
            },
            ":5:8: error: tls.key: ",
            "certificate and key cannot be used",
        ),
        (
            Pem {
                cert: good.cert.clone(),
                key: "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    .into(),
            },
            ":5:8: error: tls.key: ",
            "the private key is encrypted",
        ),
    ];
    for (pem, at, what) in cases {
        write_tls(dir.path(), &pem);
        let loaded = microgateway::config::load(&path, &Env::new(), 1).expect("the file compiles");
        let refused =
            microgateway::server::tls::check(&loaded.snapshot, std::time::SystemTime::now())
                .expect_err(what)
                .to_string();
        assert!(refused.contains(at) && refused.contains(what), "{refused}");
    }
    write_tls(dir.path(), &good);
    let loaded = microgateway::config::load(&path, &Env::new(), 1).expect("the file compiles");
    microgateway::server::tls::check(&loaded.snapshot, std::time::SystemTime::now())
        .expect("good material");
    // Valid from 2020-01-01: a minute before, on a clock behind its CA's,
    // it is taken; an hour before, it is not yet valid.
    let issued = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
    let minute = std::time::Duration::from_secs(60);
    microgateway::server::tls::check(&loaded.snapshot, issued - minute)
        .expect("a minute's skew is taken");
    let refused = microgateway::server::tls::check(&loaded.snapshot, issued - 60 * minute)
        .expect_err("an hour early")
        .to_string();
    assert!(refused.contains("is not valid before"), "{refused}");
}

#[test]
fn check_refuses_an_expired_certificate_like_start_does() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, TLS_YAML).expect("write config");
    write_tls(dir.path(), &certificate((2000, 1, 1), (2001, 1, 1)));
    let output = Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4:16: error: tls.certificate: ",
            path.display()
        )) && stderr.contains("expired on"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_reload_whose_certificate_cannot_be_used_is_refused() {
    common::crypto();
    let dir = tempfile::tempdir().expect("dir");
    write_tls(dir.path(), &valid());
    let yaml = TLS_YAML
        .replace(
            "server.crt",
            &dir.path().join("server.crt").display().to_string(),
        )
        .replace(
            "server.key",
            &dir.path().join("server.key").display().to_string(),
        );
    let gw = Gateway::start(&yaml).await;
    let generation = gw.state().live.generation();
    let series = r#"microgateway_config_reload_total{result="error",source="api"}"#;
    let errors_before = metric(&gw.metrics().await, series);

    write_tls(dir.path(), &certificate((2000, 1, 1), (2001, 1, 1)));
    let refused = gw
        .state()
        .reload(Source::Api)
        .expect_err("an expired certificate is refused");
    assert!(refused.to_string().contains("expired on"), "{refused}");
    assert_eq!(gw.state().live.generation(), generation);
    assert!(metric(&gw.metrics().await, series) > errors_before);
    let last = gw
        .state()
        .live
        .status()
        .last_reload_error
        .expect("last_reload_error");
    assert!(
        last.contains(":4:16: error: tls.certificate: "),
        "the position of tls.certificate: {last}"
    );
    gw.shutdown().await;
}

// ------------------------------------------------------------ one instance per port

#[tokio::test]
async fn a_second_instance_on_a_served_port_exits_naming_the_port() {
    let first = Gateway::start("ports: { http: 0, bind: 127.0.0.1 }\nadmin: { port: 0 }\n").await;
    let port = first.http.port();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(
        &path,
        format!("ports: {{ http: {port}, bind: 127.0.0.1 }}\nadmin: {{ port: 0 }}\n"),
    )
    .expect("write config");
    let mut second = Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .arg("start")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let (status, mut second) =
        tokio::task::spawn_blocking(move || (common::process::exit_of(&mut second), second))
            .await
            .expect("the waiting thread");
    let status = status.expect("the second instance exits instead of sharing the port");
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
    // The first instance serves on.
    assert_eq!(first.get("/nothing").await.status(), 404);
    first.shutdown().await;
}

// ------------------------------------------------------------ introspection

const ISSUING: &str = r#"ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
authorization_server:
  issuer: "http://localhost:4485"
  token_format: opaque
  signing_key: data/signing-key.pem
  store: sqlite:data/oauth.db
  scopes: [{ name: view, description: "View" }]
  clients:
  - { client_id: app, client_secret: app-secret, grant_types: [client_credentials], scopes: [view] }
  - { client_id: other, client_secret: other-secret, grant_types: [client_credentials], scopes: [view] }
  - { client_id: rs, client_secret: rs-secret, introspect: true }
"#;

async fn form(gw: &Gateway, path: &str, client: (&str, &str), body: String) -> Value {
    let response = gw
        .client
        .post(gw.url(path))
        .basic_auth(client.0, Some(client.1))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn introspection_answers_only_resource_servers() {
    let gw = Gateway::start(ISSUING).await;
    let issued = form(
        &gw,
        "/oauth2/token",
        ("app", "app-secret"),
        "grant_type=client_credentials".into(),
    )
    .await;
    let token = issued["access_token"].as_str().expect("access_token");
    let ask = |client| form(&gw, "/oauth2/introspect", client, format!("token={token}"));
    // RFC 7662 §4: another client learns nothing, nor does the token's own.
    assert_eq!(
        ask(("other", "other-secret")).await,
        json!({"active": false})
    );
    assert_eq!(ask(("app", "app-secret")).await, json!({"active": false}));
    let answer = ask(("rs", "rs-secret")).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["client_id"], "app");
    gw.shutdown().await;
}
