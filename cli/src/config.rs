//! `vigie serve` configuration: command line > `VIGIE_*` environment > TOML file > defaults.
//!
//! Every option can be set in all three places; durations use humantime (`10s`, `500ms`, `24h`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use vigie_engine::EngineArgs;

/// Options of `vigie serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML file with any of the options below (command line and environment win).
    #[arg(long, env = "VIGIE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for local state; the lake defaults to `<data-dir>/lake` [default: ./vigie-data].
    #[arg(long, env = "VIGIE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Object-store URL of the lake: file://, s3://bucket/prefix, gs://, az://, memory://
    /// [default: file://<data-dir>/lake].
    #[arg(long, env = "VIGIE_OBJECT_STORE")]
    pub(crate) object_store: Option<String>,
    /// Address of the gRPC port (Ingest, Alerts and Flight SQL); port 0 picks a free port
    /// [default: 127.0.0.1:50051].
    #[arg(long, env = "VIGIE_GRPC_ADDR")]
    pub(crate) grpc_addr: Option<SocketAddr>,
    /// Flush the buffer to Parquet at least this often [default: 10s].
    #[arg(long, env = "VIGIE_FLUSH_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) flush_interval: Option<Duration>,
    /// Flush as soon as a table buffers this many rows [default: 1000000].
    #[arg(long, env = "VIGIE_FLUSH_ROWS")]
    pub(crate) flush_rows: Option<usize>,
    /// Report-time window within which `(drone_id, seq)` dedupe is exact [default: 24h].
    #[arg(long, env = "VIGIE_DEDUPE_WINDOW", value_parser = humantime::parse_duration)]
    pub(crate) dedupe_window: Option<Duration>,
    /// Largest accepted gRPC message, in bytes [default: 16777216].
    #[arg(long, env = "VIGIE_MAX_MESSAGE_BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    /// How long a graceful shutdown waits for open streams before flushing [default: 10s].
    #[arg(long, env = "VIGIE_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// Write-ahead log: `fsync` (every acknowledged report is on disk) or `off` (benchmarks only:
    /// a crash loses the unflushed reports) [default: fsync].
    #[arg(long, env = "VIGIE_WAL")]
    pub(crate) wal: Option<WalSetting>,
    /// Directory of the write-ahead log [default: <data-dir>/wal].
    #[arg(long, env = "VIGIE_WAL_DIR")]
    pub(crate) wal_dir: Option<PathBuf>,
    /// How long WAL records may gather before one write + fsync [default: 0s: records arriving
    /// during an fsync share the next one].
    #[arg(long, env = "VIGIE_WAL_MAX_DELAY", value_parser = humantime::parse_duration)]
    pub(crate) wal_max_delay: Option<Duration>,
    /// WAL segment size before a new segment starts [default: 67108864].
    #[arg(long, env = "VIGIE_WAL_SEGMENT_BYTES")]
    pub(crate) wal_segment_bytes: Option<u64>,
    /// Refuse writes (RESOURCE_EXHAUSTED) while this many bytes wait for the object store
    /// [default: a quarter of the machine's memory].
    #[arg(long, env = "VIGIE_MAX_BUFFER_BYTES")]
    pub(crate) max_buffer_bytes: Option<usize>,
    /// An alert rule `NAME=EXPR`: a SQL boolean expression over a sighting (drone_id, seq, time,
    /// latitude, longitude, citizen, score, words). Repeatable; rules given replace the file's and
    /// the default `low_score=score < 20`. In the environment: separated by `;`.
    #[arg(long = "alert-rule", env = "VIGIE_ALERT_RULES", value_delimiter = ';')]
    pub(crate) alert_rules: Vec<String>,
    /// Alerts a subscriber may have queued before its subscription ends (it resumes with
    /// `from_id`) [default: 65536].
    #[arg(long, env = "VIGIE_ALERT_QUEUE")]
    pub(crate) alert_queue: Option<usize>,
    /// POST every alert as JSON to this URL (retried with backoff until a 2xx answer).
    #[arg(long, env = "VIGIE_ALERT_WEBHOOK")]
    pub(crate) alert_webhook: Option<String>,
    /// How often background maintenance runs (retention, compaction of closed days, vacuum);
    /// `0s` turns it off [default: 1h].
    #[arg(long, env = "VIGIE_COMPACT_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) compact_interval: Option<Duration>,
    /// Size of the files compaction writes [default: 268435456].
    #[arg(long, env = "VIGIE_COMPACT_TARGET_BYTES")]
    pub(crate) compact_target_bytes: Option<u64>,
    /// Files that compaction or retention removed are deleted from storage once removed this
    /// long ago; queries still running, and other servers, may read them until then [default: 1h].
    #[arg(long, env = "VIGIE_VACUUM_AFTER", value_parser = humantime::parse_duration)]
    pub(crate) vacuum_after: Option<Duration>,
    /// Delete whole days of every table once they ended longer ago than this (the way personal
    /// data leaves); unset keeps everything.
    #[arg(long, env = "VIGIE_RETENTION", value_parser = humantime::parse_duration)]
    pub(crate) retention: Option<Duration>,
    /// PEM certificate chain: serve the gRPC port over TLS (clients use `grpc+tls://`).
    /// Needs `--tls-key`.
    #[arg(long, env = "VIGIE_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "VIGIE_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Session tokens from a Flight SQL login (Handshake) expire after this [default: 1h].
    #[arg(long, env = "VIGIE_TOKEN_TTL", value_parser = humantime::parse_duration)]
    pub(crate) token_ttl: Option<Duration>,
    /// Memory one SQL query may use, in bytes: sorts and aggregations spill to disk beyond it,
    /// other queries (and any function building a larger value) fail with RESOURCE_EXHAUSTED
    /// [default: 1073741824].
    #[arg(long, env = "VIGIE_QUERY_MEMORY_BYTES")]
    pub(crate) query_memory_bytes: Option<usize>,
    /// Memory all running SQL queries may use together, in bytes: each reserves
    /// --query-memory-bytes when it starts, and is refused with RESOURCE_EXHAUSTED when that no
    /// longer fits [default: a quarter of the machine's memory].
    #[arg(long, env = "VIGIE_QUERIES_MEMORY_BYTES")]
    pub(crate) queries_memory_bytes: Option<usize>,
    /// A SQL query still running after this long is cancelled [default: 5m].
    #[arg(long, env = "VIGIE_QUERY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) query_timeout: Option<Duration>,
    /// SQL queries one tenant may run at once; more are refused with RESOURCE_EXHAUSTED
    /// [default: 8].
    #[arg(long, env = "VIGIE_MAX_CONCURRENT_QUERIES")]
    pub(crate) max_concurrent_queries: Option<usize>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (port 0 picks a free port; the address
    /// is printed on stdout after the gRPC one) [default: off].
    #[arg(long, env = "VIGIE_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// The `--wal` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WalSetting {
    /// Every accepted report is fsynced before it is acknowledged.
    Fsync,
    /// No log (benchmarks only).
    Off,
}

