//! `vigie serve` in cluster mode: the address this node advertises, and the forwarder that
//! sends writes of tenants other nodes own to them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use vigie_ingest::{Connect, Forwarder};

use crate::config::Config;

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
