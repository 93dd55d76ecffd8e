//! Replays the inputs the fuzzers keep (see fuzz/README.md) through the same property checks
//! the fuzz targets run, with plain `cargo test` on the stable toolchain and without libFuzzer:
//! - `fuzz/regressions/<target>/*`: every input that ever failed a target, kept forever so the
//!   bug stays fixed;
//! - `fuzz/corpus/<target>/*`: the seed corpus, so a seed that stops passing shows up here.
//!
//! The checks live in fuzz/src/lib.rs, shared with the fuzz targets and included here by path;
//! that file uses only std and this crate's own dependencies (serde, toml).

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::path::Path;

fn replay(dir: &str) -> (usize, Vec<String>) {
    fuzz_checks::replay(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
}

#[test]
fn fuzz_regression_inputs_pass() {
    let (ran, failures) = replay("fuzz/regressions");
    assert!(
        failures.is_empty(),
        "{} of {ran} regression inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fuzz_corpus_inputs_pass() {
    let (ran, failures) = replay("fuzz/corpus");
    assert!(ran > 0, "no fuzz corpus found");
    assert!(
        failures.is_empty(),
        "{} of {ran} corpus inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
