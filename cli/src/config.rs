//! `vigie serve` configuration: command line > `VIGIE_*` environment > TOML file > defaults.
//!
//! Every option can be set in all three places; durations use humantime (`10s`, `500ms`, `24h`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use vigie_engine::EngineArgs;
use vigie_engine::compaction::MaintenanceArgs;

/// Options of `vigie serve` (and `vigie compact`), on the command line, in `VIGIE_*` variables
/// and in the TOML file alike: one struct for clap and serde, so an option exists in all three
/// or in none. Unset options are `None`; [`Config::resolve`] takes their defaults from the
/// components that own them.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServeArgs {
    /// TOML file with any of the options below (command line and environment win).
    #[arg(long, env = "VIGIE_CONFIG")]
    #[serde(skip)]
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
    #[serde(with = "humantime_serde")]
    pub(crate) flush_interval: Option<Duration>,
    /// Flush as soon as a table buffers this many rows [default: 1000000].
    #[arg(long, env = "VIGIE_FLUSH_ROWS")]
    pub(crate) flush_rows: Option<usize>,
    /// Report-time window within which `(drone_id, seq)` dedupe is exact [default: 24h].
    #[arg(long, env = "VIGIE_DEDUPE_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) dedupe_window: Option<Duration>,
    /// Largest accepted gRPC message, in bytes [default: 16777216].
    #[arg(long, env = "VIGIE_MAX_MESSAGE_BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    /// How long a graceful shutdown waits for open streams before flushing [default: 10s].
    #[arg(long, env = "VIGIE_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
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
    #[serde(with = "humantime_serde")]
    pub(crate) wal_max_delay: Option<Duration>,
    /// WAL segment size before a new segment starts [default: 67108864].
    #[arg(long, env = "VIGIE_WAL_SEGMENT_BYTES")]
    pub(crate) wal_segment_bytes: Option<u64>,
    /// Cluster mode: NATS JetStream servers (`nats://h1:4222,h2:4222,…`, any of the cluster's)
    /// hold the write-ahead log instead of local disk, one replicated stream per tenant, so an
    /// acknowledged report survives the loss of this machine. Replaces `--wal`.
    #[arg(long, env = "VIGIE_STREAM")]
    pub(crate) stream: Option<String>,
    /// Replicas of each stream Vigie creates [default: 3].
    #[arg(long, env = "VIGIE_STREAM_REPLICAS")]
    pub(crate) stream_replicas: Option<usize>,
    /// How long a record may wait for JetStream's acknowledgement, retries across a leader
    /// election included, before writes fail [default: 30s].
    #[arg(long, env = "VIGIE_STREAM_PUBLISH_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) stream_publish_timeout: Option<Duration>,
    /// NATS user (with `--stream-password`).
    #[arg(long, env = "VIGIE_STREAM_USER", requires = "stream_password")]
    pub(crate) stream_user: Option<String>,
    /// NATS password of `--stream-user` (prefer the environment variable).
    #[arg(long, env = "VIGIE_STREAM_PASSWORD", requires = "stream_user")]
    pub(crate) stream_password: Option<String>,
    /// NATS token (prefer the environment variable).
    #[arg(long, env = "VIGIE_STREAM_TOKEN")]
    pub(crate) stream_token: Option<String>,
    /// PEM root certificates to trust for `tls://` NATS servers [default: the system's].
    #[arg(long, env = "VIGIE_STREAM_TLS_CA")]
    pub(crate) stream_tls_ca: Option<PathBuf>,
    /// Cluster mode: the secret every node shares, proving node-to-node calls (a write forwarded
    /// to its tenant's owner); at least 16 characters (prefer the environment variable).
    #[arg(long, env = "VIGIE_CLUSTER_SECRET")]
    pub(crate) cluster_secret: Option<String>,
    /// Cluster mode: the gRPC URL other nodes reach this one at (`http://host:port`, or
    /// `https://` with TLS) [default: the bound --grpc-addr, unless it is 0.0.0.0 or ::].
    #[arg(long, env = "VIGIE_ADVERTISE_ADDR")]
    pub(crate) advertise_addr: Option<String>,
    /// Cluster mode: how long a node's lease on a tenant lasts without renewal; a dead owner's
    /// tenants are taken over about this long after it stopped [default: 5s].
    #[arg(long, env = "VIGIE_LEASE_TTL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) lease_ttl: Option<Duration>,
    /// Cluster mode: what this deployment's NATS streams and buckets are named after
    /// (`<prefix>-<tenant>`, `<prefix>-leases`, `<prefix>-auth`), so that several deployments
    /// share one NATS cluster [default: vigie].
    #[arg(long, env = "VIGIE_STREAM_PREFIX")]
    pub(crate) stream_prefix: Option<String>,
    /// Cluster mode: what this node does, among `ingest` (drones' writes), `process` (owning
    /// tenants: dedupe, alerts, flushes) and `query` (Flight SQL), separated by commas
    /// [default: ingest,process,query].
    #[arg(long, env = "VIGIE_ROLE", value_delimiter = ',')]
    pub(crate) role: Option<Vec<crate::cluster::Role>>,
    /// Refuse writes (RESOURCE_EXHAUSTED) while this many bytes wait for the object store
    /// [default: a quarter of the machine's memory].
    #[arg(long, env = "VIGIE_MAX_BUFFER_BYTES")]
    pub(crate) max_buffer_bytes: Option<usize>,
    /// An alert rule `NAME=EXPR`: a SQL boolean expression over a sighting (drone_id, seq, time,
    /// latitude, longitude, citizen, score, words). Repeatable; rules given replace the file's and
    /// the default `low_score=score < 20`. In the environment: separated by `;`.
    /// In the file: a table of `name = "expression"`.
    #[arg(long = "alert-rule", env = "VIGIE_ALERT_RULES", value_delimiter = ';')]
    #[serde(deserialize_with = "rules_table")]
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
    #[serde(with = "humantime_serde")]
    pub(crate) compact_interval: Option<Duration>,
    /// Size of the files compaction writes [default: 268435456].
    #[arg(long, env = "VIGIE_COMPACT_TARGET_BYTES")]
    pub(crate) compact_target_bytes: Option<u64>,
    /// Files that compaction or retention removed are deleted from storage once removed this
    /// long ago; queries still running, and other servers, may read them until then [default: 1h].
    #[arg(long, env = "VIGIE_VACUUM_AFTER", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) vacuum_after: Option<Duration>,
    /// Delete whole days of every table once they ended longer ago than this (the way personal
    /// data leaves); unset keeps everything.
    #[arg(long, env = "VIGIE_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
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
    #[serde(with = "humantime_serde")]
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
    #[serde(with = "humantime_serde")]
    pub(crate) query_timeout: Option<Duration>,
    /// SQL queries one tenant may run at once; more are refused with RESOURCE_EXHAUSTED
    /// [default: 8].
    #[arg(long, env = "VIGIE_MAX_CONCURRENT_QUERIES")]
    pub(crate) max_concurrent_queries: Option<usize>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (port 0 picks a free port; the address
    /// is printed on stdout after the gRPC one) [default: off].
    #[arg(long, env = "VIGIE_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Serve the web console (live map, alert feed, overview, SQL) at `http://ADDR/` (port 0
    /// picks a free port; the address is printed on stdout after the gRPC one) [default: off].
    #[arg(long, env = "VIGIE_CONSOLE_ADDR")]
    pub(crate) console_addr: Option<SocketAddr>,
    /// The console map's tile URL template, e.g. `https://tiles.example/{z}/{x}/{y}.png`
    /// [default: none: a latitude/longitude grid, which needs no network].
    #[arg(long, env = "VIGIE_CONSOLE_TILE_URL")]
    pub(crate) console_tile_url: Option<String>,
    /// A GeoJSON file drawn on the console map under the drones (the force's area).
    #[arg(long, env = "VIGIE_CONSOLE_OUTLINE")]
    pub(crate) console_outline: Option<PathBuf>,
    /// Rows one SQL console result shows at most (CSV exports are not capped) [default: 10000].
    #[arg(long, env = "VIGIE_CONSOLE_MAX_ROWS")]
    pub(crate) console_max_rows: Option<usize>,
    /// Mail each tenant's daily report (`vigie admin set-report`) through this SMTP server:
    /// `smtp://host[:587]` (STARTTLS), `smtps://host[:465]` (TLS), or
    /// `smtp://127.0.0.1:PORT?tls=none` (a loopback relay); credentials from `VIGIE_SMTP_USER`
    /// and `VIGIE_SMTP_PASSWORD` [default: no mail].
    #[arg(long, env = "VIGIE_SMTP_URL")]
    pub(crate) smtp_url: Option<String>,
    /// The reports' sender [default: Vigie <vigie@localhost>].
    #[arg(long, env = "VIGIE_SMTP_FROM")]
    pub(crate) smtp_from: Option<String>,
    /// Write the report mails as `.eml` files in this directory instead of sending them (a dry
    /// run: each counts as sent).
    #[arg(long, env = "VIGIE_SMTP_DRY_RUN")]
    pub(crate) smtp_dry_run: Option<PathBuf>,
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

/// The file's `[alert_rules]` table, as the command line's `NAME=EXPR` values.
fn rules_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let rules = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    Ok(rules
        .into_iter()
        .map(|(name, expr)| format!("{name}={expr}"))
        .collect())
}

