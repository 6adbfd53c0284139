//! Configuration: the compiled-in `config/default.toml`, then `--config FILE`, then
//! `ASYNC_ENGINE__SECTION__KEY` environment variables (`DATABASE_URL` as a fallback for the
//! database URL). Every value is checked here, so a bad one stops start-up naming its key.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, bail};
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The repository's `config/default.toml`, built in.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub engine: EngineSettings,
    pub api: ApiSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub success_code: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Settings {
    /// Loads the layers in order; `env` is the process environment (a parameter for tests).
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("--config: {} is not a readable file", file.display());
            }
            builder = builder.add_source(File::from(file).required(true));
        }
        let own_url = env.iter().any(|(k, _)| k == "ASYNC_ENGINE__DATABASE__URL");
        if let Some((_, url)) = env.iter().find(|(k, _)| k == "DATABASE_URL").filter(|_| !own_url) {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        let ours: config::Map<String, String> =
            env.iter().filter(|(k, _)| k.starts_with("ASYNC_ENGINE__")).cloned().collect();
        builder = builder.add_source(
            Environment::with_prefix("ASYNC_ENGINE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(ours)),
        );
        let settings: Settings =
            builder.build().and_then(Config::try_deserialize).context("configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads with the real process environment.
    pub fn from_env(file: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load(file, &env)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.server.host.parse::<IpAddr>().is_err() && self.server.host != "localhost" {
            bail!("server.host: '{}' is not an IP address (or localhost)", self.server.host);
        }
        if !(1..=1024).contains(&self.database.pool_size) {
            bail!("database.pool_size: {} is out of range 1..=1024", self.database.pool_size);
        }
        async_engine_persistence::DatabaseUrl::parse(&self.database.url)?;
        if async_engine_api::SuccessCode::from_u16(self.api.success_code).is_none() {
            bail!("api.success_code: {} is not allowed; use 202 (documented) or 200", self.api.success_code);
        }
        if !(256..=1 << 30).contains(&self.limits.max_body_bytes) {
            bail!("limits.max_body_bytes: {} is out of range 256..=1073741824", self.limits.max_body_bytes);
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bail!("log.level: '{}' is not a valid filter (try info, debug or warn)", self.log.level);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        format!("{:#}", Settings::load(None, &env(pairs)).unwrap_err())
    }

    #[test]
    fn defaults() {
        let settings = Settings::load(None, &[]).unwrap();
        assert_eq!(settings.server.host, "127.0.0.1");
        assert_eq!(settings.server.port, 8080);
        assert_eq!(settings.database.url, "data/async-engine.db");
        assert_eq!(settings.api.success_code, 202);
        assert_eq!(settings.log.format, LogFormat::Human);
        assert!(settings.engine.enabled);
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custom.toml");
        std::fs::write(&file, "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[log]\nformat = \"json\"\n")
            .unwrap();
        let settings = Settings::load(
            Some(&file),
            &env(&[("ASYNC_ENGINE__SERVER__PORT", "9100"), ("ASYNC_ENGINE__ENGINE__ENABLED", "false")]),
        )
        .unwrap();
        assert_eq!(settings.server.port, 9100);
        assert_eq!(settings.server.host, "0.0.0.0");
        assert_eq!(settings.log.format, LogFormat::Json);
        assert!(!settings.engine.enabled);
    }

    #[test]
    fn database_url_falls_back_to_database_url() {
        let settings = Settings::load(None, &env(&[("DATABASE_URL", "/tmp/a.db")])).unwrap();
        assert_eq!(settings.database.url, "/tmp/a.db");
        let settings = Settings::load(
            None,
            &env(&[("DATABASE_URL", "/tmp/a.db"), ("ASYNC_ENGINE__DATABASE__URL", "/tmp/b.db")]),
        )
        .unwrap();
        assert_eq!(settings.database.url, "/tmp/b.db");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (pairs, key) in [
            (&[("ASYNC_ENGINE__SERVER__PORT", "http")][..], "port"),
            (&[("ASYNC_ENGINE__SERVER__PORT", "70000")], "port"),
            (&[("ASYNC_ENGINE__SERVER__HOST", "not a host")], "server.host"),
            (&[("ASYNC_ENGINE__API__SUCCESS_CODE", "201")], "api.success_code"),
            (&[("ASYNC_ENGINE__DATABASE__POOL_SIZE", "0")], "database.pool_size"),
            (&[("ASYNC_ENGINE__DATABASE__URL", "mysql://x")], "database.url"),
            (&[("ASYNC_ENGINE__LOG__FORMAT", "xml")], "format"),
            (&[("ASYNC_ENGINE__ENGINE__ENABLED", "perhaps")], "enabled"),
            (&[("ASYNC_ENGINE__SERVER__PROT", "1")], "prot"),
        ] {
            let text = error(pairs);
            assert!(text.contains(key), "{pairs:?}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let text = format!("{:#}", Settings::load(Some(Path::new("/no/such/file.toml")), &[]).unwrap_err());
        assert!(text.contains("--config"), "{text}");
    }
}
