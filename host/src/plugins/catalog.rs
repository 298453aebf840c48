//! Which plugins a node can enable: the built-in ones embedded in the binary
//! and `NAME.wasm` + `NAME.toml` pairs in `WARREN_PLUGINS_DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::PluginError;
use super::manifest::Manifest;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

#[derive(Debug, Clone)]
pub enum Source {
    Builtin(&'static [u8]),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Available {
    pub manifest: Manifest,
    pub source: Source,
}

impl Available {
    pub fn wasm(&self) -> Result<std::borrow::Cow<'static, [u8]>, PluginError> {
        match &self.source {
            Source::Builtin(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Source::File(p) => std::fs::read(p)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| PluginError::Io(format!("{}: {e}", p.display()))),
        }
    }
}

/// Every plugin this node could run, by name. Broken manifests in the plugins
/// directory are reported and skipped so one bad file never hides the rest.
pub fn scan(dir: Option<&Path>) -> (BTreeMap<String, Available>, Vec<PluginError>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (text, wasm) in builtin::BUILTIN {
        match Manifest::parse(text, "built-in plugin manifest") {
            Ok(m) => {
                out.insert(
                    m.name.clone(),
                    Available {
                        manifest: m,
                        source: Source::Builtin(wasm),
                    },
                );
            }
            Err(e) => problems.push(e),
        }
    }
    let Some(dir) = dir else {
        return (out, problems);
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (out, problems);
    };
    let mut manifests: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    manifests.sort();
    for path in manifests {
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(PluginError::Io(format!("{origin}: {e}")));
                continue;
            }
        };
        match Manifest::parse(&text, &origin) {
            Ok(m) => {
                let wasm = path.with_extension("wasm");
                if !wasm.exists() {
                    problems.push(PluginError::BadManifest(format!(
                        "{origin}: no component {} next to it",
                        wasm.display()
                    )));
                    continue;
                }
                // A plugin in the directory overrides a built-in of the same name.
                out.insert(
                    m.name.clone(),
                    Available {
                        manifest: m,
                        source: Source::File(wasm),
                    },
                );
            }
            Err(e) => problems.push(e),
        }
    }
    (out, problems)
}
