//! Configuration, layered: built-in defaults, then a TOML file (`--config`), then `KIRANA_…`
//! environment variables, then flags. Each later layer overrides the earlier.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde::Deserialize;

/// Settings every command shares. Flags carry an `env` name, so clap applies env < flag.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Where the embedded databases live.
    #[arg(long, global = true, env = "KIRANA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A TOML file with any of the settings below.
    #[arg(long, global = true, env = "KIRANA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Number of SQLite shard files (more allow parallel writers). Existing stores stay put.
    #[arg(long, global = true, env = "KIRANA_SHARDS")]
    pub shards: Option<u32>,
    /// `full` (survives power loss) or `normal` (survives a crash of the process).
    #[arg(long, global = true, env = "KIRANA_SYNCHRONOUS")]
    pub synchronous: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "KIRANA_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Where events travel: `embedded` (the outbox is the log) or `nats://HOST:PORT`
    /// (NATS JetStream).
    #[arg(long, global = true, env = "KIRANA_EVENTS")]
    pub events: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KIRANA_LISTEN")]
    pub listen: Option<String>,
    /// Believe X-Forwarded-For (only behind a proxy that sets it). `--trust-proxy` alone means true.
    #[arg(long, env = "KIRANA_TRUST_PROXY", num_args = 0..=1, default_missing_value = "true")]
    pub trust_proxy: Option<bool>,
    /// 64 hex digits keying sign-in code hashes; defaults to `<data-dir>/secret.key`.
    #[arg(long, env = "KIRANA_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Seconds to keep serving after a shutdown signal while `/readyz` says 503, so balancers
    /// stop sending traffic before the listener closes.
    #[arg(long, env = "KIRANA_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// The address shoppers and merchants use, e.g. https://shop.example.com (canonical links,
    /// secure cookies). Defaults to http://<listen>.
    #[arg(long, env = "KIRANA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where uploaded images go: `s3://bucket/prefix` (credentials and endpoint from the usual
    /// `AWS_*` variables) or `file:///dir`. Defaults to `<data-dir>/media`.
    #[arg(long, env = "KIRANA_MEDIA_URL")]
    pub media_url: Option<String>,
    /// Let merchants' webhooks reach loopback and private addresses (development only: in
    /// production a webhook must not be aimable at the platform's own network).
    #[arg(long, env = "KIRANA_WEBHOOKS_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub webhooks_allow_private: Option<bool>,
}

/// The file layer: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    shards: Option<u32>,
    synchronous: Option<String>,
    log_format: Option<String>,
    events: Option<String>,
    listen: Option<String>,
    trust_proxy: Option<bool>,
    secret_key: Option<String>,
    drain_secs: Option<u64>,
    public_url: Option<String>,
    media_url: Option<String>,
    webhooks_allow_private: Option<bool>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub shards: u32,
    pub sqlite: SqliteOptions,
    pub json_logs: bool,
    /// `None`: embedded; `Some(url)`: NATS JetStream at that URL.
    pub nats_url: Option<String>,
    /// Only `serve` listens, so only `serve` requires a valid address.
    pub listen: Option<SocketAddr>,
    pub trust_proxy: bool,
    pub secret_key: Option<String>,
    pub drain_secs: u64,
    pub public_url: Option<String>,
    /// Where uploaded images live (an object_store URL); `None`: `<data-dir>/media`.
    pub media_url: Option<String>,
    pub webhooks_allow_private: bool,
}

impl Config {
    pub fn resolve(g: &GlobalArgs, serve: Option<&ServeArgs>) -> anyhow::Result<Config> {
        let file = match &g.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = g.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./kirana-data"));
        let shards = g.shards.or(file.shards).unwrap_or(1);
        if shards == 0 || shards > 1024 {
            bail!("shards must be between 1 and 1024, not {shards}");
        }
        let synchronous = match g.synchronous.clone().or(file.synchronous).as_deref().unwrap_or("full") {
            "full" => Synchronous::Full,
            "normal" => Synchronous::Normal,
            other => bail!("synchronous must be 'full' or 'normal', not '{other}'"),
        };
        let json_logs = match g.log_format.clone().or(file.log_format).as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => bail!("log format must be 'text' or 'json', not '{other}'"),
        };
        let listen = match serve {
            None => None,
            Some(s) => {
                let raw = s.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
                Some(
                    raw.parse()
                        .with_context(|| format!("listen address '{raw}' is not host:port, e.g. 127.0.0.1:8080"))?,
                )
            }
        };
        let secret_key = serve.and_then(|s| s.secret_key.clone()).or(file.secret_key);
        if let Some(hex) = &secret_key
            && (hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bail!("the secret key must be 64 hex digits");
        }
        let nats_url = match g.events.clone().or(file.events).as_deref().map(str::trim) {
            None | Some("embedded") | Some("") => None,
            Some(u) if u.starts_with("nats://") || u.starts_with("tls://") => Some(u.to_string()),
            Some(other) => bail!("--events must be `embedded` or a nats:// URL, not {other:?}"),
        };
        Ok(Config {
            nats_url,
            data_dir,
            shards,
            sqlite: SqliteOptions { synchronous, ..SqliteOptions::default() },
            json_logs,
            listen,
            trust_proxy: serve.and_then(|s| s.trust_proxy).or(file.trust_proxy).unwrap_or(false),
            secret_key,
            drain_secs: serve.and_then(|s| s.drain_secs).or(file.drain_secs).unwrap_or(0),
            public_url: serve.and_then(|s| s.public_url.clone()).or(file.public_url),
            media_url: serve.and_then(|s| s.media_url.clone()).or(file.media_url),
            webhooks_allow_private: serve
                .and_then(|s| s.webhooks_allow_private)
                .or(file.webhooks_allow_private)
                .unwrap_or(false),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globals() -> GlobalArgs {
        GlobalArgs { data_dir: None, config: None, shards: None, synchronous: None, log_format: None, events: None }
    }

    #[test]
    fn defaults_are_the_embedded_laptop_setup() {
        let serve = ServeArgs {
            listen: None,
            trust_proxy: None,
            secret_key: None,
            drain_secs: None,
            public_url: None,
            media_url: None,
            webhooks_allow_private: None,
        };
        let c = Config::resolve(&globals(), Some(&serve)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./kirana-data"));
        assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.shards, 1);
        assert_eq!(c.sqlite.synchronous, Synchronous::Full);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kirana.toml");
        std::fs::write(&path, "shards = 4\nlisten = \"0.0.0.0:9000\"\nsynchronous = \"normal\"\n").unwrap();
        let mut g = globals();
        g.config = Some(path);
        g.shards = Some(2);
        let serve = ServeArgs {
            listen: None,
            trust_proxy: None,
            secret_key: None,
            drain_secs: None,
            public_url: None,
            media_url: None,
            webhooks_allow_private: None,
        };
        let c = Config::resolve(&g, Some(&serve)).unwrap();
        assert_eq!(c.shards, 2, "flag wins over file");
        assert_eq!(c.listen.unwrap().to_string(), "0.0.0.0:9000", "file wins over default");
        assert_eq!(c.sqlite.synchronous, Synchronous::Normal);
    }

    #[test]
    fn bad_settings_are_refused_with_a_message() {
        let mut g = globals();
        g.synchronous = Some("sometimes".into());
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("synchronous"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kirana.toml");
        std::fs::write(&path, "shard = 4\n").unwrap();
        let mut g = globals();
        g.config = Some(path);
        assert!(Config::resolve(&g, None).is_err(), "unknown keys are typos, not ignored");
    }
}
