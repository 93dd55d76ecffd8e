//! Replays saved inputs through the fuzz targets' checks without libFuzzer:
//! `fuzz/regressions/<target>/*` (inputs that once failed, kept forever) and
//! `fuzz/corpus/<target>/*` (the seed corpus, so a broken seed shows up here too).
//! Run with `cargo test --manifest-path fuzz/Cargo.toml`.

use std::path::Path;

#[test]
fn regression_inputs_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let (ran, failures) = ringsocks_fuzz::replay(&dir);
    assert!(
        failures.is_empty(),
        "{} of {ran} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_inputs_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let (ran, failures) = ringsocks_fuzz::replay(&dir);
    assert!(ran > 0, "no corpus under {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {ran} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