impl ServeArgs {
    /// These options over `file`'s: each one set here wins, the file fills in the rest. The
    /// struct literal names every field, so a new option cannot be forgotten here.
    fn over(self, file: ServeArgs) -> ServeArgs {
        macro_rules! over {
            ($($field:ident),* $(,)?) => {
                ServeArgs {
                    config: self.config,
                    alert_rules: if self.alert_rules.is_empty() {
                        file.alert_rules
                    } else {
                        self.alert_rules
                    },
                    $($field: self.$field.or(file.$field),)*
                }
            };
        }
        over!(
            data_dir,
            object_store,
            grpc_addr,
            flush_interval,
            flush_rows,
            dedupe_window,
            max_message_bytes,
            shutdown_timeout,
            wal,
            wal_dir,
            wal_max_delay,
            wal_segment_bytes,
            stream,
            stream_replicas,
            stream_publish_timeout,
            stream_user,
            stream_password,
            stream_token,
            stream_tls_ca,
            cluster_secret,
            advertise_addr,
            lease_ttl,
            stream_prefix,
            role,
            max_buffer_bytes,
            alert_queue,
            alert_webhook,
            compact_interval,
            compact_target_bytes,
            vacuum_after,
            retention,
            tls_cert,
            tls_key,
            token_ttl,
            query_memory_bytes,
            queries_memory_bytes,
            query_timeout,
            max_concurrent_queries,
            metrics_addr,
            console_addr,
            console_tile_url,
            console_outline,
            console_max_rows,
            smtp_url,
            smtp_from,
            smtp_dry_run,
        )
    }
}

