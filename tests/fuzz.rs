//! The fuzz targets (fuzz/targets.rs) as a test: every input of each target's corpus
//! (fuzz/corpus/TARGET, seeds captured from real psql and pgbench sessions) and of its
//! regressions (fuzz/regressions/TARGET, inputs that once failed), then a few thousand
//! deterministic mutations of them. The long, coverage-guided runs use `cargo fuzz` on the
//! same bodies (fuzz/README.md); this keeps a short run of every target in each CI run.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Mutated inputs per target and run; `CAPGATE_FUZZ_MUTATIONS` overrides it.
const MUTATIONS: usize = 3_000;

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))).collect()
}

/// One random edit of the kinds libFuzzer makes: flip a bit, set a byte to an interesting
/// value, insert or delete a run, copy a run from another input, truncate.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u8; 8] = [0, 1, 4, 5, 0x7f, 0x80, 0xfe, 0xff];
    let len = input.len();
    match rng.random_range(0..6) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        2 => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=16);
            let byte = rng.random::<u8>();
            input.splice(at..at, std::iter::repeat_n(byte, n));
        }
        3 if len > 0 => {
            let at = rng.random_range(0..len);
            let end = (at + rng.random_range(1..=16)).min(len);
            input.drain(at..end);
        }
        4 if !other.is_empty() => {
            let from = rng.random_range(0..other.len());
            let end = (from + rng.random_range(1..=64)).min(other.len());
            let at = rng.random_range(0..=len);
            input.splice(at..at, other[from..end].iter().copied());
        }
        _ => input.truncate(rng.random_range(0..=len)),
    }
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mutations = std::env::var("CAPGATE_FUZZ_MUTATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(MUTATIONS);
    for (name, target) in targets::TARGETS {
        let mut corpus = inputs(&root.join("corpus").join(name));
        assert!(corpus.len() >= 3, "fuzz/corpus/{name} has {} seeds: run fuzz/seed.sh", corpus.len());
        corpus.extend(inputs(&root.join("regressions").join(name)));
        for (path, input) in &corpus {
            if std::panic::catch_unwind(|| target(input)).is_err() {
                panic!("target {name} failed on {}", path.display());
            }
        }
        let mut rng = StdRng::seed_from_u64(0x0063_6170_6761_7465 ^ name.len() as u64);
        for i in 0..mutations {
            let mut input = corpus[rng.random_range(0..corpus.len())].1.clone();
            let other = &corpus[rng.random_range(0..corpus.len())].1;
            for _ in 0..rng.random_range(1..=8) {
                mutate(&mut rng, &mut input, other);
            }
            let outcome = std::panic::catch_unwind(|| target(&input));
            if outcome.is_err() {
                let dir = std::env::temp_dir().join("capgate-fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{i}"));
                let _ = std::fs::write(&file, &input);
                panic!("target {name} failed on mutation {i}; input saved as {} (add it to fuzz/regressions/{name})", file.display());
            }
        }
        eprintln!("fuzz target {name}: {} corpus inputs, {mutations} mutations", corpus.len());
    }
}
