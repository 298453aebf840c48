//! The node's `enabled_plugins` file, in RabbitMQ's shape: `[name1,name2].`
//! It lists the explicitly enabled plugins; dependencies are implied.

use std::path::Path;

use super::PluginError;

pub fn read(path: &Path) -> Result<Option<Vec<String>>, PluginError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PluginError::Io(format!("{}: {e}", path.display())));
        }
    };
    parse(&text).map(Some).ok_or_else(|| {
        PluginError::BadManifest(format!(
            "{}: expected a list such as [prometheus,exchange-topic].",
            path.display()
        ))
    })
}

pub fn parse(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    if t.is_empty() {
        return Some(Vec::new());
    }
    let inner = t
        .strip_suffix('.')?
        .trim()
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let mut out = Vec::new();
    for item in inner.split(',') {
        let name = item.trim().trim_matches(|c| c == '\'' || c == '"');
        if name.is_empty() {
            continue;
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    Some(out)
}

pub fn write(path: &Path, names: &[String]) -> Result<(), PluginError> {
    let io = |e: std::io::Error| PluginError::Io(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("[{}].\n", names.join(","))).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rabbitmq_style_lists() {
        assert_eq!(parse("[a,b].\n"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            parse("[ 'a' , \"b\", a ]."),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse("[]."), Some(vec![]));
        assert_eq!(parse(""), Some(vec![]));
        assert_eq!(parse("a,b"), None);
    }
}
