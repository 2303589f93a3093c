//! Validation of incoming [`DroneReport`]s and their conversion to Arrow rows of `reports`.
//!
//! ```text
//! DroneReport ──validate()──▶ ValidReport (time in µs, seq as i64) ──ReportBatchBuilder──▶ RecordBatch
//!       └─ Err(reason): the request's `rejected` entry, worded for the drone's operator
//! ```

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Date32Builder, Float64Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, StructBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;
use vigie_proto::v1::DroneReport;

use crate::schema::{
    TableKind, citizen_fields, citizen_item_field, day_of_micros, word_item_field,
};
use crate::{Error, Result};

/// Longest accepted `drone_id`, in bytes.
pub const MAX_DRONE_ID_BYTES: usize = 128;

/// Range of `google.protobuf.Timestamp.seconds` (0001-01-01 to 9999-12-31, per its specification).
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A report that passed validation, with its time in microseconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct ValidReport<'a> {
    /// The report as received.
    pub report: &'a DroneReport,
    /// `time` in microseconds since the Unix epoch (UTC).
    pub time_micros: i64,
}

impl ValidReport<'_> {
    /// `seq` as stored (validation guarantees it fits).
    pub fn seq(&self) -> i64 {
        self.report.seq as i64
    }
}

/// Checks one report against the contract; the error is a reason a person can act on.
pub fn validate(report: &DroneReport) -> Result<ValidReport<'_>, String> {
    if report.drone_id.is_empty() {
        return Err("drone_id is empty".into());
    }
    if report.drone_id.len() > MAX_DRONE_ID_BYTES {
        return Err(format!(
            "drone_id is {} bytes long, the limit is {MAX_DRONE_ID_BYTES}",
            report.drone_id.len()
        ));
    }
    if report.seq > i64::MAX as u64 {
        return Err(format!("seq {} is not below 2^63", report.seq));
    }
    let Some(time) = report.time.as_ref() else {
        return Err("time is missing".into());
    };
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&time.seconds)
        || !(0..1_000_000_000).contains(&time.nanos)
    {
        return Err(format!(
            "time {{seconds: {}, nanos: {}}} is not a valid timestamp (years 1 to 9999, nanos in [0, 1e9))",
            time.seconds, time.nanos
        ));
    }
    check_coordinate("latitude", report.latitude, 90.0)?;
    check_coordinate("longitude", report.longitude, 180.0)?;
    for (i, citizen) in report.citizens.iter().enumerate() {
        if citizen.name.is_empty() {
            return Err(format!("citizens[{i}] has an empty name"));
        }
        if !citizen.score.is_finite() {
            return Err(format!(
                "citizens[{i}] ({}) has a score that is not a finite number: {}",
                citizen.name, citizen.score
            ));
        }
    }
    Ok(ValidReport {
        report,
        time_micros: time.seconds * 1_000_000 + i64::from(time.nanos / 1_000),
    })
}

fn check_coordinate(name: &str, value: f64, limit: f64) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!("{name} is not a finite number: {value}"));
    }
    if !(-limit..=limit).contains(&value) {
        return Err(format!("{name} {value} out of range [-{limit}, {limit}]"));
    }
    Ok(())
}

/// Appends valid reports as rows of the `reports` table.
#[derive(Debug)]
pub struct ReportBatchBuilder {
    drone_id: StringBuilder,
    seq: Int64Builder,
    time: TimestampMicrosecondBuilder,
    latitude: Float64Builder,
    longitude: Float64Builder,
    citizens: ListBuilder<StructBuilder>,
    words: ListBuilder<StringBuilder>,
    received_at: TimestampMicrosecondBuilder,
    day: Date32Builder,
}

impl ReportBatchBuilder {
    /// A builder sized for `capacity` reports.
    pub fn with_capacity(capacity: usize) -> Self {
        let citizen = StructBuilder::from_fields(citizen_fields(), capacity);
        Self {
            drone_id: StringBuilder::with_capacity(capacity, capacity * 16),
            seq: Int64Builder::with_capacity(capacity),
            time: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            latitude: Float64Builder::with_capacity(capacity),
            longitude: Float64Builder::with_capacity(capacity),
            citizens: ListBuilder::with_capacity(citizen, capacity)
                .with_field(citizen_item_field()),
            words: ListBuilder::with_capacity(StringBuilder::new(), capacity)
                .with_field(word_item_field()),
            received_at: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            day: Date32Builder::with_capacity(capacity),
        }
    }

