//! The streaming alert operator: rules are SQL boolean expressions over sightings, compiled once
//! into DataFusion physical expressions and evaluated vectorised on every accepted batch.
//!
//! ```text
//! accepted reports batch ─sightings_of()─▶ one row per citizen ─▶ each rule: evaluate → mask
//!   └─ matching (sighting, rule) pairs, in sighting order ─▶ alerts batch (ids dense, from the
//!      tenant's counter, assigned in the write's critical section) ─▶ alerts table + AlertHub
//! AlertHub: holds each write's alerts until its WAL record is durable, then publishes them in id
//! order to every subscriber's bounded queue; a full queue ends that subscription (no silent drop).
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{filter, take};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, SchemaRef, TimestampMicrosecondType,
};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use vigie_proto::Timestamp;
use vigie_proto::v1::Alert;

use crate::schema::{TableKind, citizen_fields, day_of_micros};
use crate::wal::WalPosition;
use crate::{Error, Result};

/// The rule used when none is configured.
pub const DEFAULT_RULE: (&str, &str) = ("low_score", "score < 20");

/// The row a rule sees: one sighting of one citizen, with its report's words. Built once from the
/// `reports` columns it shares, plus the citizen's `name` and `score` (as `citizen`, `score`).
pub fn sighting_schema() -> SchemaRef {
    SIGHTING_SCHEMA.clone()
}

static SIGHTING_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let reports = TableKind::Reports.schema();
    let report_field = |name: &str| {
        reports
            .field_with_name(name)
            .expect("a reports column")
            .clone()
    };
    let citizen = citizen_fields();
    Arc::new(Schema::new(vec![
        report_field("drone_id"),
        report_field("seq"),
        report_field("time"),
        report_field("latitude"),
        report_field("longitude"),
        citizen[0].as_ref().clone().with_name("citizen"),
        citizen[1].as_ref().clone(),
        report_field("words"),
    ]))
});

/// One compiled rule.
#[derive(Debug)]
pub struct AlertRule {
    /// The rule's name (the `rule` column of its alerts).
    pub name: String,
    /// The SQL expression as configured.
    pub expression: String,
    physical: Arc<dyn PhysicalExpr>,
    raised: AtomicU64,
}

impl AlertRule {
    /// Alerts this rule raised since the server started.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }
}

/// The tenant's rules, compiled.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<AlertRule>,
    names: StringArray,
}

impl RuleSet {
    /// Compiles `(name, expression)` pairs; an expression that does not parse, names an unknown
    /// column or is not boolean is an error naming the rule.
    pub fn compile(rules: &[(String, String)]) -> Result<Self> {
        let ctx = SessionContext::new();
        let schema = sighting_schema();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let mut compiled = Vec::with_capacity(rules.len());
        for (name, expression) in rules {
            let fail = |why: String| {
                Error::InvalidConfig(format!("alert rule {name:?} ({expression}): {why}"))
            };
            if name.is_empty() {
                return Err(fail("the rule has no name".into()));
            }
            if compiled.iter().any(|r: &AlertRule| &r.name == name) {
                return Err(fail("another rule has the same name".into()));
            }
            let expr = ctx
                .parse_sql_expr(expression, &df_schema)
                .map_err(|e| fail(e.find_root().to_string()))?;
            let physical = ctx
                .create_physical_expr(expr, &df_schema)
                .map_err(|e| fail(e.find_root().to_string()))?;
            let data_type = physical
                .data_type(&schema)
                .map_err(|e| fail(e.find_root().to_string()))?;
            if data_type != DataType::Boolean {
                return Err(fail(format!(
                    "the expression is {data_type}, not a boolean; columns: drone_id, seq, time, \
                     latitude, longitude, citizen, score, words"
                )));
            }
            compiled.push(AlertRule {
                name: name.clone(),
                expression: expression.clone(),
                physical,
                raised: AtomicU64::new(0),
            });
        }
        let names = StringArray::from_iter_values(compiled.iter().map(|r| r.name.as_str()));
        Ok(Self {
            rules: compiled,
            names,
        })
    }