/// The TOML file: the same names as the command-line options, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    object_store: Option<String>,
    grpc_addr: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    flush_interval: Option<Duration>,
    flush_rows: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    dedupe_window: Option<Duration>,
    max_message_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    wal: Option<WalSetting>,
    wal_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    wal_max_delay: Option<Duration>,
    wal_segment_bytes: Option<u64>,
    max_buffer_bytes: Option<usize>,
    /// `name = "expression"` pairs.
    alert_rules: Option<std::collections::BTreeMap<String, String>>,
    alert_queue: Option<usize>,
    alert_webhook: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    compact_interval: Option<Duration>,
    compact_target_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    vacuum_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    token_ttl: Option<Duration>,
    query_memory_bytes: Option<usize>,
    queries_memory_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    query_timeout: Option<Duration>,
    max_concurrent_queries: Option<usize>,
    metrics_addr: Option<SocketAddr>,
}

/// The PEM files of the gRPC port's TLS identity.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Config {
    /// What a maintenance run does, as of `now`.
    pub(crate) fn maintenance(&self) -> vigie_engine::compaction::MaintenanceArgs {
        vigie_engine::compaction::MaintenanceArgs {
            target_file_bytes: self.compact_target_bytes,
            retention: self.retention,
            vacuum_after: self.vacuum_after,
            now: chrono::Utc::now(),
        }
    }
}

