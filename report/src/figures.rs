//! The figures of one tenant's day, each from one SQL statement over the tenant's tables: the
//! `reports_hourly` rollup where it serves (the day's hours are whole UTC hours), `reports`,
//! `sightings` and `alerts` otherwise.
//!
//! ```text
//! ReportRequest (day, time zone, names) ─▶ the day's bounds in UTC (23, 24 or 25 hours)
//!   ─▶ ~10 small queries (SqlEngine) ─▶ DayReport ─▶ pdf / html
//! ```

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use vigie_engine::{CELL_DEGREES, LOW_SCORE};
use vigie_sql::SqlEngine;

use crate::{Error, Result};

/// How many drones and citizens the "most alerts" tables list.
pub const TOP: usize = 10;

/// A report delivered later than this after its time counts as late in the ingest health.
pub const LATE_SECONDS: i64 = 300;

/// Which day of which tenant, seen how.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    /// The tenant's name, printed in the title.
    pub tenant: String,
    /// The day reported, in `time_zone`.
    pub day: NaiveDate,
    /// The tenant's time zone: the day runs from its midnight to the next.
    pub time_zone: Tz,
    /// Whether citizens are named (personal data) or only counted.
    pub names: bool,
}

/// One hour of the day (local time).
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    /// Its local start, `HH:MM` (twice the same on the day clocks go back).
    pub label: String,
    /// Reports whose time is in the hour.
    pub reports: i64,
    /// Alerts whose report's time is in the hour.
    pub alerts: i64,
}

/// One of the seven days before.
#[derive(Debug, Clone, PartialEq)]
pub struct PastDay {
    /// The local day.
    pub day: NaiveDate,
    /// Its reports.
    pub reports: i64,
    /// Its alerts.
    pub alerts: i64,
}

/// Low-score sightings in one area cell (the rollup's `CELL_DEGREES` squares).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// South-west corner's latitude.
    pub lat: f64,
    /// South-west corner's longitude.
    pub lon: f64,
    /// Sightings under [`LOW_SCORE`] in the cell that day.
    pub low: i64,
}

/// How the day's reports arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Reports stored for the day (after dedupe: duplicates are not stored).
    pub received: i64,
    /// Reports received more than [`LATE_SECONDS`] after their time.
    pub late: i64,
    /// Median delay from a report's time to its receipt, in seconds.
    pub delay_median: Option<f64>,
    /// The longest such delay, in seconds.
    pub delay_max: Option<f64>,
    /// What ingest counted in the day's hours of receipt (`ingest_stats`).
    pub ingest: IngestCounts,
}

/// The `ingest_stats` sums of the day's hours (of receipt).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestCounts {
    /// Reports accepted.
    pub accepted: i64,
    /// Retries of reports stored already (not stored again).
    pub duplicates: i64,
    /// Invalid reports.
    pub rejected: i64,
    /// Reports of writes refused while the server was overloaded.
    pub refused: i64,
    /// Flushes that failed (their rows stayed buffered and were retried).
    pub flush_failures: i64,
}

/// Everything the report shows, computed once; rendering is a pure function of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DayReport {
    /// The tenant.
    pub tenant: String,
    /// The day, local.
    pub day: NaiveDate,
    /// The time zone's name (`Europe/Paris`).
    pub time_zone: String,
    /// The day's first instant.
    pub start: DateTime<Utc>,
    /// The next day's first instant.
    pub end: DateTime<Utc>,
    /// The period as printed: local bounds with their UTC offsets.
    pub period: String,
    /// Reports of the day.
    pub reports: i64,
    /// Alerts of the day.
    pub alerts: i64,
    /// Drones that reported.
    pub drones: i64,
    /// Citizens recognised (sightings).
    pub sightings: i64,
    /// Sightings under [`LOW_SCORE`].
    pub low_score_sightings: i64,
    /// Distinct citizens with an alert.
    pub alerted_citizens: i64,
    /// Each local hour, in order.
    pub hours: Vec<Hour>,
    /// Alerts per rule, most first.
    pub rules: Vec<(String, i64)>,
    /// The drones with most alerts (at most [`TOP`]).
    pub drones_top: Vec<(String, i64)>,
    /// The citizens with most alerts (at most [`TOP`]); `None` names when names are off.
    pub citizens_top: Vec<(Option<String>, i64)>,
    /// The cells with low-score sightings.
    pub cells: Vec<Cell>,
    /// The seven days before, oldest first.
    pub week: Vec<PastDay>,
    /// Ingest health.
    pub health: Health,
}

