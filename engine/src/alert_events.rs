//! The `alert_events` table: what operators did about alerts, by whom and when.
//!
//! ```text
//! console: acknowledge / resolve ─▶ Tenant::record_alert_event ─▶ alert_events buffer
//!                                   ─▶ one Delta commit at once (durable when it returns)
//!                                   └▶ audit_log (`ack-alert` / `resolve-alert`)
//! every flush tick ─▶ commits left over by a failed commit; reads other nodes' commits
//!
//! AlertEventFeed (per tenant, on each node) ─▶ Engine::watch_alert_events (the consoles)
//!   ◀── an event recorded here, at once
//!   ◀── an event in a file another node committed, at the flush tick that reads it
//! ```
//! Any node may record events: appends from several nodes commute in Delta. An alert's state is
//! its newest event (`resolve` after `ack` means resolved); events are never updated in place.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Date32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use object_store::path::Path;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tracing::warn;

use crate::audit::AuditEvent;
use crate::schema::{TableKind, day_of_micros};
use crate::table::{DataFile, read_files};
use crate::{Error, Result, Tenant};

/// Events a watcher may have pending before it misses some (it then reloads the alerts' state).
pub const FEED_QUEUE: usize = 256;

/// How long after it happened an event read from a commit is still pushed live. Older ones (a
/// compaction rewriting a day's files, a node reading commits after a long outage) are history
/// that the alerts' state read by SQL already holds.
const LIVE_WINDOW_MICROS: i64 = 10 * 60 * 1_000_000;

/// The longest note an operator may attach, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// What an operator did about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertAction {
    /// Seen and being handled.
    Acknowledge,
    /// Handled: nothing more to do.
    Resolve,
}

impl AlertAction {
    /// The action as stored in `alert_events.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertAction::Acknowledge => "ack",
            AlertAction::Resolve => "resolve",
        }
    }

    /// Reads a stored or typed action (`ack`, `resolve`).
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "ack" => Ok(AlertAction::Acknowledge),
            "resolve" => Ok(AlertAction::Resolve),
            other => Err(Error::InvalidInput(format!(
                "unknown alert action {other:?}: use `ack` or `resolve`"
            ))),
        }
    }
}

/// One operator action on one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    /// When it happened, in microseconds since the epoch.
    pub time_micros: i64,
    /// The alert's id (`alerts.id`).
    pub alert_id: i64,
    /// What was done.
    pub action: AlertAction,
    /// Who did it (`user:<name>`, `key:<id>`, `anonymous`).
    pub principal: String,
    /// Their role, for the audit log.
    pub role: String,
    /// What they wrote about it.
    pub note: Option<String>,
}

impl AlertEvent {
    /// Checks what an operator sent: a positive id and a note of at most [`MAX_NOTE_BYTES`].
    pub fn check(&self) -> Result<()> {
        if self.alert_id < 1 {
            return Err(Error::InvalidInput(format!(
                "alert id {} does not exist: ids start at 1",
                self.alert_id
            )));
        }
        if self.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
            return Err(Error::InvalidInput(format!(
                "the note is longer than {MAX_NOTE_BYTES} bytes: shorten it"
            )));
        }
        Ok(())
    }
}

/// The events as a batch of the `alert_events` schema.
pub fn alert_events_batch(events: &[AlertEvent]) -> Result<RecordBatch> {
    let n = events.len();
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut alert_id = Int64Builder::with_capacity(n);
    let mut action = StringBuilder::with_capacity(n, 8 * n);
    let mut principal =
        StringBuilder::with_capacity(n, events.iter().map(|e| e.principal.len()).sum());
    let mut note = StringBuilder::with_capacity(
        n,
        events
            .iter()
            .map(|e| e.note.as_ref().map_or(0, String::len))
            .sum(),
    );
    let mut day = Date32Builder::with_capacity(n);
    for e in events {
        time.append_value(e.time_micros);
        alert_id.append_value(e.alert_id);
        action.append_value(e.action.as_str());
        principal.append_value(&e.principal);
        note.append_option(e.note.as_deref());
        day.append_value(day_of_micros(e.time_micros));
    }
    Ok(RecordBatch::try_new(
        TableKind::AlertEvents.schema(),
        vec![
            Arc::new(time.finish()),
            Arc::new(alert_id.finish()),
            Arc::new(action.finish()),
            Arc::new(principal.finish()),
            Arc::new(note.finish()),
            Arc::new(day.finish()),
        ],
    )?)
}

