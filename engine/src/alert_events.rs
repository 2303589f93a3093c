//! The `alert_events` table: what operators did about alerts, by whom and when.
//!
//! ```text
//! console: acknowledge / resolve ─▶ Tenant::record_alert_event ─▶ alert_events buffer
//!                                   ─▶ one Delta commit at once (durable when it returns)
//!                                   └▶ audit_log (`ack-alert` / `resolve-alert`)
//! every flush tick ─▶ commits left over by a failed commit; reads other nodes' commits
//! ```
//! Any node may record events: appends from several nodes commute in Delta. An alert's state is
//! its newest event (`resolve` after `ack` means resolved); events are never updated in place.

use std::sync::Arc;

use arrow::array::{
    Date32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};

use crate::audit::AuditEvent;
use crate::schema::{TableKind, day_of_micros};
use crate::{Error, Result, Tenant};

/// The longest note an operator may attach, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// What an operator did about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Tenant {
    /// Records `event` in `alert_events` with a Delta commit of its own, and in the audit log.
    /// When the commit fails the event stays buffered and the next flush commits it (the
    /// error says so): a retry by the operator then records it twice, which is harmless since
    /// an alert's state is its newest event.
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
            .await
            .map(|_| ())
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