/// An IANA time zone by name (`Europe/Paris`, `UTC`), with an error a user can act on.
pub fn time_zone(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| {
        Error::InvalidInput(format!(
            "unknown time zone {name:?}: use an IANA name such as Europe/Paris or UTC"
        ))
    })
}

/// The UTC bounds of local `day` in `tz` (a day of 23 or 25 hours when clocks change).
pub fn day_bounds(day: NaiveDate, tz: Tz) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let midnight = |d: NaiveDate| -> Result<DateTime<Utc>> {
        let naive = d
            .and_hms_opt(0, 0, 0)
            .ok_or_else(|| Error::InvalidInput(format!("{d} has no midnight")))?;
        // A zone whose clocks jump over midnight starts that day at the first valid instant.
        let local = (0..=4)
            .find_map(|h| {
                tz.from_local_datetime(&(naive + Duration::hours(h)))
                    .earliest()
            })
            .ok_or_else(|| Error::InvalidInput(format!("{d} has no start in {tz}")))?;
        Ok(local.with_timezone(&Utc))
    };
    let next = day
        .succ_opt()
        .ok_or_else(|| Error::InvalidInput(format!("{day} is the last day there is")))?;
    Ok((midnight(day)?, midnight(next)?))
}

fn ts(t: DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// The tenant's day, from its tables.
pub async fn gather(sql: &SqlEngine, request: &ReportRequest) -> Result<DayReport> {
    let tz = request.time_zone;
    let (start, end) = day_bounds(request.day, tz)?;
    let (s, e) = (ts(start), ts(end));
    let epoch = start.timestamp();
    // The rollup is per UTC hour: it serves when the local hours are UTC hours.
    let rollup = epoch % 3600 == 0;
    let hour_count = usize::try_from((end - start).num_hours()).unwrap_or(0);
    let mut hours: Vec<Hour> = (0..hour_count)
        .map(|h| Hour {
            label: (start + Duration::hours(h as i64))
                .with_timezone(&tz)
                .format("%H:%M")
                .to_string(),
            reports: 0,
            alerts: 0,
        })
        .collect();
    let bucket = |column: &str| {
        format!("CAST(floor((date_part('epoch', {column}) - {epoch}) / 3600) AS BIGINT)")
    };
    let (reports, alerts) = per_bucket(
        sql,
        ["reports per hour", "alerts per hour"],
        bucket,
        rollup,
        &s,
        &e,
    )
    .await?;
    for (h, hour) in hours.iter_mut().enumerate() {
        hour.reports = reports.get(&(h as i64)).copied().unwrap_or(0);
        hour.alerts = alerts.get(&(h as i64)).copied().unwrap_or(0);
    }
    let totals = row(
        sql,
        "totals",
        &format!(
            "SELECT count(*), count(DISTINCT drone_id), \
             count(*) FILTER (WHERE date_part('epoch', received_at) - date_part('epoch', time) > {LATE_SECONDS}), \
             median(date_part('epoch', received_at) - date_part('epoch', time)), \
             max(date_part('epoch', received_at) - date_part('epoch', time)) \
             FROM reports WHERE time >= {s} AND time < {e}"
        ),
    )
    .await?;
    let sightings = row(
        sql,
        "sightings",
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE score < {LOW_SCORE:?}) FROM sightings \
             WHERE time >= {s} AND time < {e}"
        ),
    )
    .await?;
    let alert_totals = row(
        sql,
        "alert totals",
        &format!(
            "SELECT count(*), count(DISTINCT citizen) FROM alerts WHERE time >= {s} AND time < {e}"
        ),
    )
    .await?;
    // Alerts counted by `column`, most first (ties by the column), the first `limit` if given.
    let alerts_by = |column: &str, limit: Option<usize>| {
        let limit = limit.map_or_else(String::new, |n| format!(" LIMIT {n}"));
        format!(
            "SELECT {column}, count(*) AS n FROM alerts WHERE time >= {s} AND time < {e} \
             GROUP BY {column} ORDER BY n DESC, {column}{limit}"
        )
    };
    let rules = named(sql, "alerts by rule", &alerts_by("rule", None)).await?;
    let drones_top = named(
        sql,
        "drones with most alerts",
        &alerts_by("drone_id", Some(TOP)),
    )
    .await?;
    let citizens_top = named(
        sql,
        "citizens with most alerts",
        &alerts_by("citizen", Some(TOP)),
    )
    .await?
    .into_iter()
    // Without names the ranking stays; the names never leave this function.
    .map(|(name, n)| (request.names.then_some(name), n))
    .collect();
    let ingest = row(
        sql,
        "ingest counts",
        &format!(
            "SELECT sum(accepted), sum(duplicates), sum(rejected), sum(refused), \
             sum(flush_failures) FROM ingest_stats WHERE hour >= {s} AND hour < {e}"
        ),
    )
    .await?;
    let cells = cells(sql, rollup, &s, &e).await?;
    let week = week(sql, request.day, tz, rollup).await?;
    Ok(DayReport {
        tenant: request.tenant.clone(),
        day: request.day,
        time_zone: tz.name().to_string(),
        start,
        end,
        period: format!(
            "{} to {} ({})",
            start.with_timezone(&tz).format("%Y-%m-%d %H:%M (UTC%:z)"),
            end.with_timezone(&tz).format("%Y-%m-%d %H:%M (UTC%:z)"),
            tz.name()
        ),
        reports: int(&totals, 0),
        drones: int(&totals, 1),
        alerts: int(&alert_totals, 0),
        alerted_citizens: int(&alert_totals, 1),
        sightings: int(&sightings, 0),
        low_score_sightings: int(&sightings, 1),
        hours,
        rules,
        drones_top,
        citizens_top,
        cells,
        week,
        health: Health {
            received: int(&totals, 0),
            late: int(&totals, 2),
            delay_median: totals.get(3).copied().flatten(),
            delay_max: totals.get(4).copied().flatten(),
            ingest: IngestCounts {
                accepted: int(&ingest, 0),
                duplicates: int(&ingest, 1),
                rejected: int(&ingest, 2),
                refused: int(&ingest, 3),
                flush_failures: int(&ingest, 4),
            },
        },
    })
}