/// The events of an `alert_events` batch (as read back from its files).
pub fn alert_events_of(batch: &RecordBatch) -> Result<Vec<AlertEvent>> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Corrupt(format!("an alert_events file has no {name} column")))
    };
    let wrong = |name: &str| Error::Corrupt(format!("alert_events.{name} has the wrong type"));
    let time = column("time")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| wrong("time"))?;
    let alert_id = column("alert_id")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| wrong("alert_id"))?;
    let action = column("action")?
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong("action"))?;
    let principal = column("principal")?
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong("principal"))?;
    let note = column("note")?
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong("note"))?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(AlertEvent {
                time_micros: time.value(i),
                alert_id: alert_id.value(i),
                action: AlertAction::parse(action.value(i))?,
                principal: principal.value(i).to_string(),
                role: String::new(),
                note: note.is_valid(i).then(|| note.value(i).to_string()),
            })
        })
        .collect()
}

/// What identifies an event: the same one read again (from our own commit, or from a file a
/// compaction rewrote) is not pushed twice.
type EventKey = (i64, i64, AlertAction, String);

fn key(event: &AlertEvent) -> EventKey {
    (
        event.time_micros,
        event.alert_id,
        event.action,
        event.principal.clone(),
    )
}

/// Pushes one tenant's alert events to whoever watches them on this node, each once: recorded
/// here, or found in the files of a commit made elsewhere.
#[derive(Debug)]
pub(crate) struct AlertEventFeed {
    sender: broadcast::Sender<AlertEvent>,
    /// The `alert_events` files already looked at.
    seen: Mutex<HashSet<Path>>,
    /// The events pushed within the live window, oldest first.
    sent: Mutex<BTreeSet<EventKey>>,
}

impl AlertEventFeed {
    /// A feed sending on `sender` the events of files other than `files` (those of the table
    /// as opened: history, not news).
    pub(crate) fn new(sender: broadcast::Sender<AlertEvent>, files: &[DataFile]) -> Self {
        Self {
            sender,
            seen: Mutex::new(files.iter().map(|f| f.path.clone()).collect()),
            sent: Mutex::default(),
        }
    }

    /// Sends `event` unless it was sent already or is older than the live window.
    fn send(&self, event: AlertEvent, now_micros: i64) {
        let mut sent = self.sent.lock();
        let horizon = now_micros - LIVE_WINDOW_MICROS;
        *sent = sent.split_off(&(horizon, i64::MIN, AlertAction::Acknowledge, String::new()));
        if event.time_micros >= horizon && sent.insert(key(&event)) {
            // Nobody watching is fine.
            let _ = self.sender.send(event);
        }
    }
}

impl Tenant {
    /// Commits the buffered alert events (one whose commit failed, again) and catches up with
    /// other nodes' commits; pushes the events new to this node to its watchers. Returns the
    /// rows written.
    pub(crate) async fn flush_alert_events(&self) -> Result<usize> {
        let rows = self
            .alert_events
            .flush(&self.lake, &self.wal_app_id)
            .await?
            .rows;
        if let Err(e) = self.push_committed_alert_events().await {
            // The events are in the table all the same: consoles show them on their next load.
            warn!(tenant = %self.name, error = %e, "cannot read new alert events to push them");
        }
        Ok(rows)
    }

