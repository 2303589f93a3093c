//! The `reports_hourly` rollup: per (hour, drone, area cell) counts of reports, sightings and
//! low-score sightings, so that dashboards ("reports per drone per hour", "low scores per area")
//! do not scan raw history.
//!
//! ```text
//! reports flush (batches, WAL position P) ─▶ rollup(batches) ─▶ reports_hourly buffer @ P
//!                                                              ─▶ its own Delta commit (txn P)
//! crash between the two commits ─▶ replay re-derives the rollup of the WAL records the
//!                                  reports commit covers and reports_hourly's does not
//! compaction of a closed day ─▶ the day's partial rows summed into one row per key
//! ```
//! Rows are **partial**: one flush adds a row per key it saw, so queries sum them
//! (`SELECT hour, sum(reports) FROM reports_hourly GROUP BY hour`). The rollup follows the
//! reports by at most one flush.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

use crate::schema::{MICROS_PER_DAY, TableKind, hour_of_micros};
use crate::{Error, Result};

/// A sighting under this score counts as low (the default alert rule's threshold).
pub const LOW_SCORE: f64 = 20.0;

/// Area cells are this many degrees of latitude and longitude (about 1 km around Paris).
pub const CELL_DEGREES: f64 = 0.01;

/// The cell of a position: the south-west corner of its `CELL_DEGREES` square, e.g.
/// `48.85,2.35`.
pub(crate) fn cell_of(latitude: f64, longitude: f64) -> String {
    // The nudge keeps a coordinate printed as a cell's corner (48.86) in that cell although
    // 48.86 / 0.01 is 4885.999… in binary floating point.
    let corner = |v: f64| (v / CELL_DEGREES + 1e-9).floor() * CELL_DEGREES;
    format!("{:.2},{:.2}", corner(latitude), corner(longitude))
}

#[derive(Default)]
struct Counts {
    reports: i64,
    sightings: i64,
    low: i64,
    min_score: Option<f64>,
}

/// The rollup rows of report batches (in the `reports` schema).
pub(crate) fn hourly(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let mut groups: HashMap<(i64, String, String), Counts> = HashMap::new();
    for batch in batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::Corrupt(format!("a reports batch has no column {name}")))
        };
        let drones = column("drone_id")?.as_string::<i32>();
        let times = column("time")?.as_primitive::<TimestampMicrosecondType>();
        let lats = column("latitude")?.as_primitive::<Float64Type>();
        let lons = column("longitude")?.as_primitive::<Float64Type>();
        let citizens = column("citizens")?.as_list::<i32>();
        // The scores of every row's citizens, flat; a row's are between its list offsets.
        let scores = citizens
            .values()
            .as_struct()
            .column_by_name("score")
            .ok_or_else(|| Error::Corrupt("reports.citizens has no score".into()))?
            .as_primitive::<Float64Type>();
        let offsets = citizens.value_offsets();
        for row in 0..batch.num_rows() {
            let hour = hour_of_micros(times.value(row));
            let key = (
                hour,
                drones.value(row).to_string(),
                cell_of(lats.value(row), lons.value(row)),
            );
            let counts = groups.entry(key).or_default();
            counts.reports += 1;
            if citizens.is_null(row) {
                continue;
            }
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            for i in start..end {
                if scores.is_null(i) {
                    continue;
                }
                let score = scores.value(i);
                counts.sightings += 1;
                if score < LOW_SCORE {
                    counts.low += 1;
                }
                counts.min_score = Some(counts.min_score.map_or(score, |m: f64| m.min(score)));
            }
        }
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let hours: Vec<i64> = rows.iter().map(|((h, _, _), _)| *h).collect();
    let days: Vec<i32> = hours
        .iter()
        .map(|h| h.div_euclid(MICROS_PER_DAY) as i32)
        .collect();
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(TimestampMicrosecondArray::from(hours).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|((_, d, _), _)| d.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|((_, _, c), _)| c.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|(_, c)| c.reports),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|(_, c)| c.sightings),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|(_, c)| c.low),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|(_, c)| c.min_score),
        )),
        Arc::new(Date32Array::from(days)),
    ];
    Ok(RecordBatch::try_new(TableKind::Hourly.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use arrow::util::pretty::pretty_format_batches;

    use super::*;
    use crate::report::{ReportBatchBuilder, validate};
    use vigie_proto::Timestamp;
    use vigie_proto::v1::{Citizen, DroneReport};

    fn report(drone: &str, seq: u64, seconds: i64, lat: f64, scores: &[f64]) -> DroneReport {
        DroneReport {
            drone_id: drone.into(),
            seq,
            time: Some(Timestamp { seconds, nanos: 0 }),
            latitude: lat,
            longitude: 2.3512,
            citizens: scores
                .iter()
                .map(|s| Citizen {
                    name: "x".into(),
                    score: *s,
                })
                .collect(),
            words: vec![],
        }
    }

    #[test]
    fn counts_per_hour_drone_and_cell() {
        // 2026-01-01T10:00:00Z = 1767261600.
        let reports = [
            report("a", 1, 1_767_261_600, 48.8566, &[12.0, 80.0]),
            report("a", 2, 1_767_261_660, 48.8599, &[5.0]),
            report("a", 3, 1_767_265_200, 48.8566, &[]),
            report("b", 1, 1_767_261_600, 48.8666, &[50.0]),
        ];
        let mut builder = ReportBatchBuilder::with_capacity(reports.len());
        for r in &reports {
            builder.append(&validate(r).unwrap(), 0);
        }
        let batch = hourly(&[builder.finish().unwrap()]).unwrap();
        assert_eq!(
            pretty_format_batches(&[batch]).unwrap().to_string(),
            "\
+----------------------+----------+------------+---------+-----------+---------------------+-----------+------------+
| hour                 | drone_id | cell       | reports | sightings | low_score_sightings | min_score | day        |
+----------------------+----------+------------+---------+-----------+---------------------+-----------+------------+
| 2026-01-01T10:00:00Z | a        | 48.85,2.35 | 2       | 3         | 2                   | 5.0       | 2026-01-01 |
| 2026-01-01T10:00:00Z | b        | 48.86,2.35 | 1       | 1         | 0                   | 50.0      | 2026-01-01 |
| 2026-01-01T11:00:00Z | a        | 48.85,2.35 | 1       | 0         | 0                   |           | 2026-01-01 |
+----------------------+----------+------------+---------+-----------+---------------------+-----------+------------+"
        );
        assert_eq!(cell_of(-0.001, -0.001), "-0.01,-0.01");
        assert_eq!(cell_of(48.86, 2.35), "48.86,2.35");
    }
}