    /// The rules, in configuration order.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// The alerts a batch of `reports` raises, ids from `first_id`, raised at `raised_at`
    /// (µs): one per (matching sighting, rule), in sighting order then rule order.
    pub fn evaluate(
        &self,
        reports: &RecordBatch,
        first_id: i64,
        raised_at: i64,
    ) -> Result<RecordBatch> {
        let sightings = sightings_of(reports)?;
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for (k, rule) in self.rules.iter().enumerate() {
            let value = rule
                .physical
                .evaluate(&sightings)
                .and_then(|v| v.into_array(sightings.num_rows()))
                .map_err(|e| Error::Rule(format!("alert rule {:?} failed: {e}", rule.name)))?;
            let mask = value.as_boolean();
            let hits = filter(
                &UInt32Array::from_iter_values(0..sightings.num_rows() as u32),
                mask,
            )?;
            let hits = hits.as_primitive::<arrow::datatypes::UInt32Type>();
            rule.raised.fetch_add(hits.len() as u64, Ordering::Relaxed);
            pairs.extend(hits.values().iter().map(|&row| (row, k as u32)));
        }
        pairs.sort_unstable();
        let rows = UInt32Array::from_iter_values(pairs.iter().map(|p| p.0));
        let rules = UInt32Array::from_iter_values(pairs.iter().map(|p| p.1));
        let n = pairs.len() as i64;
        let pick = |i: usize| take(sightings.column(i), &rows, None);
        let time = pick(2)?;
        let day: Date32Array = time
            .as_primitive::<TimestampMicrosecondType>()
            .unary(day_of_micros);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(first_id..first_id + n)),
            take(&self.names, &rules, None)?,
            pick(0)?,
            pick(1)?,
            time,
            pick(3)?,
            pick(4)?,
            pick(5)?,
            pick(6)?,
            Arc::new(
                TimestampMicrosecondArray::from_value(raised_at, pairs.len()).with_timezone("UTC"),
            ),
            Arc::new(day),
        ];
        Ok(RecordBatch::try_new(TableKind::Alerts.schema(), columns)?)
    }
}

/// One row per citizen of each report (reports without citizens give none), with the columns a
/// rule sees.
pub fn sightings_of(reports: &RecordBatch) -> Result<RecordBatch> {
    let column = |name: &str| {
        reports
            .column_by_name(name)
            .ok_or_else(|| Error::Corrupt(format!("reports batch without {name}")))
    };
    let citizens = column("citizens")?.as_list::<i32>();
    let items = ListItems::of(citizens, true);
    let rows = &items.rows;
    let people = items.values(citizens)?;
    let people = people.as_struct();
    let pick = |name: &str| -> Result<ArrayRef> { Ok(take(column(name)?, rows, None)?) };
    let columns: Vec<ArrayRef> = vec![
        pick("drone_id")?,
        pick("seq")?,
        pick("time")?,
        pick("latitude")?,
        pick("longitude")?,
        people.column(0).clone(),
        people.column(1).clone(),
        pick("words")?,
    ];
    Ok(RecordBatch::try_new(sighting_schema(), columns)?)
}

/// Where the items of a list array are: the row of each item of the non-null lists (for
/// `take` on the list's sibling columns) and, when some list is null, the position of each kept
/// item among the values (a null list's items do not count).
pub struct ListItems {
    /// The row of each item; empty when not asked for.
    pub rows: UInt32Array,
    /// The kept items' positions in `values().slice(first offset, ..)`; `None`: all of them.
    pub kept: Option<UInt32Array>,
    /// How many items there are.
    pub len: usize,
}

impl ListItems {
    /// The items of `list`; `with_rows: false` skips the rows when only the values are read.
    pub fn of(list: &ListArray, with_rows: bool) -> Self {
        let offsets = list.value_offsets();
        let (start, end) = (offsets[0] as usize, offsets[list.len()] as usize);
        let mut rows: Vec<u32> = Vec::new();
        let mut kept = None;
        if list.null_count() > 0 {
            let mut items = Vec::new();
            for i in (0..list.len()).filter(|&i| list.is_valid(i)) {
                for item in offsets[i] as usize..offsets[i + 1] as usize {
                    items.push((item - start) as u32);
                    rows.push(i as u32);
                }
            }
            kept = Some(items);
        } else if with_rows {
            rows.reserve(end - start);
            for i in 0..list.len() {
                let n = (offsets[i + 1] - offsets[i]) as usize;
                rows.extend(std::iter::repeat_n(i as u32, n));
            }
        }
        Self {
            len: kept.as_ref().map_or(end - start, Vec::len),
            rows: rows.into(),
            kept: kept.map(UInt32Array::from),
        }
    }

    /// The kept values of `list` (the same `list` as [`ListItems::of`]): a slice when no list is
    /// null (no copy), else a `take`.
    pub fn values(&self, list: &ListArray) -> Result<ArrayRef> {
        let offsets = list.value_offsets();
        let start = offsets[0] as usize;
        let values = list
            .values()
            .slice(start, offsets[list.len()] as usize - start);
        Ok(match &self.kept {
            Some(kept) => take(&values, kept, None)?,
            None => values,
        })
    }
}

