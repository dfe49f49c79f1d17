//! Configuration of `outpost-relay run`: flags, `OUTPOST_*` environment variables and a
//! TOML file, in that order of precedence, then the defaults documented on each field.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use sync_protocol::Region;

/// Default QUIC address for nodes: every interface, since nodes come over the WAN.
pub const DEFAULT_QUIC: &str = "0.0.0.0:4433";
/// Default address of the consumers' HTTP API: loopback, so that exposing it is a
/// deliberate choice.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8081";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "relay-data";
/// Default most node connections served at once; more are closed at once with a reason.
pub const DEFAULT_CONNECTIONS_MAX: usize = 4096;
/// Default most bytes per second the relay reads from one node connection: 64 MiB/s,
/// about 4 times what the `drain` benchmark moves over loopback and far above a site's
/// uplink, so only a node that floods the relay ever meets it.
pub const DEFAULT_NODE_BYTES_PER_SEC_MAX: u64 = 64 * 1024 * 1024;
/// Lowest accepted `node_bytes_per_sec_max`: 1 KiB/s. Below it one batch of ordinary
/// events takes minutes to read, which is a misconfiguration rather than a protection.
pub const NODE_BYTES_PER_SEC_MIN: u64 = 1024;

/// Every setting, each optional so that the sources can be layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory of the relay's store (created if missing). [default: ./relay-data]
    #[arg(long, env = "OUTPOST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address that nodes connect to over QUIC. [default: 0.0.0.0:4433]
    #[arg(long, env = "OUTPOST_QUIC", value_name = "ADDR")]
    pub quic: Option<SocketAddr>,
    /// Address of the consumers' HTTP API (`/v1/log`, `/v1/nodes`). [default: 127.0.0.1:8081]
    #[arg(long, env = "OUTPOST_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// The one region this relay serves; nodes of other regions are refused. [default: the
    /// region in the outpost://REGION/NAME URI of the relay certificate]
    #[arg(long, env = "OUTPOST_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// The relay's name, shown to nodes. [default: the name in the certificate's URI]
    #[arg(long, env = "OUTPOST_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// The deployment CA certificate (PEM); only nodes with certificates it issued connect.
    #[arg(long, env = "OUTPOST_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The relay's certificate (PEM), from `outpost-relay pki relay`.
    #[arg(long, env = "OUTPOST_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The relay's private key (PEM).
    #[arg(long, env = "OUTPOST_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Most node connections served at once. A few more are answered with a busy
    /// refusal that tells the node when to retry; beyond those, connection attempts are
    /// refused without a handshake. [default: 4096]
    #[arg(long, env = "OUTPOST_CONNECTIONS_MAX", value_name = "N")]
    pub connections_max: Option<usize>,
    /// Most bytes per second read from one node's connection, over all its streams; a
    /// faster node is held back by QUIC flow control instead of being buffered by the
    /// relay. [default: 67108864 (64 MiB/s)]
    #[arg(long, env = "OUTPOST_NODE_BYTES_PER_SEC_MAX", value_name = "BYTES")]
    pub node_bytes_per_sec_max: Option<u64>,
}

impl Settings {
    /// Fills what `self` leaves unset from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(lower.data_dir),
            quic: self.quic.or(lower.quic),
            http: self.http.or(lower.http),
            region: self.region.or(lower.region),
            name: self.name.or(lower.name),
            ca: self.ca.or(lower.ca),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            connections_max: self.connections_max.or(lower.connections_max),
            node_bytes_per_sec_max: self.node_bytes_per_sec_max.or(lower.node_bytes_per_sec_max),
        }
    }
}

pub use node::daemon::ConfigError;

