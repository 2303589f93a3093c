//! The WAL on NATS JetStream: a tenant's records are messages of one replicated stream, so an
//! acknowledged report survives the loss of the machine that accepted it.
//!
//! ```text
//! append(record) ─ position = last + 1 ─▶ channel ─▶ publisher task: publish, pipelined, with
//!      Nats-Msg-Id = <incarnation>-<position>, Nats-Expected-Last-Sequence = position - 1
//! PubAck (stored by a quorum of the stream's replicas) in order ─▶ durable position ─▶ sync()
//! open: claim (a marker record) ─▶ replay the records between the Delta commit and the claim
//! ```
//! Positions are stream sequences: the stream holds one subject and only its owner appends, so
//! they are dense like the local WAL's. **Fencing**: the owner that opens the stream appends a
//! claim with the stream's last sequence expected; from then on an earlier owner's appends fail
//! (`wrong last sequence`), and that owner refuses every write (`UNAVAILABLE`: the client retries
//! on the current owner). A publish whose ack is lost (timeout, leader election) is sent again
//! with the same Msg-Id: JetStream answers a duplicate with the original sequence; when it answers
//! `wrong last sequence` instead, the stored message at that position tells whether it is ours.
//! Durability is JetStream's: a PubAck means stored by a quorum; set `sync_interval: always` on
//! the servers (nats-server issue #7564: with the default deferred fsync, a PubAck'd message can
//! be lost when every replica's host loses power).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::header::{NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{DurableListener, Wal, WalPosition, WalRecord};
use crate::store::TenantName;
use crate::{Error, Result};

/// Header carrying a record's receive time (µs since the epoch).
const RECEIVED_AT: &str = "Vigie-Received-At";
/// Room kept in a message for the headers Vigie adds (ids, sequence, time; ~150 bytes).
const HEADER_ROOM: usize = 1024;
/// Header marking a claim: a record without reports that fences the previous owner.
const CLAIM: &str = "Vigie-Claim";

/// What [`StreamWal::open`] needs.
pub(crate) struct StreamWalArgs {
    /// The JetStream context of the engine's connection.
    pub context: jetstream::Context,
    /// Whose records the stream holds.
    pub tenant: TenantName,
    /// The deployment's name prefix ([`crate::StreamSettings::prefix`]).
    pub prefix: String,
    /// Replicas of the stream when it is created (an existing stream keeps its own).
    pub replicas: usize,
    /// How long a record may wait for its PubAck, retries included, before the log fails.
    pub publish_timeout: Duration,
    /// The position the Delta commits cover: records after it are replayed.
    pub after: WalPosition,
}

/// A record waiting for its PubAck.
struct Pending {
    position: WalPosition,
    received_at: i64,
    payload: Bytes,
}

struct Shared {
    stream_name: String,
    subject: String,
    /// Makes this owner's Msg-Ids unique: `<incarnation>-<position>`.
    incarnation: String,
    last: AtomicU64,
    durable: AtomicU64,
    /// The last position a Delta commit covers (what the stream was purged up to).
    committed: AtomicU64,
    /// Durable records no commit covers yet: what a takeover would replay.
    lag: metrics::Gauge,
    /// Notified after each new durable position; holds the error that stopped the log.
    progress: watch::Sender<Option<Arc<str>>>,
    listener: OnceLock<DurableListener>,
    publish_timeout: Duration,
}

impl Shared {
    fn failed(&self) -> Option<Arc<str>> {
        self.progress.borrow().clone()
    }

    fn fail(&self, why: String) {
        warn!(stream = %self.stream_name, error = %why, "stream WAL stopped: writes are refused");
        metrics::counter!("vigie_stream_wal_failures_total", "stream" => self.stream_name.clone())
            .increment(1);
        self.progress.send_replace(Some(why.into()));
    }

    fn durable(&self, position: WalPosition) {
        self.durable.store(position, Ordering::SeqCst);
        self.show_lag();
        if let Some(listener) = self.listener.get() {
            listener(position);
        }
        self.progress.send_modify(|_| {});
    }

    fn show_lag(&self) {
        let durable = self.durable.load(Ordering::SeqCst);
        let committed = self.committed.load(Ordering::SeqCst);
        self.lag.set(durable.saturating_sub(committed) as f64);
    }

    fn msg_id(&self, position: WalPosition) -> String {
        format!("{}-{position}", self.incarnation)
    }

    fn headers(&self, position: WalPosition, received_at: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, self.msg_id(position));
        headers.insert(NATS_EXPECTED_LAST_SEQUENCE, (position - 1).to_string());
        headers.insert(RECEIVED_AT, received_at.to_string());
        headers
    }
}

