//! What the engine is opened with: [`EngineArgs`], [`WalMode`] and each tenant's [`TenantSettings`].

use std::path::PathBuf;
use std::time::Duration;

use crate::alert::DEFAULT_RULE;
use crate::store::{Lake, TenantName};
use crate::{Error, Result};

/// What [`crate::Engine::open`] needs.
#[derive(Debug, Clone)]
pub struct EngineArgs {
    /// Where the tables live.
    pub lake: Lake,
    /// Flush the buffer at least this often.
    pub flush_interval: Duration,
    /// Flush as soon as this many rows are buffered in a table.
    pub flush_rows: usize,
    /// `(drone_id, seq)` dedupe is exact for reports within this much report time of their drone's
    /// newest report.
    pub dedupe_window: Duration,
    /// How accepted reports are made durable before they are acknowledged.
    pub wal: WalMode,
    /// Writes are refused (`Overloaded`) while the buffers hold this many bytes.
    pub max_buffer_bytes: usize,
    /// Alert rules as `(name, SQL boolean expression over a sighting)`; empty: the default rule
    /// [`DEFAULT_RULE`].
    pub alert_rules: Vec<(String, String)>,
}

impl EngineArgs {
    /// How often the buffer is flushed by default.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
    /// Buffered rows in a table that trigger a flush by default.
    pub const DEFAULT_FLUSH_ROWS: usize = 1_000_000;
    /// The default dedupe window (report time).
    pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
    /// The default buffer limit of [`EngineArgs::new`] (the server sizes its own from the
    /// machine's memory).
    pub const DEFAULT_MAX_BUFFER_BYTES: usize = 1 << 30;
    /// Smallest buffer limit.
    pub const MIN_MAX_BUFFER_BYTES: usize = 1 << 20;
    /// WAL segment size before a new segment starts, by default.
    pub const DEFAULT_WAL_SEGMENT_BYTES: u64 = 64 << 20;
    /// Smallest WAL segment size.
    pub const MIN_WAL_SEGMENT_BYTES: u64 = 4096;

    /// Checks the settings' ranges (the bounds above); [`crate::Engine::open`] calls it.
    pub fn check(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        if self.flush_rows == 0 {
            return invalid("flush_rows must be at least 1".into());
        }
        if self.flush_interval.is_zero() {
            return invalid("flush_interval must be longer than 0".into());
        }
        if self.max_buffer_bytes < Self::MIN_MAX_BUFFER_BYTES {
            return invalid(format!(
                "max_buffer_bytes must be at least {}",
                Self::MIN_MAX_BUFFER_BYTES
            ));
        }
        if let WalMode::Local { segment_bytes, .. } = &self.wal
            && *segment_bytes < Self::MIN_WAL_SEGMENT_BYTES
        {
            return invalid(format!(
                "the WAL segment size must be at least {} bytes",
                Self::MIN_WAL_SEGMENT_BYTES
            ));
        }
        if let WalMode::Stream(stream) = &self.wal {
            stream.check()?;
        }
        Ok(())
    }

    /// Arguments for `lake` and `wal` with the defaults above and the default alert rule; set
    /// fields by struct update for anything else.
    pub fn new(lake: Lake, wal: WalMode) -> Self {
        Self {
            lake,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            flush_rows: Self::DEFAULT_FLUSH_ROWS,
            dedupe_window: Self::DEFAULT_DEDUPE_WINDOW,
            wal,
            max_buffer_bytes: Self::DEFAULT_MAX_BUFFER_BYTES,
            alert_rules: Vec::new(),
        }
    }
}

/// Where the write-ahead log lives.
#[derive(Debug, Clone)]
pub enum WalMode {
    /// No log: acknowledged reports not yet flushed are lost in a crash (benchmarks only).
    Off,
    /// Segment files under `dir/<tenant>/`, fsynced before each acknowledgement.
    Local {
        /// The WAL root directory.
        dir: PathBuf,
        /// Segment size before a new one starts.
        segment_bytes: u64,
        /// How long records may gather before one write + fsync.
        max_delay: Duration,
    },
    /// One replicated NATS JetStream stream per tenant: an acknowledged report survives the
    /// loss of this machine, and another server opening the tenant takes the stream over.
    Stream(StreamSettings),
}

/// Where and how to reach the NATS JetStream cluster of [`WalMode::Stream`].
#[derive(Clone)]
pub struct StreamSettings {
    /// Server URLs (`nats://host:port` or `tls://host:port`), any of the cluster's nodes.
    pub servers: Vec<String>,
    /// Replicas of each stream Vigie creates (3: a PubAck means stored on 2 of 3 servers).
    pub replicas: usize,
    /// How long a record may wait for its PubAck, retries across a leader election included,
    /// before writes fail.
    pub publish_timeout: Duration,
    /// User and password, if the servers require them.
    pub user: Option<(String, String)>,
    /// A token, if the servers require one.
    pub token: Option<String>,
    /// PEM root certificates to trust for `tls://` servers (the system's otherwise).
    pub tls_ca: Option<PathBuf>,
    /// How long a node's lease on a tenant lasts without renewal: a dead or paused owner's
    /// tenants are taken over this long (plus one renewal period) after its last renewal.
    pub lease_ttl: Duration,
    /// The gRPC address other nodes forward writes of this node's tenants to (`http://host:port`
    /// or `https://…`); empty: this node's tenants cannot be written through other nodes.
    pub advertise: String,
    /// What the names of this deployment's streams, subjects and buckets start with
    /// (`<prefix>-<tenant>`, `<prefix>.<tenant>.wal`, `<prefix>-leases`), so that several
    /// deployments share one NATS cluster without seeing each other's data.
    pub prefix: String,
    /// Whether this node may own tenants (`--role` with `process`): dedupe, log, raise alerts
    /// and flush them. A node that may not only follows: it forwards writes and answers
    /// queries (a stateless query or ingest node).
    pub process: bool,
}