    /// Appends one report received at `received_at_micros`.
    pub fn append(&mut self, report: &ValidReport<'_>, received_at_micros: i64) {
        let r = report.report;
        self.drone_id.append_value(&r.drone_id);
        self.seq.append_value(report.seq());
        self.time.append_value(report.time_micros);
        self.latitude.append_value(r.latitude);
        self.longitude.append_value(r.longitude);
        let citizens = self.citizens.values();
        for c in &r.citizens {
            citizens
                .field_builder::<StringBuilder>(0)
                .expect("citizen field 0 is name")
                .append_value(&c.name);
            citizens
                .field_builder::<Float64Builder>(1)
                .expect("citizen field 1 is score")
                .append_value(c.score);
            citizens.append(true);
        }
        self.citizens.append(true);
        for w in &r.words {
            self.words.values().append_value(w);
        }
        self.words.append(true);
        self.received_at.append_value(received_at_micros);
        self.day.append_value(day_of_micros(report.time_micros));
    }

    /// Number of rows appended so far.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// Whether no row was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows appended so far, as one batch of the `reports` schema.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.drone_id.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.latitude.finish()),
            Arc::new(self.longitude.finish()),
            Arc::new(self.citizens.finish()),
            Arc::new(self.words.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.day.finish()),
        ];
        debug_assert!(matches!(columns[5].data_type(), DataType::List(_)));
        RecordBatch::try_new(TableKind::Reports.schema(), columns).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_proto::Timestamp;
    use vigie_proto::v1::Citizen;

    fn report() -> DroneReport {
        DroneReport {
            drone_id: "d1".into(),
            seq: 7,
            time: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 5_000,
            }),
            latitude: 48.85,
            longitude: 2.35,
            citizens: vec![Citizen {
                name: "Ana".into(),
                score: 12.5,
            }],
            words: vec!["calme".into()],
        }
    }

    #[test]
    fn valid_report_converts_time_to_micros() {
        let r = report();
        let v = validate(&r).unwrap();
        assert_eq!(v.time_micros, 1_767_225_600_000_005);
    }

    #[test]
    fn reasons_name_the_problem() {
        let mut r = report();
        r.latitude = 95.0;
        assert_eq!(
            validate(&r).unwrap_err(),
            "latitude 95 out of range [-90, 90]"
        );
        let mut r = report();
        r.longitude = f64::NAN;
        assert_eq!(
            validate(&r).unwrap_err(),
            "longitude is not a finite number: NaN"
        );
        let mut r = report();
        r.drone_id = "x".repeat(129);
        assert_eq!(
            validate(&r).unwrap_err(),
            "drone_id is 129 bytes long, the limit is 128"
        );
        let mut r = report();
        r.time = None;
        assert_eq!(validate(&r).unwrap_err(), "time is missing");
        let mut r = report();
        r.citizens[0].name.clear();
        assert_eq!(validate(&r).unwrap_err(), "citizens[0] has an empty name");
        let mut r = report();
        r.citizens[0].score = f64::INFINITY;
        assert!(validate(&r).unwrap_err().contains("not a finite number"));
        let mut r = report();
        r.seq = u64::MAX;
        assert!(validate(&r).unwrap_err().contains("2^63"));
        let mut r = report();
        r.drone_id.clear();
        assert_eq!(validate(&r).unwrap_err(), "drone_id is empty");
    }

    #[test]
    fn builder_makes_a_reports_batch() {
        let r = report();
        let v = validate(&r).unwrap();
        let mut b = ReportBatchBuilder::with_capacity(2);
        b.append(&v, 42);
        b.append(&v, 43);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), TableKind::Reports.schema());
        let text = arrow::util::pretty::pretty_format_batches(&[batch.slice(0, 1)])
            .unwrap()
            .to_string();
        assert!(text.contains("{name: Ana, score: 12.5}"), "{text}");
        assert!(text.contains("2026-01-01T00:00:00.000005Z"), "{text}");
    }
}