/// A tenant's WAL on a JetStream stream (see the module docs).
pub(crate) struct StreamWal {
    shared: Arc<Shared>,
    /// The servers' `max_payload`, less room for the headers.
    max_record: usize,
    stream: stream::Stream,
    records: mpsc::UnboundedSender<Pending>,
}

impl fmt::Debug for StreamWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWal")
            .field("stream", &self.shared.stream_name)
            .field("last", &self.shared.last)
            .field("durable", &self.shared.durable)
            .field("error", &self.shared.failed())
            .finish_non_exhaustive()
    }
}

/// The stream holding `tenant`'s records in the deployment named by `prefix`.
pub(crate) fn stream_name(prefix: &str, tenant: &TenantName) -> String {
    format!("{prefix}-{}", tenant.as_str())
}

fn nats_error(what: &str, e: impl fmt::Display) -> Error {
    Error::Wal(format!("JetStream: {what}: {e}"))
}

impl StreamWal {
    /// Opens (creating when missing) the tenant's stream, claims it, and returns the records
    /// after `args.after` that it holds (claims left out).
    pub(crate) async fn open(args: StreamWalArgs) -> Result<(Self, Vec<WalRecord>)> {
        let name = stream_name(&args.prefix, &args.tenant);
        let subject = format!("{}.{}.wal", args.prefix, args.tenant.as_str());
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: args.replicas,
            // Longer than any publish retry: a resent record is always recognised.
            duplicate_window: Duration::from_secs(120).max(args.publish_timeout * 2),
            allow_direct: true,
            ..Default::default()
        };
        // A cluster that just started (or is electing a leader) may time out a first request.
        let deadline = Instant::now() + args.publish_timeout;
        let stream = loop {
            match args.context.get_or_create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    warn!(stream = %name, error = %e, "cannot open the stream yet, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(nats_error(&format!("cannot open stream {name}"), e)),
            }
        };
        let (progress, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            stream_name: name.clone(),
            subject,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            last: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            committed: AtomicU64::new(args.after),
            lag: metrics::gauge!("vigie_stream_lag_records", "stream" => name.clone()),
            progress,
            listener: OnceLock::new(),
            publish_timeout: args.publish_timeout,
        });
        let started = Instant::now();
        let claim = claim(&args.context, &stream, &shared).await?;
        shared.last.store(claim, Ordering::SeqCst);
        shared.durable.store(claim, Ordering::SeqCst);
        shared.show_lag();
        let names = (shared.stream_name.as_str(), shared.subject.as_str());
        let (replay, _) = read_records(&stream, names, args.after, claim - 1).await?;
        let took = started.elapsed();
        metrics::histogram!("vigie_stream_takeover_seconds", "stream" => name.clone())
            .record(took.as_secs_f64());
        info!(stream = %name, claim, after = args.after, records = replay.len(), ?took, "claimed the tenant's stream");
        let (records, rx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(
            args.context.clone(),
            stream.clone(),
            shared.clone(),
            rx,
        ));
        Ok((
            Self {
                shared,
                max_record: args
                    .context
                    .client()
                    .max_payload()
                    .saturating_sub(HEADER_ROOM),
                stream,
                records,
            },
            replay,
        ))
    }
}