impl StreamSettings {
    /// Replicas of a stream by default.
    pub const DEFAULT_REPLICAS: usize = 3;
    /// Most replicas JetStream allows.
    pub const MAX_REPLICAS: usize = 5;
    /// How long a record may wait for its PubAck by default.
    pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
    /// A lease's time to live by default.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
    /// Shortest lease TTL (renewals run three times per TTL).
    pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
    /// Longest lease TTL.
    pub const MAX_LEASE_TTL: Duration = Duration::from_secs(60);
    /// The name prefix by default.
    pub const DEFAULT_PREFIX: &str = "vigie";

    /// Settings for `servers` with the defaults above and no credentials.
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            replicas: Self::DEFAULT_REPLICAS,
            publish_timeout: Self::DEFAULT_PUBLISH_TIMEOUT,
            user: None,
            token: None,
            tls_ca: None,
            lease_ttl: Self::DEFAULT_LEASE_TTL,
            advertise: String::new(),
            prefix: Self::DEFAULT_PREFIX.to_string(),
            process: true,
        }
    }

    /// Checks the ranges and names of the settings (also done by [`crate::Engine::open`]).
    pub fn check(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(Error::InvalidConfig(
                "the stream needs at least one NATS server URL".into(),
            ));
        }
        if !(1..=Self::MAX_REPLICAS).contains(&self.replicas) {
            return Err(Error::InvalidConfig(format!(
                "stream replicas must be between 1 and {}",
                Self::MAX_REPLICAS
            )));
        }
        if self.publish_timeout < Duration::from_secs(1) {
            return Err(Error::InvalidConfig(
                "the stream publish timeout must be at least 1s".into(),
            ));
        }
        if !(Self::MIN_LEASE_TTL..=Self::MAX_LEASE_TTL).contains(&self.lease_ttl) {
            return Err(Error::InvalidConfig(format!(
                "the lease TTL must be between {:?} and {:?}",
                Self::MIN_LEASE_TTL,
                Self::MAX_LEASE_TTL
            )));
        }
        let prefix_ok = (1..=32).contains(&self.prefix.len())
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !prefix_ok {
            return Err(Error::InvalidConfig(format!(
                "the stream prefix {:?} must be 1 to 32 characters among lowercase letters, \
                 digits, '_' and '-' (it starts NATS stream, subject and bucket names)",
                self.prefix
            )));
        }
        let is_url = ["http://", "https://"]
            .iter()
            .any(|scheme| self.advertise.starts_with(scheme));
        if !self.advertise.is_empty() && !is_url {
            return Err(Error::InvalidConfig(format!(
                "the advertised address {:?} must be a URL: http://host:port or https://host:port",
                self.advertise
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for StreamSettings {
    // Credentials stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSettings")
            .field("servers", &self.servers)
            .field("replicas", &self.replicas)
            .field("publish_timeout", &self.publish_timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("tls_ca", &self.tls_ca)
            .field("lease_ttl", &self.lease_ttl)
            .field("advertise", &self.advertise)
            .field("prefix", &self.prefix)
            .field("process", &self.process)
            .finish()
    }
}

/// A tenant's own settings; unset ones fall back to the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    /// The tenant.
    pub name: TenantName,
    /// Its alert rules as `(name, expression)`; empty: [`EngineArgs::alert_rules`].
    pub alert_rules: Vec<(String, String)>,
    /// Whole days older than this are deleted; `None`: the maintenance arguments' retention.
    pub retention: Option<Duration>,
}

impl TenantSettings {
    /// A tenant with the server's settings.
    pub fn named(name: TenantName) -> Self {
        Self {
            name,
            alert_rules: Vec::new(),
            retention: None,
        }
    }
}

pub(crate) fn window_micros(window: Duration) -> i64 {
    i64::try_from(window.as_micros()).unwrap_or(i64::MAX)
}

/// The rules a tenant runs: its own, else the server's, else the default rule.
pub(crate) fn rules_for(
    server: &[(String, String)],
    tenant: &[(String, String)],
) -> Vec<(String, String)> {
    if !tenant.is_empty() {
        tenant.to_vec()
    } else if !server.is_empty() {
        server.to_vec()
    } else {
        vec![(DEFAULT_RULE.0.to_string(), DEFAULT_RULE.1.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_prefixes_are_checked() {
        let mut settings = StreamSettings::new(vec!["nats://127.0.0.1:4222".into()]);
        settings.check().unwrap();
        settings.prefix = "staging-2".into();
        settings.check().unwrap();
        for bad in ["", "Vigie", "a.b", "a b", "x*", &"p".repeat(33)] {
            settings.prefix = bad.to_string();
            let err = settings.check().unwrap_err().to_string();
            assert!(err.contains("stream prefix"), "{bad:?}: {err}");
        }
    }
}
