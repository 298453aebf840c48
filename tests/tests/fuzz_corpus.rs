//! Replays every saved fuzz input (`fuzz/corpus/<target>/`, the seeds and what fuzzing kept;
//! `fuzz/regressions/<target>/`, inputs that once crashed) through the fuzz targets' bodies on
//! stable, so CI holds what `cargo fuzz` found. A panic anywhere, also one a connection's
//! guard catches inside the in-process node, fails the test.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use warren_tests::fuzz::TARGETS;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            out.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

#[test]
fn every_saved_fuzz_input_is_handled_without_a_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let files = inputs(name);
        assert!(!files.is_empty(), "no saved inputs for fuzz target {name}");
        for f in files {
            let data = std::fs::read(&f).expect("read a fuzz input");
            target(&data);
            assert_eq!(
                PANICS.load(Ordering::SeqCst),
                0,
                "fuzz input {} panicked",
                f.display()
            );
            replayed += 1;
        }
    }
    println!("replayed {replayed} fuzz inputs");
}
