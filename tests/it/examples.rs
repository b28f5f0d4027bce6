//! The files under `examples/` are what users copy: every configuration in
//! them must load, the downstream ones also merged with the central's
//! export, and the Kubernetes manifest must parse and probe the admin port.

use std::path::{Path, PathBuf};

use microgateway::central;
use microgateway::config::{self, Env};
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The variables the examples' `${env:…}` secrets name.
fn example_env() -> Env {
    [
        ("FLEET_PASSWORD", "fleet-secret"),
        ("INTROSPECTION_SECRET", "introspection-secret"),
        ("TRAVELS_PASSWORD", "travels-password"),
        ("ADMIN_PASSWORD", "manage"),
        ("PGPASSWORD", "pg-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Every `.yaml` file under `dir`, manifests for Kubernetes excepted.
fn configurations(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("examples directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "kubernetes") {
                found.extend(configurations(&path));
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn every_example_configuration_loads() {
    let files = configurations(&examples());
    assert!(files.len() >= 5, "examples found: {files:?}");
    for file in files {
        if let Err(invalid) = config::load(&file, &example_env(), 1) {
            panic!("{} does not load:\n{invalid}", file.display());
        }
    }
}

#[test]
fn webmethods_settings_keep_the_extra_alias_document() {
    let file = examples().join("webmethods-settings.yaml");
    let loaded = config::load(&file, &example_env(), 1).expect("loads");
    let ids: Vec<&str> = loaded.snapshot.auth_servers.keys().map(|k| &**k).collect();
    assert_eq!(ids, ["local", "partner-idp"]);
    assert!(
        !loaded.warnings.is_empty(),
        "ignored webMethods keys are reported"
    );
}

#[test]
fn sidecars_load_merged_with_the_central_export() {
    let env = example_env();
    let central_file = examples().join("central/central.yaml");
    let central_snapshot = config::load(&central_file, &env, 1)
        .expect("central")
        .snapshot;
    let tree = central::export::build(&central_snapshot, &env).expect("export");
    let dir = tempfile::tempdir().expect("dir");
    for (sidecar, expected) in [
        ("sidecar-a.yaml", vec!["Time travels"]),
        ("sidecar-b.yaml", vec!["Health", "Invoices", "Time travels"]),
    ] {
        let path = examples().join("central").join(sidecar);
        let settings = config::api_gateway(&path, &env)
            .expect("api_gateway")
            .expect("a downstream");
        let rendered = tree.filter(&settings.apis).render().expect("render");
        let cache = dir.path().join(sidecar);
        std::fs::write(&cache, &rendered.body).expect("cache");
        let document = central::Document::cached(rendered.body, cache);
        document.validate().expect("the export is valid on its own");
        let loaded = central::load(&path, None, &env, 1, Some(&document))
            .unwrap_or_else(|invalid| panic!("{sidecar} merged:\n{invalid}"));
        let mut names: Vec<&str> = loaded
            .snapshot
            .apis
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        names.sort();
        assert_eq!(names, expected, "{sidecar}");
        assert!(loaded.snapshot.auth_servers.contains_key("corporate-idp"));
    }
}

fn container<'a>(documents: &'a [Value], name: &str) -> &'a Value {
    documents
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn kubernetes_sidecar_probes_the_admin_port_and_carries_a_valid_config() {
    let text =
        std::fs::read_to_string(examples().join("kubernetes/sidecar.yaml")).expect("manifest");
    let documents: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("YAML documents");
    let gateway = container(&documents, "microgateway");
    container(&documents, "app");
    assert_eq!(
        gateway["readinessProbe"]["httpGet"]["path"],
        "/health/ready"
    );
    assert_eq!(gateway["livenessProbe"]["httpGet"]["path"], "/health/live");
    let admin_port = gateway["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("an admin port")["containerPort"]
        .as_u64()
        .expect("number");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(gateway[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let mounts = gateway["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/microgateway"));

    let config_map = documents
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let yaml = config_map["data"]["microgateway.yaml"]
        .as_str()
        .expect("config");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("microgateway.yaml");
    std::fs::write(&file, yaml).expect("write");
    let snapshot = config::load(&file, &example_env(), 1)
        .unwrap_or_else(|invalid| panic!("the ConfigMap's configuration:\n{invalid}"))
        .snapshot;
    let admin = snapshot.listen.admin.expect("admin listener");
    assert!(
        admin.ip().is_unspecified(),
        "probes need admin.bind: 0.0.0.0"
    );
    assert_eq!(u64::from(admin.port()), admin_port);
}

/// A `PORT_OFFSET` for `examples/central/run.sh` whose six ports (4485–4487,
/// 9485–9487, shifted) are free now; below the ephemeral range, so that
/// tests binding port 0 do not take them meanwhile.
fn free_offset() -> u16 {
    let seed = std::process::id() as u16
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u16));
    (0..400u16)
        .map(|i| 6000 + (seed.wrapping_add(i.wrapping_mul(37)) % 12000))
        .find(|offset| {
            [4485u16, 4486, 4487, 9485, 9486, 9487]
                .iter()
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
        })
        .expect("six free ports")
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("a directory")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    names
}

/// `examples/central/run.sh` on the built binary: a token from the central,
/// an allowed and a refused request through a sidecar, a scope changed on
/// the central that the sidecar follows, and nothing left behind.
#[test]
fn the_central_example_runs_on_one_machine() {
    let central = examples().join("central");
    let before = listing(&central);
    let out = std::process::Command::new("bash")
        .arg(central.join("run.sh"))
        .env("MICROGATEWAY", env!("CARGO_BIN_EXE_microgateway"))
        .env("PORT_OFFSET", free_offset().to_string())
        .env_remove("MCGW_LOG")
        .output()
        .expect("run.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for line in [
        "central gateway ready",
        "sidecar a ready",
        "sidecar b ready",
        "token issued",
        "GET  /travels/bookings: 200 (allowed",
        "POST /travels/bookings: 403 (refused",
        "GET  /invoices/invoices: 404",
        "X-Client-Id: booking-app",
        "the same through sidecar B: GET /travels/bookings 200",
        "no restart",
        "POST /travels/bookings with the same token: 200 (allowed now)",
        "stopping the three gateways",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
    assert_eq!(
        listing(&central),
        before,
        "run.sh leaves the checkout as it was"
    );
}