/// The cluster mode's stream settings, if `--stream` is set (ranges are checked by the engine).
fn stream_settings(args: &ServeArgs) -> Result<Option<vigie_engine::StreamSettings>> {
    let Some(servers) = &args.stream else {
        return Ok(None);
    };
    let servers: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if servers.is_empty() {
        bail!("--stream needs at least one NATS server URL, e.g. nats://127.0.0.1:4222");
    }
    let mut settings = vigie_engine::StreamSettings::new(servers);
    if let Some(replicas) = args.stream_replicas {
        settings.replicas = replicas;
    }
    if let Some(timeout) = args.stream_publish_timeout {
        settings.publish_timeout = timeout;
    }
    settings.user = match (&args.stream_user, &args.stream_password) {
        (Some(user), Some(password)) => Some((user.clone(), password.clone())),
        (None, None) => None,
        _ => bail!("NATS credentials need both stream_user and stream_password (or neither)"),
    };
    settings.token = args.stream_token.clone();
    settings.tls_ca = args.stream_tls_ca.clone();
    if let Some(ttl) = args.lease_ttl {
        settings.lease_ttl = ttl;
    }
    if let Some(prefix) = &args.stream_prefix {
        settings.prefix = prefix.clone();
    }
    // The bound address fills it in when unset (serve knows it once listening).
    settings.advertise = args.advertise_addr.clone().unwrap_or_default();
    Ok(Some(settings))
}