/// Low-score sightings per cell: from the rollup, or counted from `sightings` with the
/// rollup's cell rule when the day is not made of whole UTC hours.
async fn cells(sql: &SqlEngine, rollup: bool, s: &str, e: &str) -> Result<Vec<Cell>> {
    const WHAT: &str = "low-score cells";
    if !rollup {
        // The cell of a position is its south-west corner (as the rollup computes it).
        let corner = |c: &str| format!("floor({c} / {CELL_DEGREES:?} + 1e-9)");
        let query = format!(
            "SELECT {}, {}, count(*) FROM sightings \
             WHERE time >= {s} AND time < {e} AND score < {LOW_SCORE:?} GROUP BY 1, 2 ORDER BY 1, 2",
            corner("latitude"),
            corner("longitude")
        );
        let mut cells = Vec::new();
        for batch in collect(sql, WHAT, &query).await? {
            let [lat, lon, n] = [0, 1, 2].map(|i| numbers(WHAT, &batch, i));
            for ((lat, lon), n) in lat?.into_iter().zip(lon?).zip(n?) {
                if let (Some(lat), Some(lon), Some(n)) = (lat, lon, n) {
                    cells.push(Cell {
                        lat: lat * CELL_DEGREES,
                        lon: lon * CELL_DEGREES,
                        low: n as i64,
                    });
                }
            }
        }
        return Ok(cells);
    }
    let query = format!(
        "SELECT cell, sum(low_score_sightings) AS n FROM reports_hourly \
         WHERE hour >= {s} AND hour < {e} GROUP BY cell HAVING sum(low_score_sightings) > 0 \
         ORDER BY cell"
    );
    named(sql, WHAT, &query)
        .await?
        .into_iter()
        .map(|(cell, low)| {
            let (lat, lon) = cell
                .split_once(',')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| Error::Shape {
                    what: WHAT,
                    detail: format!("the cell {cell:?}"),
                })?;
            Ok(Cell { lat, lon, low })
        })
        .collect()
}