/// The relay's validated configuration. Region and name may still come from the
/// certificate, which [`crate::run`] reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// Store directory.
    pub data_dir: PathBuf,
    /// QUIC listen address.
    pub quic: SocketAddr,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Region, if set explicitly.
    pub region: Option<Region>,
    /// Name, if set explicitly.
    pub name: Option<String>,
    /// CA certificate file.
    pub ca: PathBuf,
    /// Relay certificate file.
    pub cert: PathBuf,
    /// Relay key file.
    pub key: PathBuf,
    /// Most connections at once.
    pub connections_max: usize,
    /// Most bytes per second read from one node connection.
    pub node_bytes_per_sec_max: u64,
}

impl Config {
    /// Validates layered settings into a configuration, applying the defaults.
    pub fn resolve(s: Settings) -> Result<Config, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        let default_addr = |field, text: &str| -> Result<SocketAddr, ConfigError> {
            text.parse().map_err(|e| invalid(field, format!("{e}")))
        };
        let region = match s.region {
            Some(r) => Some(r.parse::<Region>().map_err(|e| invalid("region", e.to_string()))?),
            None => None,
        };
        if let Some(name) = &s.name
            && (name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid("name", format!("{name:?} must be 1 to 64 printable ASCII bytes")));
        }
        let connections_max = s.connections_max.unwrap_or(DEFAULT_CONNECTIONS_MAX);
        if connections_max == 0 {
            return Err(invalid("connections_max", "must be at least 1".into()));
        }
        let node_bytes_per_sec_max = s.node_bytes_per_sec_max.unwrap_or(DEFAULT_NODE_BYTES_PER_SEC_MAX);
        if node_bytes_per_sec_max < NODE_BYTES_PER_SEC_MIN {
            return Err(invalid(
                "node_bytes_per_sec_max",
                format!("{node_bytes_per_sec_max} is below the minimum of {NODE_BYTES_PER_SEC_MIN}"),
            ));
        }
        Ok(Config {
            data_dir: s.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            quic: s.quic.map_or_else(|| default_addr("quic", DEFAULT_QUIC), Ok)?,
            http: s.http.map_or_else(|| default_addr("http", DEFAULT_HTTP), Ok)?,
            region,
            name: s.name,
            ca: s.ca.ok_or(ConfigError::Missing("ca"))?,
            cert: s.cert.ok_or(ConfigError::Missing("cert"))?,
            key: s.key.ok_or(ConfigError::Missing("key"))?,
            connections_max,
            node_bytes_per_sec_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_sample_resolves_with_its_commented_options_too() {
        let sample = include_str!("../deploy/relay.toml");
        let s: Settings = toml::from_str(sample).unwrap();
        Config::resolve(s).unwrap();
        // The options left at their default are there too, commented out.
        let uncommented = sample.replace("# region =", "region =").replace("# name =", "name =");
        let s: Settings = toml::from_str(&uncommented).unwrap();
        let config = Config::resolve(s).unwrap();
        assert_eq!(config.name.as_deref(), Some("relay-1"));
        assert_eq!(config.region.map(|r| r.to_string()).as_deref(), Some("eu-west"));
        assert_eq!(config.connections_max, 4096);
        assert_eq!(config.node_bytes_per_sec_max, DEFAULT_NODE_BYTES_PER_SEC_MAX);
        assert_eq!(config.quic, "0.0.0.0:4433".parse().unwrap());
        assert_eq!(config.key, PathBuf::from("/etc/outpost/relay.key"));
    }

    #[test]
    fn the_node_rate_limit_has_a_floor() {
        let with = |bytes_per_sec| Settings {
            ca: Some("ca.pem".into()),
            cert: Some("relay.pem".into()),
            key: Some("relay.key".into()),
            node_bytes_per_sec_max: Some(bytes_per_sec),
            ..Settings::default()
        };
        let config = Config::resolve(with(NODE_BYTES_PER_SEC_MIN)).unwrap();
        assert_eq!(config.node_bytes_per_sec_max, NODE_BYTES_PER_SEC_MIN);
        let err = Config::resolve(with(NODE_BYTES_PER_SEC_MIN - 1)).unwrap_err();
        assert_eq!(err.to_string(), "node_bytes_per_sec_max: 1023 is below the minimum of 1024");
    }
}
