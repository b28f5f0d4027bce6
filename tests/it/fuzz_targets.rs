//! The fuzz targets (`fuzz/`) are not part of the main build: nothing else
//! notices when an item they call changes. This type-checks them against
//! the library as it is (stable `cargo check`; running them needs nightly
//! and cargo-fuzz, `fuzz/run.sh`), and runs what each checks of an input
//! (`fuzz/fuzz_targets/checks/`) on its committed seeds: an invariant that
//! a change of the code breaks fails here, not at the next fuzzing run.

use std::path::Path;
use std::process::Command;

#[path = "../../fuzz/fuzz_targets/checks/bearer.rs"]
mod bearer;
#[path = "../../fuzz/fuzz_targets/checks/chunked.rs"]
mod chunked;
#[path = "../../fuzz/fuzz_targets/checks/config.rs"]
mod config;
#[path = "../../fuzz/fuzz_targets/checks/jwt.rs"]
mod jwt;
#[path = "../../fuzz/fuzz_targets/checks/path.rs"]
mod path;
#[path = "../../fuzz/fuzz_targets/checks/request_head.rs"]
mod request_head;
#[path = "../../fuzz/fuzz_targets/checks/response_head.rs"]
mod response_head;

/// A target's check of one input.
type Check = fn(&[u8]);

/// `check` of a text target, given UTF-8 inputs only, as the fuzzer
/// gives them.
fn text(data: &[u8], check: fn(&str)) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
}

#[test]
fn every_committed_seed_keeps_what_its_fuzz_target_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let targets: [(&str, Check); 7] = [
        ("bearer", bearer::input),
        ("chunked", chunked::input),
        ("config", |data| text(data, config::input)),
        ("jwt", jwt::input),
        ("path", |data| text(data, path::input)),
        ("request_head", request_head::input),
        ("response_head", response_head::input),
    ];
    for (target, check) in targets {
        let mut seeds: Vec<_> = std::fs::read_dir(root.join(target))
            .expect("the target's seeds")
            .map(|entry| entry.expect("a seed").path())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for seed in seeds {
            let data = std::fs::read(&seed).expect("seed readable");
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            assert!(
                checked.is_ok(),
                "{target}: {} fails its check",
                seed.display()
            );
        }
    }
}

#[test]
fn fuzz_targets_build_against_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // A target directory of its own: the one this test runs from is
    // locked by the build that runs it.
    let output = Command::new(cargo)
        .args(["check", "--quiet", "--bins", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/fuzz-check"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "the fuzz targets do not build:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
