//! The fuzz targets (`fuzz/`) are not part of the main build: nothing else
//! notices when an item they call changes. This type-checks them against
//! the library as it is (stable `cargo check`; running them needs nightly
//! and cargo-fuzz, `fuzz/run.sh`).

use std::path::Path;
use std::process::Command;

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