/// The resolved configuration of `vigie serve`.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) object_store: url::Url,
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) flush_interval: Duration,
    pub(crate) flush_rows: usize,
    pub(crate) dedupe_window: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) shutdown_timeout: Duration,
    /// `None` when the WAL is off.
    pub(crate) wal_dir: Option<PathBuf>,
    pub(crate) wal_max_delay: Duration,
    pub(crate) wal_segment_bytes: u64,
    pub(crate) max_buffer_bytes: usize,
    /// Empty: the engine's default rule.
    pub(crate) alert_rules: Vec<(String, String)>,
    pub(crate) alert_queue: usize,
    pub(crate) alert_webhook: Option<String>,
    /// `None`: plaintext gRPC.
    pub(crate) tls: Option<TlsFiles>,
    /// Zero: no background maintenance.
    pub(crate) compact_interval: Duration,
    pub(crate) compact_target_bytes: u64,
    pub(crate) vacuum_after: Duration,
    pub(crate) retention: Option<Duration>,
    pub(crate) token_ttl: Duration,
    pub(crate) query_limits: vigie_sql::QueryLimits,
    /// `None`: no metrics endpoint.
    pub(crate) metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Merges the command line (with its environment) over the optional TOML file and defaults.
    pub(crate) fn resolve(args: ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let query_limits = query_limits(&args, &file);
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("vigie-data"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve data dir {}", data_dir.display()))?;
        let object_store = match args.object_store.or(file.object_store) {
            Some(u) => parse_store_url(&u)?,
            None => url::Url::from_directory_path(data_dir.join("lake"))
                .map_err(|()| anyhow::anyhow!("data dir {} is not absolute", data_dir.display()))?,
        };
        let config = Self {
            object_store,
            grpc_addr: args
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            flush_interval: args
                .flush_interval
                .or(file.flush_interval)
                .unwrap_or(EngineArgs::DEFAULT_FLUSH_INTERVAL),
            flush_rows: args
                .flush_rows
                .or(file.flush_rows)
                .unwrap_or(EngineArgs::DEFAULT_FLUSH_ROWS),
            dedupe_window: args
                .dedupe_window
                .or(file.dedupe_window)
                .unwrap_or(EngineArgs::DEFAULT_DEDUPE_WINDOW),
            max_message_bytes: args
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(vigie_ingest::DEFAULT_MAX_MESSAGE_BYTES),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(Duration::from_secs(10)),
            wal_dir: match args.wal.or(file.wal).unwrap_or(WalSetting::Fsync) {
                WalSetting::Off => None,
                WalSetting::Fsync => Some(
                    args.wal_dir
                        .or(file.wal_dir)
                        .unwrap_or_else(|| data_dir.join("wal")),
                ),
            },
            wal_max_delay: args
                .wal_max_delay
                .or(file.wal_max_delay)
                .unwrap_or(Duration::ZERO),
            wal_segment_bytes: args
                .wal_segment_bytes
                .or(file.wal_segment_bytes)
                .unwrap_or(64 << 20),
            max_buffer_bytes: args
                .max_buffer_bytes
                .or(file.max_buffer_bytes)
                .unwrap_or_else(default_max_buffer_bytes),
            alert_rules: if args.alert_rules.is_empty() {
                file.alert_rules.unwrap_or_default().into_iter().collect()
            } else {
                args.alert_rules
                    .iter()
                    .map(|r| parse_rule(r))
                    .collect::<Result<_>>()?
            },
            alert_queue: args.alert_queue.or(file.alert_queue).unwrap_or(65_536),
            alert_webhook: args.alert_webhook.or(file.alert_webhook),
            tls: match (
                args.tls_cert.or(file.tls_cert),
                args.tls_key.or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                _ => bail!("TLS needs both --tls-cert and --tls-key (or neither)"),
            },
            compact_interval: args
                .compact_interval
                .or(file.compact_interval)
                .unwrap_or(Duration::from_secs(3600)),
            compact_target_bytes: args
                .compact_target_bytes
                .or(file.compact_target_bytes)
                .unwrap_or(256 << 20),
            vacuum_after: args
                .vacuum_after
                .or(file.vacuum_after)
                .unwrap_or(Duration::from_secs(3600)),
            retention: args.retention.or(file.retention),
            token_ttl: args
                .token_ttl
                .or(file.token_ttl)
                .unwrap_or(Duration::from_secs(3600)),
            query_limits,
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            data_dir,
        };
        if let Some(hook) = &config.alert_webhook {
            let parsed = url::Url::parse(hook)
                .with_context(|| format!("invalid --alert-webhook URL {hook}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("--alert-webhook must be an http:// or https:// URL, not {hook}");
            }
        }
        config
            .query_limits
            .check()
            .map_err(|e| anyhow::anyhow!(e))?;
        if config.token_ttl.is_zero() {
            bail!("--token-ttl must be longer than 0");
        }
        if config.alert_queue == 0 {
            bail!("--alert-queue must be at least 1");
        }
        if config.wal_segment_bytes < 4096 {
            bail!("--wal-segment-bytes must be at least 4096");
        }
        if config.max_buffer_bytes < 1 << 20 {
            bail!("--max-buffer-bytes must be at least 1048576 (1 MiB)");
        }
        if config.flush_interval.is_zero() {
            bail!("--flush-interval must be longer than 0");
        }
        if config.flush_rows == 0 {
            bail!("--flush-rows must be at least 1");
        }
        if config.compact_target_bytes < 1 << 20 {
            bail!("--compact-target-bytes must be at least 1048576 (1 MiB)");
        }
        if config
            .retention
            .is_some_and(|r| r < Duration::from_secs(86_400))
        {
            bail!("--retention must be at least 1d: whole days are deleted");
        }
        if config.max_message_bytes < 1024 {
            bail!("--max-message-bytes must be at least 1024");
        }
        Ok(config)
    }
}

/// The query limits: command line, then file, then `QueryLimits`' defaults.
fn query_limits(args: &ServeArgs, file: &FileConfig) -> vigie_sql::QueryLimits {
    use vigie_sql::QueryLimits;
    let memory_bytes = args
        .query_memory_bytes
        .or(file.query_memory_bytes)
        .unwrap_or(QueryLimits::DEFAULT_MEMORY_BYTES);
    QueryLimits {
        memory_bytes,
        total_memory_bytes: args
            .queries_memory_bytes
            .or(file.queries_memory_bytes)
            .unwrap_or_else(|| QueryLimits::default_total_memory_bytes(memory_bytes)),
        timeout: args
            .query_timeout
            .or(file.query_timeout)
            .unwrap_or(QueryLimits::DEFAULT_TIMEOUT),
        concurrent_per_tenant: args
            .max_concurrent_queries
            .or(file.max_concurrent_queries)
            .unwrap_or(QueryLimits::DEFAULT_CONCURRENT_PER_TENANT),
    }
}

/// Parses `NAME=EXPR`.
pub(crate) fn parse_rule(rule: &str) -> Result<(String, String)> {
    match rule.split_once('=') {
        Some((name, expr)) if !name.trim().is_empty() && !expr.trim().is_empty() => {
            Ok((name.trim().to_string(), expr.trim().to_string()))
        }
        _ => bail!("--alert-rule {rule:?} must look like NAME=EXPR, e.g. low_score=score < 20"),
    }
}

/// A quarter of the machine's memory, or 2 GiB when unknown.
fn default_max_buffer_bytes() -> usize {
    vigie_engine::host::memory_share(4, 2 << 30)
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Parses `--object-store`: a URL, or a plain directory path (made absolute).
fn parse_store_url(value: &str) -> Result<url::Url> {
    if value.contains("://") {
        return url::Url::parse(value)
            .with_context(|| format!("invalid --object-store URL {value}"));
    }
    let dir = std::path::absolute(value)
        .with_context(|| format!("invalid --object-store path {value}"))?;
    url::Url::from_directory_path(&dir)
        .map_err(|()| anyhow::anyhow!("invalid --object-store path {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_wins_over_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        std::fs::write(
            &file,
            "flush_interval = \"2s\"\nflush_rows = 5\ngrpc_addr = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            flush_rows: Some(7),
            ..ServeArgs::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.flush_interval, Duration::from_secs(2));
        assert_eq!(c.flush_rows, 7);
        assert_eq!(c.grpc_addr.port(), 0);
        assert_eq!(c.dedupe_window, Duration::from_secs(86_400));
        assert!(c.object_store.as_str().starts_with("file:///"));
        assert!(c.object_store.as_str().ends_with("/data/lake/"));
        assert_eq!(c.wal_dir, Some(c.data_dir.join("wal")));
        assert!(c.max_buffer_bytes >= 1 << 20);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        std::fs::write(&file, "flush_intervall = \"2s\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("flush_intervall"), "{err:#}");
    }
}