/// Reports and alerts of each of the seven local days before `day`.
async fn week(sql: &SqlEngine, day: NaiveDate, tz: Tz, rollup: bool) -> Result<Vec<PastDay>> {
    let mut days = Vec::with_capacity(7);
    let mut bounds = Vec::with_capacity(8);
    for back in (1..=7).rev() {
        let d = day - Duration::days(back);
        bounds.push(day_bounds(d, tz)?.0);
        days.push(d);
    }
    bounds.push(day_bounds(day, tz)?.0);
    let which = |column: &str| {
        let arms: String = bounds[1..7]
            .iter()
            .enumerate()
            .map(|(i, b)| format!(" WHEN {column} < {} THEN {i}", ts(*b)))
            .collect();
        format!("CASE{arms} ELSE 6 END")
    };
    let (first, last) = (ts(bounds[0]), ts(bounds[7]));
    let (reports, alerts) = per_bucket(
        sql,
        ["reports per day", "alerts per day"],
        which,
        rollup,
        &first,
        &last,
    )
    .await?;
    Ok(days
        .into_iter()
        .enumerate()
        .map(|(i, day)| PastDay {
            day,
            reports: reports.get(&(i as i64)).copied().unwrap_or(0),
            alerts: alerts.get(&(i as i64)).copied().unwrap_or(0),
        })
        .collect())
}

