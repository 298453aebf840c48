//! A plugin's manifest: the small TOML file next to its component that says
//! what the plugin is, what it provides, which config keys it may read and
//! which port it listens on.

use serde::Deserialize;

use super::PluginError;

/// What a plugin provides; it decides which WIT world its component must target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `exchange-plugin` world: one exchange type.
    ExchangeType,
    /// `auth-plugin` world: an authentication and authorisation backend.
    AuthBackend,
    /// `http-plugin` world: serves HTTP on its own port.
    Http,
}

impl Kind {
    pub fn world(self) -> &'static str {
        match self {
            Kind::ExchangeType => "exchange-plugin",
            Kind::AuthBackend => "auth-plugin",
            Kind::Http => "http-plugin",
        }
    }
}

/// The port a listening plugin takes from its node's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listens {
    pub port_key: String,
    pub default_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub kind: Kind,
    /// For exchange-type plugins: the type name clients declare.
    #[serde(default)]
    pub exchange_type: Option<String>,
    /// For auth backends: the name `auth_backends.N` config entries use.
    #[serde(default)]
    pub auth_backend: Option<String>,
    /// Enabled on a node that has no enabled_plugins file yet.
    #[serde(default)]
    pub default_enabled: bool,
    /// Built into warren-server (read by the build script only).
    #[serde(default = "yes")]
    pub builtin: bool,
    /// Plugins this one needs; enabling it enables them too.
    #[serde(default)]
    pub depends: Vec<String>,
    /// Node config keys the plugin may read. A key ending in `.` is a prefix.
    #[serde(default)]
    pub config_keys: Vec<String>,
    /// Config keys (or prefixes ending in `.`) whose values are file paths:
    /// the plugin is handed the file's contents, since it has no file access.
    #[serde(default)]
    pub file_config_keys: Vec<String>,
    #[serde(default)]
    pub listens: Option<Listens>,
}

fn yes() -> bool {
    true
}

impl Manifest {
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, PluginError> {
        let m: Manifest = toml::from_str(text)
            .map_err(|e| PluginError::BadManifest(format!("{origin}: {}", e.message().trim())))?;
        let bad = |why: String| Err(PluginError::BadManifest(format!("{origin}: {why}")));
        if m.name.is_empty()
            || !m
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!(
                "plugin name '{}' must be letters, digits, '-' or '_'",
                m.name
            ));
        }
        match m.kind {
            Kind::ExchangeType if m.exchange_type.as_deref().is_none_or(str::is_empty) => {
                return bad("an exchange-type plugin must name its exchange_type".into());
            }
            Kind::AuthBackend if m.auth_backend.as_deref().is_none_or(str::is_empty) => {
                return bad("an auth-backend plugin must name its auth_backend".into());
            }
            Kind::Http if m.listens.is_none() => {
                return bad("an http plugin must say which port it listens on (listens)".into());
            }
            _ => {}
        }
        Ok(m)
    }

    /// May this plugin read `key` from its node's config?
    pub fn may_read(&self, key: &str) -> bool {
        let listens = self.listens.as_ref().is_some_and(|l| l.port_key == key);
        listens
            || self
                .config_keys
                .iter()
                .chain(&self.file_config_keys)
                .any(|k| crate::config::key_matches(k, key))
    }

    pub fn is_file_key(&self, key: &str) -> bool {
        self.file_config_keys
            .iter()
            .any(|k| crate::config::key_matches(k, key))
    }

    /// What the plugin provides, for listings.
    pub fn provides(&self) -> String {
        match self.kind {
            Kind::ExchangeType => format!(
                "exchange type '{}'",
                self.exchange_type.as_deref().unwrap_or("")
            ),
            Kind::AuthBackend => format!(
                "auth backend '{}'",
                self.auth_backend.as_deref().unwrap_or("")
            ),
            Kind::Http => "http endpoint".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_exchange_type_manifest() {
        let m = Manifest::parse(
            "name = \"x\"\nversion = \"1\"\nkind = \"exchange-type\"\nexchange_type = \"x-y\"\nconfig_keys = [\"x.port\", \"x.keys.\"]\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(m.kind, Kind::ExchangeType);
        assert!(m.may_read("x.port"));
        assert!(m.may_read("x.keys.a"));
        assert!(!m.may_read("x.portable"));
        assert!(!m.may_read("default_user"));
        assert!(!m.default_enabled);
    }

    #[test]
    fn refuses_incomplete_or_unknown_fields() {
        let e = Manifest::parse(
            "name = \"x\"\nversion = \"1\"\nkind = \"exchange-type\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("exchange_type"), "{e}");
        let e = Manifest::parse(
            "name = \"x\"\nversion = \"1\"\nkind = \"teapot\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.toml"), "{e}");
        let e = Manifest::parse(
            "name = \"a b\"\nversion = \"1\"\nkind = \"http\"\nlistens = { port_key = \"p\", default_port = 1 }\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("letters"), "{e}");
    }
}