/// Appends a claim (the stream's last sequence expected) and returns its position: every later
/// append by an earlier owner fails.
async fn claim(
    context: &jetstream::Context,
    stream: &stream::Stream,
    shared: &Shared,
) -> Result<WalPosition> {
    let deadline = Instant::now() + shared.publish_timeout;
    loop {
        let last = match stream.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(e) if Instant::now() < deadline => {
                warn!(stream = %shared.stream_name, error = %e, "cannot read the stream's state yet, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(nats_error("cannot read the stream's state", e)),
        };
        let mut headers = shared.headers(last + 1, 0);
        headers.insert(CLAIM, shared.incarnation.as_str());
        let acked = match context
            .publish_with_headers(shared.subject.clone(), headers, Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => return Ok(ack.sequence),
            Err(e) if Instant::now() < deadline => {
                // Another owner appended in between, or the stream's leader is being elected.
                warn!(stream = %shared.stream_name, error = %e, "claim refused, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(nats_error("cannot claim the stream", e)),
        }
    }
}

/// The records after `after` up to `last` included (claims left out), in order, and the
/// position reading started at: after `after + 1` when the owner purged records already
/// (committed by every table).
async fn read_records(
    stream: &stream::Stream,
    names: (&str, &str),
    after: WalPosition,
    last: WalPosition,
) -> Result<(Vec<WalRecord>, WalPosition)> {
    let (stream_name, subject) = names;
    let mut records = Vec::new();
    if after >= last {
        return Ok((records, after + 1));
    }
    // Records before the first kept one were purged once every table had committed them (a
    // table that never commits, like the alerts of a quiet tenant, keeps an older position).
    let first = stream
        .get_info()
        .await
        .map_err(|e| nats_error("cannot read the stream's state", e))?
        .state
        .first_sequence;
    let start = (after + 1).max(first);
    if start > last {
        return Ok((records, start));
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("cannot read the stream", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats_error("cannot read the stream", e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| nats_error("reading the stream", e))?;
        let position = message
            .info()
            .map_err(|e| nats_error("a stream message has no sequence", e))?
            .stream_sequence;
        if position > last {
            break;
        }
        // An ordered consumer reset before its first message starts again from the stream's
        // first one (async-nats recreates it with DeliverPolicy::All): skip what is not asked.
        if position < start {
            continue;
        }
        let headers = message.headers.as_ref();
        if headers.is_none_or(|h| h.get(CLAIM).is_none()) {
            let received_at = headers
                .and_then(|h| h.get(RECEIVED_AT))
                .and_then(|v| v.as_str().parse().ok())
                .ok_or_else(|| {
                    Error::Corrupt(format!(
                        "stream {stream_name} record {position} has no {RECEIVED_AT} header"
                    ))
                })?;
            records.push(WalRecord {
                position,
                received_at,
                payload: message.payload.clone(),
            });
        }
        if position == last {
            break;
        }
    }
    Ok((records, start))
}

/// A follower's read-only view of a tenant's stream: the records its owner appended and has not
/// purged yet (they are what no Delta commit covers).
#[derive(Clone)]
pub(crate) struct StreamTail {
    stream: stream::Stream,
    name: String,
    subject: String,
}

impl fmt::Debug for StreamTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTail")
            .field("stream", &self.name)
            .finish_non_exhaustive()
    }
}

impl StreamTail {
    /// The tenant's stream, if an owner created it already.
    pub(crate) async fn open(
        context: &jetstream::Context,
        prefix: &str,
        tenant: &TenantName,
    ) -> Result<Option<Self>> {
        let name = stream_name(prefix, tenant);
        match context.get_stream(&name).await {
            Ok(stream) => Ok(Some(Self {
                stream,
                subject: format!("{prefix}.{}.wal", tenant.as_str()),
                name,
            })),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(nats_error(&format!("cannot open stream {name}"), e)),
            },
        }
    }

    /// The first and last sequences the stream holds now (`first > last` when it is empty).
    pub(crate) async fn bounds(&self) -> Result<(WalPosition, WalPosition)> {
        let state = self
            .stream
            .get_info()
            .await
            .map_err(|e| nats_error("cannot read the stream's state", e))?
            .state;
        Ok((state.first_sequence, state.last_sequence))
    }

    /// The records after `after` up to `last` included, claims left out, and the position
    /// reading started at (after `after + 1` when the owner purged records meanwhile).
    pub(crate) async fn read(
        &self,
        after: WalPosition,
        last: WalPosition,
    ) -> Result<(Vec<WalRecord>, WalPosition)> {
        read_records(&self.stream, (&self.name, &self.subject), after, last).await
    }
}

/// Publishes the records in order, pipelined; on a failed ack, confirms the unacknowledged ones
/// one at a time (resending with the same Msg-Id) and then pipelines again.
async fn publisher(
    context: jetstream::Context,
    stream: stream::Stream,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut unacked: VecDeque<Pending> = VecDeque::new();
    let mut acks: FuturesOrdered<
        futures::future::BoxFuture<
            'static,
            Result<u64, async_nats::jetstream::context::PublishError>,
        >,
    > = FuturesOrdered::new();
    let mut open = true;
    let unacked_gauge =
        metrics::gauge!("vigie_stream_unacked_records", "stream" => shared.stream_name.clone());
    while open || !acks.is_empty() {
        unacked_gauge.set(unacked.len() as f64);
        tokio::select! {
            record = rx.recv(), if open => match record {
                None => open = false,
                Some(record) => {
                    if shared.failed().is_some() {
                        continue;
                    }
                    match send(&context, &shared, &record).await {
                        Ok(ack) => acks.push_back(Box::pin(async move { ack.await.map(|a| a.sequence) })),
                        Err(e) => acks.push_back(Box::pin(async move { Err(e) })),
                    }
                    unacked.push_back(record);
                }
            },
            Some(acked) = acks.next() => {
                let head = unacked.front().map_or(0, |r| r.position);
                match acked {
                    Ok(sequence) if sequence == head => {
                        unacked.pop_front();
                        shared.durable(head);
                    }
                    outcome => {
                        if let Ok(sequence) = outcome {
                            warn!(stream = %shared.stream_name, sequence, head, "a record was stored out of place");
                        }
                        // Later acks answer publishes made before this failure: start over.
                        acks = FuturesOrdered::new();
                        if let Err(why) = confirm(&context, &stream, &shared, &mut unacked).await {
                            shared.fail(why);
                            unacked.clear();
                        }
                    }
                }
            }
        }
    }
}

async fn send(
    context: &jetstream::Context,
    shared: &Shared,
    record: &Pending,
) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
    context
        .publish_with_headers(
            shared.subject.clone(),
            shared.headers(record.position, record.received_at),
            record.payload.clone(),
        )
        .await
}