/// The daily report's mail settings, if `--smtp-url` or `--smtp-dry-run` is set (the URL is
/// checked when the outbox opens).
fn mail_settings(args: &ServeArgs) -> Result<Option<vigie_report::MailSettings>> {
    if args.smtp_url.is_none() && args.smtp_dry_run.is_none() {
        return Ok(None);
    }
    let credentials = match (
        std::env::var("VIGIE_SMTP_USER"),
        std::env::var("VIGIE_SMTP_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => Some((user, password)),
        (Err(_), Err(_)) => None,
        _ => bail!("SMTP credentials need both VIGIE_SMTP_USER and VIGIE_SMTP_PASSWORD"),
    };
    Ok(Some(vigie_report::MailSettings {
        url: args.smtp_url.clone().unwrap_or_default(),
        from: args
            .smtp_from
            .clone()
            .unwrap_or_else(|| vigie_report::MailSettings::DEFAULT_FROM.into()),
        credentials,
        dry_run: args.smtp_dry_run.clone(),
    }))
}

/// The gRPC address when none is set.
const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);
/// How long a graceful shutdown waits for open streams by default.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `None` when the WAL is off or on a stream.
    pub(crate) wal_dir: Option<PathBuf>,
    /// `Some`: cluster mode, the WAL on NATS JetStream.
    pub(crate) stream: Option<vigie_engine::StreamSettings>,
    /// What this node does (every role outside cluster mode).
    pub(crate) roles: crate::cluster::Roles,
    /// Cluster mode's shared secret (always set in cluster mode).
    pub(crate) cluster_secret: Option<vigie_auth::ClusterSecret>,
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
    /// `None`: no console.
    pub(crate) console_addr: Option<SocketAddr>,
    pub(crate) console: vigie_console::ConsoleSettings,
    /// The daily report's mail, if any.
    pub(crate) mail: Option<vigie_report::MailSettings>,
}

impl Config {
    /// Checks what only `vigie serve` needs: in cluster mode, the secret of node-to-node calls.
    pub(crate) fn check_serving(&self) -> Result<()> {
        if self.stream.is_some() && self.cluster_secret.is_none() {
            bail!(
                "cluster mode (--stream) needs --cluster-secret (or VIGIE_CLUSTER_SECRET): the \
                 secret every node shares, so that nodes forward writes to each other"
            );
        }
        Ok(())
    }

    /// Where the credentials are: the data dir's file, or in cluster mode the bucket every
    /// node shares (a data dir's own `auth.json` is then ignored, and said so).
    pub(crate) async fn credential_store(&self) -> Result<Arc<dyn vigie_auth::CredentialStore>> {
        let Some(stream) = &self.stream else {
            return Ok(Arc::new(vigie_auth::FileStore::new(&self.data_dir)));
        };
        stream.check()?;
        let context = vigie_engine::nats::connect(stream).await?;
        let deadline = std::time::Instant::now() + stream.publish_timeout;
        let store =
            vigie_auth::SharedStore::open(&context, &stream.prefix, stream.replicas, deadline)
                .await
                .context("cannot read the cluster's credentials")?;
        let local = vigie_auth::FileStore::new(&self.data_dir);
        if local.path().exists() {
            tracing::warn!(
                file = %local.path().display(),
                "cluster mode reads the credentials every node shares ({}); this data dir's own \
                 file is ignored",
                vigie_auth::CredentialStore::location(&store)
            );
        }
        Ok(Arc::new(store))
    }