/// Reports and alerts in `[first, last)` counted by bucket index, `bucket(column)` being the
/// SQL of a time column's index: the reports from the rollup (its `hour`) when it serves, from
/// `reports` otherwise; the alerts from `alerts`.
async fn per_bucket(
    sql: &SqlEngine,
    what: [&'static str; 2],
    bucket: impl Fn(&str) -> String,
    rollup: bool,
    first: &str,
    last: &str,
) -> Result<(BTreeMap<i64, i64>, BTreeMap<i64, i64>)> {
    let reports = if rollup {
        format!(
            "SELECT {}, sum(reports) FROM reports_hourly WHERE hour >= {first} AND hour < {last} \
             GROUP BY 1",
            bucket("hour")
        )
    } else {
        format!(
            "SELECT {}, count(*) FROM reports WHERE time >= {first} AND time < {last} GROUP BY 1",
            bucket("time")
        )
    };
    let alerts = format!(
        "SELECT {}, count(*) FROM alerts WHERE time >= {first} AND time < {last} GROUP BY 1",
        bucket("time")
    );
    Ok((
        counts(sql, what[0], &reports).await?,
        counts(sql, what[1], &alerts).await?,
    ))
}

async fn collect(sql: &SqlEngine, what: &'static str, query: &str) -> Result<Vec<RecordBatch>> {
    let wrap = |source| Error::Sql { what, source };
    sql.plan(query)
        .await
        .map_err(wrap)?
        .collect()
        .await
        .map_err(|e| wrap(vigie_sql::Error::DataFusion(e)))
}

/// Column `i` of `batch` cast to `to`.
fn column_as(
    what: &'static str,
    batch: &RecordBatch,
    i: usize,
    to: &DataType,
) -> Result<arrow::array::ArrayRef> {
    let shape = |detail: String| Error::Shape { what, detail };
    let column = batch
        .columns()
        .get(i)
        .ok_or_else(|| shape(format!("no column {i}")))?;
    cast(column, to).map_err(|e| shape(e.to_string()))
}

/// Column `i` of `batch` as numbers (integers or floats, nulls as `None`).
fn numbers(what: &'static str, batch: &RecordBatch, i: usize) -> Result<Vec<Option<f64>>> {
    let column = column_as(what, batch, i, &DataType::Float64)?;
    let column = column.as_primitive::<Float64Type>();
    Ok((0..column.len())
        .map(|r| column.is_valid(r).then(|| column.value(r)))
        .collect())
}

/// Column `i` of `batch` as text (nulls as empty strings).
fn strings(what: &'static str, batch: &RecordBatch, i: usize) -> Result<Vec<String>> {
    let column = column_as(what, batch, i, &DataType::Utf8)?;
    let column = column.as_string::<i32>();
    Ok((0..column.len())
        .map(|r| {
            if column.is_valid(r) {
                column.value(r).to_string()
            } else {
                String::new()
            }
        })
        .collect())
}

/// A one-row answer's values.
async fn row(sql: &SqlEngine, what: &'static str, query: &str) -> Result<Vec<Option<f64>>> {
    let batches = collect(sql, what, query).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    (0..batch.num_columns())
        .map(|i| Ok(numbers(what, batch, i)?.first().copied().flatten()))
        .collect()
}

/// Counts by integer key (an hour's or a day's index), from `(key, count)` rows.
async fn counts(sql: &SqlEngine, what: &'static str, query: &str) -> Result<BTreeMap<i64, i64>> {
    let mut out = BTreeMap::new();
    for batch in collect(sql, what, query).await? {
        let keys = numbers(what, &batch, 0)?;
        let values = numbers(what, &batch, 1)?;
        out.extend(
            keys.into_iter()
                .zip(values)
                .filter_map(|(k, v)| Some((k? as i64, v.unwrap_or(0.0) as i64))),
        );
    }
    Ok(out)
}

/// `(name, count)` rows, in the query's order.
async fn named(sql: &SqlEngine, what: &'static str, query: &str) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for batch in collect(sql, what, query).await? {
        let names = strings(what, &batch, 0)?;
        let counts = batch
            .column(1)
            .as_primitive_opt::<Int64Type>()
            .map(|c| c.values().to_vec());
        let counts = match counts {
            Some(c) => c,
            None => numbers(what, &batch, 1)?
                .into_iter()
                .map(|v| v.unwrap_or(0.0) as i64)
                .collect(),
        };
        out.extend(names.into_iter().zip(counts));
    }
    Ok(out)
}

fn int(values: &[Option<f64>], i: usize) -> i64 {
    values.get(i).copied().flatten().unwrap_or(0.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_have_their_local_length() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let hours = |d: &str| {
            let (s, e) = day_bounds(d.parse().unwrap(), paris).unwrap();
            (s, (e - s).num_hours())
        };
        let (start, n) = hours("2026-02-01");
        assert_eq!(
            (start.to_rfc3339(), n),
            ("2026-01-31T23:00:00+00:00".into(), 24)
        );
        assert_eq!(hours("2026-03-29").1, 23, "spring forward");
        assert_eq!(hours("2026-10-25").1, 25, "fall back");
        let (utc, next) = day_bounds("2026-02-01".parse().unwrap(), Tz::UTC).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!((next - utc).num_hours(), 24);
        assert!(day_bounds(NaiveDate::MAX, Tz::UTC).is_err());
    }
}