/// The `Alert` messages of an alerts batch, columns found by name (a stored file may order them
/// differently or lack the partition column). A batch without the alerts columns, or with
/// columns of other types or with nulls, is `Corrupt`: it was not written by Vigie.
pub fn alerts_to_proto(batch: &RecordBatch) -> Result<Vec<Alert>> {
    let schema = TableKind::Alerts.schema();
    let column = |name: &str| -> Result<ArrayRef> {
        let wanted = schema
            .field_with_name(name)
            .map_err(|e| Error::Corrupt(format!("alerts schema: {e}")))?;
        let found = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Corrupt(format!("the alerts have no column {name:?}")))?;
        if found.null_count() > 0 {
            return Err(Error::Corrupt(format!(
                "alerts column {name:?} holds nulls"
            )));
        }
        let strict = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        arrow::compute::cast_with_options(found, wanted.data_type(), &strict).map_err(|e| {
            Error::Corrupt(format!(
                "alerts column {name:?} is {} where {} was expected: {e}",
                found.data_type(),
                wanted.data_type()
            ))
        })
    };
    let ids = column("id")?;
    let rules = column("rule")?;
    let drones = column("drone_id")?;
    let seqs = column("seq")?;
    let times = column("time")?;
    let lats = column("latitude")?;
    let lons = column("longitude")?;
    let citizens = column("citizen")?;
    let scores = column("score")?;
    let raised = column("raised_at")?;
    let (ids, seqs) = (
        ids.as_primitive::<Int64Type>(),
        seqs.as_primitive::<Int64Type>(),
    );
    let (rules, drones, citizens) = (
        rules.as_string::<i32>(),
        drones.as_string::<i32>(),
        citizens.as_string::<i32>(),
    );
    let (times, raised) = (
        times.as_primitive::<TimestampMicrosecondType>(),
        raised.as_primitive::<TimestampMicrosecondType>(),
    );
    let (lats, lons, scores) = (
        lats.as_primitive::<Float64Type>(),
        lons.as_primitive::<Float64Type>(),
        scores.as_primitive::<Float64Type>(),
    );
    Ok((0..batch.num_rows())
        .map(|i| Alert {
            id: ids.value(i) as u64,
            rule: rules.value(i).to_string(),
            drone_id: drones.value(i).to_string(),
            seq: seqs.value(i) as u64,
            time: Some(timestamp(times.value(i))),
            latitude: lats.value(i),
            longitude: lons.value(i),
            citizen: citizens.value(i).to_string(),
            score: scores.value(i),
            raised_at: Some(timestamp(raised.value(i))),
        })
        .collect())
}

fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Why a subscription ended.
#[derive(Debug, Default)]
pub struct Overflow(AtomicBool, AtomicBool);

impl Overflow {
    /// Whether the subscriber's queue overflowed.
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Whether the hub was closed: in cluster mode, this node stopped owning the tenant, and
    /// its alerts are now raised by another node.
    pub fn moved(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<Alert>,
    overflow: Arc<Overflow>,
}

#[derive(Debug, Default)]
struct HubState {
    /// Alerts of writes not yet durable, in WAL (hence id) order.
    pending: VecDeque<(WalPosition, Vec<Alert>)>,
    subscribers: Vec<Subscriber>,
    last_published: u64,
    /// See [`AlertHub::close`].
    closed: bool,
}

/// A live subscription: alerts with ids above `after` arrive on `alerts`.
#[derive(Debug)]
pub struct Subscription {
    /// Every alert with an id up to this one was published before the subscription started (and
    /// is in the `alerts` table).
    pub after: u64,
    /// The live alerts.
    pub alerts: mpsc::Receiver<Alert>,
    /// Set when the queue overflowed and the subscription was ended.
    pub overflow: Arc<Overflow>,
}

/// Publishes durable alerts to subscribers, in id order.
#[derive(Debug, Default)]
pub struct AlertHub {
    state: Mutex<HubState>,
}

impl AlertHub {
    /// A hub whose alerts up to `last_published` are already durable and stored.
    pub fn new(last_published: u64) -> Self {
        Self {
            state: Mutex::new(HubState {
                last_published,
                ..HubState::default()
            }),
        }
    }

    /// Holds a write's alerts until its WAL record is durable (call in WAL order).
    pub fn enqueue(&self, position: WalPosition, alerts: Vec<Alert>) {
        if !alerts.is_empty() {
            self.state.lock().pending.push_back((position, alerts));
        }
    }

    /// Publishes the held alerts of every record up to `durable`.
    pub fn release(&self, durable: WalPosition) {
        let mut s = self.state.lock();
        while s.pending.front().is_some_and(|(p, _)| *p <= durable) {
            let (_, alerts) = s.pending.pop_front().expect("checked");
            for alert in alerts {
                s.last_published = alert.id;
                s.subscribers
                    .retain(|sub| match sub.tx.try_send(alert.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            sub.overflow.0.store(true, Ordering::SeqCst);
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    });
            }
        }
    }