/// Makes every record of `unacked` durable, in order, resending each until acknowledged; gives
/// up (the log fails) when another owner holds the stream or after the publish timeout.
async fn confirm(
    context: &jetstream::Context,
    stream: &stream::Stream,
    shared: &Shared,
    unacked: &mut VecDeque<Pending>,
) -> std::result::Result<(), String> {
    while let Some(record) = unacked.front() {
        let deadline = Instant::now() + shared.publish_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let acked = match send(context, shared, record).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) if ack.sequence == record.position => break,
                Ok(ack) => {
                    return Err(format!(
                        "record {} was stored as {}: the stream has another writer",
                        record.position, ack.sequence
                    ));
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Either ours is stored already (its ack was lost) or another owner appended.
                    let stored = stream.get_raw_message(record.position).await;
                    let ours = stored.as_ref().is_ok_and(|m| {
                        m.headers
                            .get(NATS_MESSAGE_ID)
                            .is_some_and(|id| id.as_str() == shared.msg_id(record.position))
                    });
                    if ours {
                        break;
                    }
                    metrics::counter!("vigie_stream_fenced_appends_total", "stream" => shared.stream_name.clone())
                        .increment(1);
                    return Err(format!(
                        "another server now owns stream {} (record {} was refused): this server \
                         no longer accepts writes for the tenant",
                        shared.stream_name, record.position
                    ));
                }
                Err(e) if Instant::now() < deadline => {
                    warn!(stream = %shared.stream_name, position = record.position, error = %e, "publish not acknowledged, resending");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(format!(
                        "record {} not acknowledged within {:?}: {e}",
                        record.position, shared.publish_timeout
                    ));
                }
            }
        }
        let position = record.position;
        unacked.pop_front();
        shared.durable(position);
    }
    Ok(())
}

#[async_trait]
impl Wal for StreamWal {
    fn failed(&self) -> Option<Arc<str>> {
        self.shared.failed()
    }
    fn append(&self, received_at: i64, payload: &[u8]) -> Result<WalPosition> {
        if let Some(e) = self.shared.failed() {
            return Err(Error::Wal(e.to_string()));
        }
        // Called under the tenant's write lock: positions follow buffer order.
        let position = self.shared.last.fetch_add(1, Ordering::SeqCst) + 1;
        self.records
            .send(Pending {
                position,
                received_at,
                payload: Bytes::copy_from_slice(payload),
            })
            .map_err(|_| Error::Wal("the stream publisher stopped".into()))?;
        Ok(position)
    }

    fn max_record_bytes(&self) -> Option<usize> {
        Some(self.max_record)
    }

    fn last_position(&self) -> WalPosition {
        self.shared.last.load(Ordering::SeqCst)
    }

    fn durable_position(&self) -> WalPosition {
        self.shared.durable.load(Ordering::SeqCst)
    }

    fn set_listener(&self, listener: DurableListener) {
        if self.shared.listener.set(listener).is_err() {
            warn!("stream WAL: a durable listener was installed already; the new one is ignored");
        }
    }

    async fn sync(&self, position: WalPosition) -> Result<()> {
        super::wait_durable(
            &self.shared.progress,
            &self.shared.durable,
            position,
            "the stream publisher",
        )
        .await
    }

    async fn truncate(&self, position: WalPosition) -> Result<()> {
        // A fenced owner leaves the stream to its successor.
        if self.shared.failed().is_some() || position == 0 {
            return Ok(());
        }
        self.stream
            .purge()
            .sequence(position + 1)
            .await
            .map_err(|e| nats_error("cannot purge committed records", e))?;
        self.shared.committed.fetch_max(position, Ordering::SeqCst);
        self.shared.show_lag();
        Ok(())
    }
}