    /// Reads the `alert_events` files this node has not looked at yet and pushes their events.
    async fn push_committed_alert_events(&self) -> Result<()> {
        let files = self.alert_events.snapshot().files;
        let feed = &self.alert_feed;
        let new: Vec<DataFile> = {
            let mut seen = feed.seen.lock();
            // Files compaction or retention removed are forgotten.
            let current: HashSet<&Path> = files.iter().map(|f| &f.path).collect();
            seen.retain(|p| current.contains(p));
            files
                .iter()
                .filter(|f| !seen.contains(&f.path))
                .cloned()
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        if feed.sender.receiver_count() > 0 {
            let batches = read_files(&self.lake, new.iter()).await?.collect().await?;
            let now = chrono::Utc::now().timestamp_micros();
            let mut events = Vec::new();
            for batch in &batches {
                events.extend(alert_events_of(batch)?);
            }
            events.sort_by_key(|e| e.time_micros);
            for event in events {
                feed.send(event, now);
            }
        }
        feed.seen.lock().extend(new.into_iter().map(|f| f.path));
        Ok(())
    }

    /// Records `event` in `alert_events` with a Delta commit of its own, and in the audit log,
    /// then pushes it to the tenant's watchers on this node (other nodes' at their next flush
    /// tick). When the commit fails the event stays buffered and the next flush commits it
    /// (the error says so): a retry by the operator then records it twice, which is harmless
    /// since an alert's state is its newest event.
    pub async fn record_alert_event(&self, event: &AlertEvent) -> Result<()> {
        event.check()?;
        self.alert_events
            .push(alert_events_batch(std::slice::from_ref(event))?, 0);
        let mut audit = AuditEvent::now(
            &event.principal,
            &event.role,
            match event.action {
                AlertAction::Acknowledge => "ack-alert",
                AlertAction::Resolve => "resolve-alert",
            },
        );
        audit.detail = Some(match &event.note {
            Some(note) => format!("alert {}: {note}", event.alert_id),
            None => format!("alert {}", event.alert_id),
        });
        self.audit(&audit);
        self.alert_events
            .flush(&self.lake, &self.wal_app_id)
            .await?;
        self.alert_feed
            .send(event.clone(), chrono::Utc::now().timestamp_micros());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(alert_id: i64, note: Option<&str>) -> AlertEvent {
        AlertEvent {
            time_micros: 1_700_000_000_000_000,
            alert_id,
            action: AlertAction::Acknowledge,
            principal: "user:ann".into(),
            role: "analyst".into(),
            note: note.map(str::to_string),
        }
    }

    #[test]
    fn batch_has_the_table_schema() {
        let batch = alert_events_batch(&[event(3, Some("on it")), event(4, None)]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), TableKind::AlertEvents.schema());
    }

    /// An event recorded on one node reaches the watchers of another at its next flush, and
    /// each watcher gets each event once (reading its own commit back sends nothing again).
    #[tokio::test]
    async fn events_reach_the_watchers_of_every_node_once() {
        use crate::WalMode;
        use crate::testing::{engine, manual_flush, memory_lake};
        let lake = memory_lake();
        let a = engine(manual_flush(lake.clone(), WalMode::Off)).await;
        let b = engine(manual_flush(lake, WalMode::Off)).await;
        let tenant = crate::store::TenantName::default_tenant();
        let mut on_a = a.watch_alert_events(&tenant);
        let mut on_b = b.watch_alert_events(&tenant);
        let mut now = event(7, Some("on it"));
        now.time_micros = chrono::Utc::now().timestamp_micros();
        a.default_tenant()
            .unwrap()
            .record_alert_event(&now)
            .await
            .unwrap();
        assert_eq!(on_a.try_recv().unwrap(), now);
        assert!(on_b.try_recv().is_err(), "b has not read the commit yet");
        for _ in 0..2 {
            a.default_tenant().unwrap().flush().await.unwrap();
            b.default_tenant().unwrap().flush().await.unwrap();
        }
        let seen = on_b.try_recv().unwrap();
        assert_eq!(
            (seen.alert_id, seen.action, &seen.principal, &seen.note),
            (7, AlertAction::Acknowledge, &now.principal, &now.note)
        );
        assert_eq!(seen.time_micros, now.time_micros);
        assert!(on_b.try_recv().is_err(), "sent once");
        assert!(on_a.try_recv().is_err(), "a's own commit is not sent again");
    }

    #[test]
    fn bad_events_are_refused() {
        assert!(event(0, None).check().is_err());
        assert!(
            event(1, Some(&"x".repeat(MAX_NOTE_BYTES + 1)))
                .check()
                .is_err()
        );
        assert!(event(1, Some("fine")).check().is_ok());
        assert_eq!(AlertAction::parse("resolve").unwrap(), AlertAction::Resolve);
        assert!(AlertAction::parse("delete").is_err());
    }
}