    /// Merges the command line (with its environment) over the optional TOML file and defaults.
    pub(crate) fn resolve(args: ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let args = args.over(file);
        let query_limits = query_limits(&args);
        let mut stream = stream_settings(&args)?;
        let mail = mail_settings(&args)?;
        let roles = crate::cluster::Roles::from_list(args.role.as_deref(), stream.is_some())?;
        if let Some(stream) = &mut stream {
            stream.process = roles.process;
        }
        let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from("vigie-data"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve data dir {}", data_dir.display()))?;
        let object_store = match args.object_store {
            Some(u) => parse_store_url(&u)?,
            None => url::Url::from_directory_path(data_dir.join("lake"))
                .map_err(|()| anyhow::anyhow!("data dir {} is not absolute", data_dir.display()))?,
        };
        if stream.is_some() && (args.wal.is_some() || args.wal_dir.is_some()) {
            bail!("--stream puts the write-ahead log on NATS JetStream: drop --wal and --wal-dir");
        }
        let cluster_secret = match (&stream, &args.cluster_secret) {
            (Some(_), Some(secret)) => {
                Some(vigie_auth::ClusterSecret::new(secret).context("invalid --cluster-secret")?)
            }
            // Only a server needs it (`Config::serving`): admin and compact do not forward.
            (Some(_), None) | (None, None) => None,
            (None, Some(_)) => bail!("--cluster-secret is for cluster mode: add --stream"),
        };
        if stream.is_none()
            && (args.advertise_addr.is_some()
                || args.lease_ttl.is_some()
                || args.stream_prefix.is_some())
        {
            bail!(
                "--advertise-addr, --lease-ttl and --stream-prefix are for cluster mode: add --stream"
            );
        }
        let mut config = Self {
            object_store,
            grpc_addr: args.grpc_addr.unwrap_or(DEFAULT_GRPC_ADDR),
            flush_interval: args
                .flush_interval
                .unwrap_or(EngineArgs::DEFAULT_FLUSH_INTERVAL),
            flush_rows: args.flush_rows.unwrap_or(EngineArgs::DEFAULT_FLUSH_ROWS),
            dedupe_window: args
                .dedupe_window
                .unwrap_or(EngineArgs::DEFAULT_DEDUPE_WINDOW),
            max_message_bytes: args
                .max_message_bytes
                .unwrap_or(vigie_ingest::DEFAULT_MAX_MESSAGE_BYTES),
            shutdown_timeout: args.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            wal_dir: match args.wal.unwrap_or(WalSetting::Fsync) {
                _ if stream.is_some() => None,
                WalSetting::Off => None,
                WalSetting::Fsync => Some(args.wal_dir.unwrap_or_else(|| data_dir.join("wal"))),
            },
            wal_max_delay: args.wal_max_delay.unwrap_or(Duration::ZERO),
            wal_segment_bytes: args
                .wal_segment_bytes
                .unwrap_or(EngineArgs::DEFAULT_WAL_SEGMENT_BYTES),
            stream,
            roles,
            cluster_secret,
            max_buffer_bytes: args
                .max_buffer_bytes
                .unwrap_or_else(default_max_buffer_bytes),
            alert_rules: args
                .alert_rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<Result<_>>()?,
            alert_queue: args
                .alert_queue
                .unwrap_or(vigie_ingest::DEFAULT_ALERT_QUEUE),
            alert_webhook: args.alert_webhook,
            tls: match (args.tls_cert, args.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                _ => bail!("TLS needs both --tls-cert and --tls-key (or neither)"),
            },
            compact_interval: args
                .compact_interval
                .unwrap_or(MaintenanceArgs::DEFAULT_INTERVAL),
            compact_target_bytes: args
                .compact_target_bytes
                .unwrap_or(MaintenanceArgs::DEFAULT_TARGET_FILE_BYTES),
            vacuum_after: args
                .vacuum_after
                .unwrap_or(MaintenanceArgs::DEFAULT_VACUUM_AFTER),
            retention: args.retention,
            token_ttl: args
                .token_ttl
                .unwrap_or(vigie_auth::Authenticator::DEFAULT_TOKEN_TTL),
            query_limits,
            metrics_addr: args.metrics_addr,
            console_addr: args.console_addr,
            console: vigie_console::ConsoleSettings {
                tile_url: args.console_tile_url.filter(|u| !u.is_empty()),
                outline: match &args.console_outline {
                    Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read the console outline {}", path.display())
                    })?),
                    None => None,
                },
                max_rows: args
                    .console_max_rows
                    .unwrap_or(vigie_console::ConsoleSettings::DEFAULT_MAX_ROWS),
                secure_cookies: false,
            },
            mail,
            data_dir,
        };
        config.console.secure_cookies = config.tls.is_some();
        config.console.check().map_err(|e| anyhow::anyhow!(e))?;
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
        if config.wal_segment_bytes < EngineArgs::MIN_WAL_SEGMENT_BYTES {
            bail!(
                "--wal-segment-bytes must be at least {}",
                EngineArgs::MIN_WAL_SEGMENT_BYTES
            );
        }
        if config.max_buffer_bytes < EngineArgs::MIN_MAX_BUFFER_BYTES {
            bail!(
                "--max-buffer-bytes must be at least {} (1 MiB)",
                EngineArgs::MIN_MAX_BUFFER_BYTES
            );
        }
        if config.flush_interval.is_zero() {
            bail!("--flush-interval must be longer than 0");
        }
        if config.flush_rows == 0 {
            bail!("--flush-rows must be at least 1");
        }
        if config.compact_target_bytes < MaintenanceArgs::MIN_TARGET_FILE_BYTES {
            bail!(
                "--compact-target-bytes must be at least {} (1 MiB)",
                MaintenanceArgs::MIN_TARGET_FILE_BYTES
            );
        }
        if config
            .retention
            .is_some_and(|r| r < MaintenanceArgs::MIN_RETENTION)
        {
            bail!("--retention must be at least 1d: whole days are deleted");
        }
        if config.max_message_bytes < vigie_ingest::MIN_MAX_MESSAGE_BYTES {
            bail!(
                "--max-message-bytes must be at least {}",
                vigie_ingest::MIN_MAX_MESSAGE_BYTES
            );
        }
        Ok(config)
    }
}

