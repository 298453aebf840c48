//! Builds the built-in plugins (plugins/, a separate cargo workspace) to
//! WebAssembly components and embeds them in the binary.
//!
//! The nested cargo uses its own target directory so that it never waits on
//! the lock the outer build holds.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the repository root");
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out; the plugin build shares <target>.
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let plugin_target = target_root.join("wasm-plugins");

    for p in [
        "wit",
        "sdk/src",
        "sdk/Cargo.toml",
        "plugins/Cargo.toml",
        "plugins/.cargo",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let members = builtin_members(&plugins);
    for m in &members {
        for f in ["src", "Cargo.toml", "plugin.toml"] {
            println!(
                "cargo:rerun-if-changed={}",
                plugins.join(m).join(f).display()
            );
        }
    }

    // Through PATH's cargo (rustup's proxy), not the outer build's: the plugins build with the
    // toolchain rust-toolchain.toml names, which has the wasm target, also when the host is
    // built by another one (`cargo +nightly fuzz`, whose nightly may lack the target).
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&plugin_target);
    // Settings meant for the outer build (clippy's wrapper, host rustflags,
    // coverage) must not leak into the wasm build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cargo runs");
    if !status.success() {
        panic!(
            "building the built-in plugins failed; if the target is missing, run `rustup target add {WASM_TARGET}`"
        );
    }

    let wasm_dir = plugin_target.join(WASM_TARGET).join("release");
    let mut code = String::from(
        "/// (manifest, component) of every built-in plugin.\npub static BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for m in &members {
        let wasm = wasm_dir.join(format!("{}.wasm", m.replace('-', "_")));
        let toml = plugins.join(m).join("plugin.toml");
        assert!(wasm.exists(), "{} was not built", wasm.display());
        writeln!(
            code,
            "    (include_str!({:?}), include_bytes!({:?})),",
            toml.display().to_string(),
            wasm.display().to_string()
        )
        .expect("write to String");
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), code).expect("OUT_DIR is writable");
}

/// Workspace members that ship inside the binary: every plugin crate with a
/// manifest, except those whose manifest says `builtin = false`.
fn builtin_members(plugins: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(plugins) else {
        return out;
    };
    for e in entries.flatten() {
        let manifest = e.path().join("plugin.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        if !e.path().join("Cargo.toml").exists() {
            continue;
        }
        if text.lines().any(|l| l.replace(' ', "") == "builtin=false") {
            continue;
        }
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}
