//! The Arrow schemas of Vigie's tables: the SQL contract.
//!
//! Every table carries a `day` (Date32) column derived from the row's report `time`: it is the Delta
//! partition column, so a time-range query only opens the days it needs. `seq` and `id` are `Int64`
//! although `uint64` on the wire, because Delta Lake has no unsigned types (ingest rejects values
//! ≥ 2^63).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Name of the partition column every table has.
pub const DAY_COLUMN: &str = "day";

/// Microseconds in a day, to derive `day` from `time`.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The tables Vigie stores, one Delta table each under `<root>/tenants/<tenant>/tables/<name>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// One row per accepted drone report.
    Reports,
    /// One row per (rule, matching sighting); filled by the alert operator.
    Alerts,
    /// Partial counts per (hour, drone, area cell), derived from each reports flush: the
    /// questions dashboards ask without scanning raw history (see `rollup`).
    Hourly,
    /// Who queried or administered what, when, with which outcome (admins only).
    Audit,
    /// What operators did about alerts (acknowledged, resolved), by whom, when, with a note.
    AlertEvents,
    /// Partial counts per (hour of receipt, node) of what ingest did: accepted, duplicate,
    /// rejected and refused reports, failed flushes (see `ingest_stats`).
    IngestStats,
}

impl TableKind {
    /// Every stored table, in a fixed order.
    pub const ALL: [TableKind; 6] = [
        TableKind::Reports,
        TableKind::Alerts,
        TableKind::Hourly,
        TableKind::Audit,
        TableKind::AlertEvents,
        TableKind::IngestStats,
    ];

    /// The table's SQL (and directory) name.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Reports => "reports",
            TableKind::Alerts => "alerts",
            TableKind::Hourly => "reports_hourly",
            TableKind::Audit => "audit_log",
            TableKind::AlertEvents => "alert_events",
            TableKind::IngestStats => "ingest_stats",
        }
    }

    /// The table's full Arrow schema, partition column `day` last.
    pub fn schema(self) -> SchemaRef {
        match self {
            TableKind::Reports => REPORTS_SCHEMA.clone(),
            TableKind::Alerts => ALERTS_SCHEMA.clone(),
            TableKind::Hourly => HOURLY_SCHEMA.clone(),
            TableKind::Audit => AUDIT_SCHEMA.clone(),
            TableKind::AlertEvents => ALERT_EVENTS_SCHEMA.clone(),
            TableKind::IngestStats => INGEST_STATS_SCHEMA.clone(),
        }
    }
}

/// `Timestamp(µs, "UTC")`, the type of every time column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The struct of one recognised citizen inside `reports.citizens`.
pub fn citizen_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ])
}

/// The element field of `reports.citizens`.
pub fn citizen_item_field() -> Arc<Field> {
    Arc::new(Field::new(
        "element",
        DataType::Struct(citizen_fields()),
        true,
    ))
}

/// The element field of `reports.words`.
pub fn word_item_field() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Utf8, true))
}

static REPORTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("drone_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("time", timestamp_type(), false),
        Field::new("latitude", DataType::Float64, false),
        Field::new("longitude", DataType::Float64, false),
        Field::new("citizens", DataType::List(citizen_item_field()), true),
        Field::new("words", DataType::List(word_item_field()), true),
        Field::new("received_at", timestamp_type(), false),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
});

static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("drone_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("time", timestamp_type(), false),
        Field::new("latitude", DataType::Float64, false),
        Field::new("longitude", DataType::Float64, false),
        Field::new("citizen", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("raised_at", timestamp_type(), false),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
});

static HOURLY_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("hour", timestamp_type(), false),
        Field::new("drone_id", DataType::Utf8, false),
        Field::new("cell", DataType::Utf8, false),
        Field::new("reports", DataType::Int64, false),
        Field::new("sightings", DataType::Int64, false),
        Field::new("low_score_sightings", DataType::Int64, false),
        Field::new("min_score", DataType::Float64, true),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
});

static AUDIT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("principal", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, true),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("outcome", DataType::Utf8, false),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
});

static INGEST_STATS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("hour", timestamp_type(), false),
        Field::new("node", DataType::Utf8, false),
        Field::new("accepted", DataType::Int64, false),
        Field::new("duplicates", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("refused", DataType::Int64, false),
        Field::new("flush_failures", DataType::Int64, false),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
});

static ALERT_EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("alert_id", DataType::Int64, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("principal", DataType::Utf8, false),
        Field::new("note", DataType::Utf8, true),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
});

/// The schema of a table's Parquet files: the full schema without the partition column, which
/// Delta stores in the file's partition values instead.
pub fn file_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != DAY_COLUMN)
        .cloned()
        .collect();
    Arc::new(Schema::new(fields))
}

/// Microseconds in an hour.
pub const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The start of the (UTC) hour of a timestamp in microseconds, in microseconds.
pub fn hour_of_micros(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR
}

/// The day (days since the Unix epoch) of a timestamp in microseconds.
pub fn day_of_micros(micros: i64) -> i32 {
    // The quotient of a valid protobuf timestamp always fits in i32.
    micros.div_euclid(MICROS_PER_DAY) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_rounds_down_before_epoch() {
        assert_eq!(day_of_micros(0), 0);
        assert_eq!(day_of_micros(MICROS_PER_DAY - 1), 0);
        assert_eq!(day_of_micros(-1), -1);
    }

    #[test]
    fn file_schema_drops_day() {
        let s = file_schema(&TableKind::Reports.schema());
        assert!(s.field_with_name(DAY_COLUMN).is_err());
        assert_eq!(s.fields().len(), 8);
    }
}
