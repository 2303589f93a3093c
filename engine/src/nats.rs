//! The NATS connection of cluster mode, and the key-value buckets built on it.
//!
//! ```text
//! StreamSettings ─ connect ─▶ jetstream::Context ─▶ tenants' WAL streams (wal::stream)
//!                                               ├─▶ open_bucket: <prefix>-leases (lease)
//!                                               └─▶ open_bucket: <prefix>-auth (vigie-auth)
//! ```
//! Every node opens the same buckets with the same settings; the first one creates them.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use tracing::{info, warn};

use crate::{Error, Result, StreamSettings};

/// Connects to the JetStream cluster of `settings` (any of its servers).
pub async fn connect(settings: &StreamSettings) -> Result<jetstream::Context> {
    let mut options = async_nats::ConnectOptions::new()
        .name("vigie")
        .connection_timeout(Duration::from_secs(5));
    if let Some((user, password)) = &settings.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    let servers = settings
        .servers
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>().map_err(|e| {
                Error::InvalidConfig(format!("NATS server URL {s:?} cannot be used: {e}"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let client = options.connect(servers).await.map_err(|e| {
        Error::Wal(format!(
            "cannot connect to NATS at {}: {e}",
            settings.servers.join(",")
        ))
    })?;
    info!(servers = %settings.servers.join(","), "connected to NATS JetStream");
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client))
}

/// Opens the bucket `config` describes, creating it when missing; retried until `deadline`
/// while JetStream cannot answer yet (a cluster electing its meta leader). A bucket another
/// node created first, with the same settings or older ones, is used as it is.
pub async fn open_bucket(
    context: &jetstream::Context,
    config: kv::Config,
    deadline: Instant,
) -> Result<kv::Store> {
    loop {
        let attempt = match context.create_key_value(config.clone()).await {
            Ok(kv) => Ok(kv),
            Err(created) => context
                .get_key_value(&config.bucket)
                .await
                .map_err(|_| created),
        };
        match attempt {
            Ok(kv) => return Ok(kv),
            Err(e) if Instant::now() < deadline => {
                warn!(bucket = %config.bucket, error = %e, "cannot open the bucket yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(Error::Wal(format!(
                    "JetStream: cannot open bucket {}: {e}",
                    config.bucket
                )));
            }
        }
    }
}