    /// Starts a subscription with a queue of `capacity` alerts.
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(Overflow::default());
        let mut s = self.state.lock();
        if s.closed {
            overflow.1.store(true, Ordering::SeqCst);
        } else {
            s.subscribers.push(Subscriber {
                tx,
                overflow: overflow.clone(),
            });
        }
        Subscription {
            after: s.last_published,
            alerts: rx,
            overflow,
        }
    }

    /// Ends every subscription (each told [`Overflow::moved`]) and refuses new ones the same
    /// way: this node no longer raises the tenant's alerts.
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        for sub in s.subscribers.drain(..) {
            sub.overflow.1.store(true, Ordering::SeqCst);
        }
    }

    /// The id of the last published alert.
    pub fn last_published(&self) -> u64 {
        self.state.lock().last_published
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ReportBatchBuilder, validate};
    use vigie_proto::v1::{Citizen, DroneReport};

    fn reports() -> RecordBatch {
        let make = |seq: u64, people: &[(&str, f64)], words: &[&str]| DroneReport {
            drone_id: "d".into(),
            seq,
            time: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            latitude: 1.0,
            longitude: 2.0,
            citizens: people
                .iter()
                .map(|(n, s)| Citizen {
                    name: (*n).into(),
                    score: *s,
                })
                .collect(),
            words: words.iter().map(|w| (*w).into()).collect(),
        };
        let all = [
            make(1, &[("Ana", 10.0), ("Bo", 50.0)], &["emeute"]),
            make(2, &[], &["emeute"]),
            make(3, &[("Cy", 35.0)], &["emeute", "feu"]),
            make(4, &[("Di", 5.0)], &[]),
        ];
        let mut b = ReportBatchBuilder::with_capacity(4);
        for r in &all {
            b.append(&validate(r).unwrap(), 0);
        }
        b.finish().unwrap()
    }

    fn rules(list: &[(&str, &str)]) -> Result<RuleSet> {
        RuleSet::compile(
            &list
                .iter()
                .map(|(n, e)| ((*n).to_string(), (*e).to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn alerts_in_sighting_then_rule_order_with_dense_ids() {
        let set = rules(&[
            ("low_score", "score < 20"),
            ("riot_words", "score < 40 AND array_has(words, 'emeute')"),
        ])
        .unwrap();
        let alerts = set.evaluate(&reports(), 7, 99).unwrap();
        let got: Vec<_> = alerts_to_proto(&alerts)
            .unwrap()
            .into_iter()
            .map(|a| (a.id, a.rule, a.seq, a.citizen))
            .collect();
        assert_eq!(
            got,
            vec![
                (7, "low_score".to_string(), 1, "Ana".to_string()),
                (8, "riot_words".to_string(), 1, "Ana".to_string()),
                (9, "riot_words".to_string(), 3, "Cy".to_string()),
                (10, "low_score".to_string(), 4, "Di".to_string()),
            ]
        );
        assert_eq!(set.rules()[0].raised(), 2);
        assert_eq!(alerts.schema(), TableKind::Alerts.schema());
    }

    #[test]
    fn bad_rules_name_themselves() {
        let err = rules(&[("bad", "score <")]).unwrap_err().to_string();
        assert!(err.contains("\"bad\""), "{err}");
        let err = rules(&[("num", "score + 1")]).unwrap_err().to_string();
        assert!(err.contains("not a boolean"), "{err}");
        let err = rules(&[("col", "nope > 1")]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn hub_publishes_durable_alerts_in_order_and_ends_slow_subscribers() {
        let hub = AlertHub::new(0);
        let mut fast = hub.subscribe(100);
        let mut slow = hub.subscribe(1);
        let alert = |id| Alert {
            id,
            ..Alert::default()
        };
        hub.enqueue(1, vec![alert(1), alert(2)]);
        hub.enqueue(2, vec![alert(3)]);
        hub.release(1);
        assert_eq!(fast.alerts.recv().await.unwrap().id, 1);
        assert_eq!(fast.alerts.recv().await.unwrap().id, 2);
        assert!(
            fast.alerts.try_recv().is_err(),
            "record 2 is not durable yet"
        );
        hub.release(2);
        assert_eq!(fast.alerts.recv().await.unwrap().id, 3);
        assert_eq!(slow.alerts.recv().await.unwrap().id, 1);
        assert!(slow.overflow.happened());
        assert!(
            slow.alerts.recv().await.is_none(),
            "ended after the overflow"
        );
        assert_eq!(hub.subscribe(1).after, 3);
    }

    #[test]
    fn alerts_of_another_schema_are_corrupt_not_a_panic() {
        let foreign = RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(vec!["one"])) as ArrayRef),
            ("rule", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let err = alerts_to_proto(&foreign).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(m) if m.contains("\"id\"")),
            "{err}"
        );
        let missing =
            RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
                .unwrap();
        let err = alerts_to_proto(&missing).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(m) if m.contains("no column \"rule\"")),
            "{err}"
        );
    }
}
