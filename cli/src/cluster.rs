//! `vigie serve` in cluster mode: the node's roles, the address it advertises, and the
//! forwarder that sends writes of tenants other nodes own to them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use vigie_ingest::{Connect, Forwarder};

use crate::config::Config;

/// One part a node plays in the cluster (`--role`, several separated by commas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Takes drones' writes (`vigie.v1.Ingest`), forwarding those of tenants others own.
    Ingest,
    /// May own tenants: dedupes, logs, raises alerts, flushes and maintains their tables.
    Process,
    /// Answers Flight SQL.
    Query,
}

/// What this node does; every role outside cluster mode. `Alerts.Subscribe` and writes
/// forwarded by other nodes are served whatever the roles (a node without `process` owns no
/// tenant, so nothing is forwarded to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Roles {
    pub(crate) ingest: bool,
    pub(crate) process: bool,
    pub(crate) query: bool,
}

impl Roles {
    /// Every role: the default, and the only choice of the embedded server.
    pub(crate) const ALL: Self = Self {
        ingest: true,
        process: true,
        query: true,
    };

    /// The roles `--role` lists (`None`: every role).
    pub(crate) fn from_list(list: Option<&[Role]>, cluster: bool) -> Result<Self> {
        let Some(list) = list else {
            return Ok(Self::ALL);
        };
        if list.is_empty() {
            bail!("--role needs at least one of ingest, process, query");
        }
        let roles = Self {
            ingest: list.contains(&Role::Ingest),
            process: list.contains(&Role::Process),
            query: list.contains(&Role::Query),
        };
        if !cluster && roles != Self::ALL {
            bail!(
                "--role is for cluster mode (add --stream): the embedded server plays every role"
            );
        }
        Ok(roles)
    }

    /// The names of the roles this node plays, for logs and errors.
    pub(crate) fn names(&self) -> String {
        [
            (self.ingest, "ingest"),
            (self.process, "process"),
            (self.query, "query"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// How long a forwarded write may wait for its owner beyond the owner's own publish timeout.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);

/// Fills in the advertised address from the bound one (`addr`) when `--advertise-addr` is unset.
pub(crate) fn advertise(config: &mut Config, addr: SocketAddr) -> Result<()> {
    let tls = config.tls.is_some();
    let Some(stream) = &mut config.stream else {
        return Ok(());
    };
    if !stream.advertise.is_empty() {
        return Ok(());
    }
    if addr.ip().is_unspecified() {
        bail!(
            "--grpc-addr {addr} listens on every interface: give --advertise-addr, the URL other \
             nodes reach this one at (e.g. http://10.0.0.5:{})",
            addr.port()
        );
    }
    stream.advertise = format!("{}://{addr}", if tls { "https" } else { "http" });
    Ok(())
}

/// The forwarder of cluster mode (`None` outside it). Nodes serving TLS are trusted by the
/// system's roots and by this node's own certificate (nodes sharing a certificate or a CA).
pub(crate) fn forwarder(config: &Config) -> Result<Option<Forwarder>> {
    let (Some(stream), Some(secret)) = (&config.stream, &config.cluster_secret) else {
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(files) = &config.tls {
        let pem = std::fs::read(&files.cert)
            .with_context(|| format!("cannot read {}", files.cert.display()))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    let connect: Connect = Arc::new(move |addr: &str| {
        let mut endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("invalid address: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if addr.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS: {e}"))?;
        }
        Ok(endpoint.connect_lazy())
    });
    Ok(Some(Forwarder::new(
        secret.clone(),
        connect,
        stream.publish_timeout + FORWARD_MARGIN,
        config.max_message_bytes,
    )))
}