/// The query limits: the options given, then `QueryLimits`' defaults.
fn query_limits(args: &ServeArgs) -> vigie_sql::QueryLimits {
    use vigie_sql::QueryLimits;
    let memory_bytes = args
        .query_memory_bytes
        .unwrap_or(QueryLimits::DEFAULT_MEMORY_BYTES);
    QueryLimits {
        memory_bytes,
        total_memory_bytes: args
            .queries_memory_bytes
            .unwrap_or_else(|| QueryLimits::default_total_memory_bytes(memory_bytes)),
        timeout: args.query_timeout.unwrap_or(QueryLimits::DEFAULT_TIMEOUT),
        concurrent_per_tenant: args
            .max_concurrent_queries
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

fn read_file(path: &Path) -> Result<ServeArgs> {
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
    fn every_option_reads_the_same_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vigie.toml");
        std::fs::write(
            &file,
            "query_timeout = \"3s\"\nwal = \"off\"\nretention = \"30d\"\n\
             max_concurrent_queries = 2\n[alert_rules]\nvery_low = \"score <= 5\"\n",
        )
        .unwrap();
        let from_file = |overrides: ServeArgs| {
            Config::resolve(ServeArgs {
                config: Some(file.clone()),
                data_dir: Some(dir.path().join("data")),
                ..overrides
            })
            .unwrap()
        };
        let c = from_file(ServeArgs::default());
        assert_eq!(c.query_limits.timeout, Duration::from_secs(3));
        assert_eq!(c.query_limits.concurrent_per_tenant, 2);
        assert_eq!(c.wal_dir, None);
        assert_eq!(c.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            c.alert_rules,
            [("very_low".to_string(), "score <= 5".to_string())]
        );
        assert_eq!(c.token_ttl, vigie_auth::Authenticator::DEFAULT_TOKEN_TTL);
        // Rules on the command line replace the file's.
        let c = from_file(ServeArgs {
            alert_rules: vec!["mine=score < 1".into()],
            query_timeout: Some(Duration::from_secs(9)),
            ..ServeArgs::default()
        });
        assert_eq!(
            c.alert_rules,
            [("mine".to_string(), "score < 1".to_string())]
        );
        assert_eq!(c.query_limits.timeout, Duration::from_secs(9));
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

    #[test]
    fn stream_settings_come_from_the_options_and_replace_the_local_wal() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::resolve(ServeArgs {
            data_dir: Some(dir.path().join("data")),
            stream: Some("nats://a:4222, nats://b:4222,".into()),
            stream_replicas: Some(1),
            cluster_secret: Some("a-secret-of-16-chars".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        let stream = c.stream.expect("cluster mode");
        assert_eq!(stream.servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(stream.replicas, 1);
        assert_eq!(
            stream.publish_timeout,
            vigie_engine::StreamSettings::DEFAULT_PUBLISH_TIMEOUT
        );
        assert_eq!(c.wal_dir, None);
        assert_eq!(
            stream.lease_ttl,
            vigie_engine::StreamSettings::DEFAULT_LEASE_TTL
        );
        assert_eq!(stream.advertise, "");
        assert_eq!(stream.prefix, "vigie");

        // Cluster mode needs its secret, long enough; cluster options need cluster mode.
        let refused = |args: ServeArgs| {
            let err = Config::resolve(ServeArgs {
                data_dir: Some(dir.path().join("data")),
                ..args
            })
            .and_then(|c| c.check_serving())
            .unwrap_err();
            format!("{err:#}")
        };
        let stream = || Some("nats://a:4222".to_string());
        assert!(
            refused(ServeArgs {
                stream: stream(),
                ..ServeArgs::default()
            })
            .contains("needs --cluster-secret")
        );
        assert!(
            refused(ServeArgs {
                stream: stream(),
                cluster_secret: Some("short".into()),
                ..ServeArgs::default()
            })
            .contains("at least 16 characters")
        );
        assert!(
            refused(ServeArgs {
                lease_ttl: Some(Duration::from_secs(3)),
                ..ServeArgs::default()
            })
            .contains("add --stream")
        );
        assert!(
            refused(ServeArgs {
                stream_prefix: Some("staging".into()),
                ..ServeArgs::default()
            })
            .contains("add --stream")
        );
        assert!(
            refused(ServeArgs {
                role: Some(vec![crate::cluster::Role::Query]),
                ..ServeArgs::default()
            })
            .contains("--role is for cluster mode")
        );
        assert!(
            refused(ServeArgs {
                stream: stream(),
                role: Some(vec![]),
                ..ServeArgs::default()
            })
            .contains("at least one of")
        );

        let file = dir.path().join("vigie.toml");
        std::fs::write(
            &file,
            "stream = \"nats://a:4222\"\nstream_user = \"vigie\"\n\
             cluster_secret = \"a-secret-of-16-chars\"\n",
        )
        .unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("stream_password"), "{err:#}");
    }
}
