//! What the report says, in typst markup (the PDF) — and the figures as the two renderings print
//! them, so that the PDF and the HTML say the same thing.

use std::fmt::Write;

use crate::DayReport;
use crate::chart::{bars, heat_grid};
use crate::figures::{LATE_SECONDS, TOP};

/// The report's charts, as SVG files.
#[derive(Debug, Clone)]
pub(crate) struct Charts {
    pub(crate) reports: String,
    pub(crate) alerts: String,
    pub(crate) week: String,
    pub(crate) cells: Option<String>,
}

impl Charts {
    pub(crate) fn of(report: &DayReport) -> Self {
        let labels: Vec<String> = report.hours.iter().map(|h| h.label.clone()).collect();
        let reports: Vec<i64> = report.hours.iter().map(|h| h.reports).collect();
        let alerts: Vec<i64> = report.hours.iter().map(|h| h.alerts).collect();
        let mut days: Vec<String> = report
            .week
            .iter()
            .map(|d| d.day.format("%a %d").to_string())
            .collect();
        days.push(report.day.format("%a %d").to_string());
        let mut week: Vec<i64> = report.week.iter().map(|d| d.alerts).collect();
        week.push(report.alerts);
        Self {
            reports: bars(&labels, &reports, "#1f6feb", 3),
            alerts: bars(&labels, &alerts, "#d7263d", 3),
            week: bars(&days, &week, "#ff7b00", 1),
            cells: heat_grid(&report.cells, vigie_engine::CELL_DEGREES),
        }
    }

    /// `(file name, SVG)` of each chart.
    pub(crate) fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = vec![
            ("reports.svg", self.reports.clone()),
            ("alerts.svg", self.alerts.clone()),
            ("week.svg", self.week.clone()),
        ];
        if let Some(cells) = &self.cells {
            files.push(("cells.svg", cells.clone()));
        }
        files
    }
}

/// Seconds as the report prints them.
pub(crate) fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.1} s"))
}

/// The day against the mean of the seven before: `+12.5 %`, or `—` without a week.
pub(crate) fn change(today: i64, before: &[i64]) -> String {
    let mean = before.iter().sum::<i64>() as f64 / before.len().max(1) as f64;
    if mean == 0.0 {
        return "—".into();
    }
    format!("{:+.1} %", (today as f64 - mean) / mean * 100.0)
}

/// The mean of the seven days before, one decimal.
pub(crate) fn mean(before: &[i64]) -> String {
    format!(
        "{:.1}",
        before.iter().sum::<i64>() as f64 / before.len().max(1) as f64
    )
}

/// A citizen as printed: the name, or their rank when names are withheld.
pub(crate) fn citizen(name: &Option<String>, rank: usize) -> String {
    name.clone()
        .unwrap_or_else(|| format!("citizen #{} (name withheld)", rank + 1))
}

/// A typst string literal: user text (drone ids, rules, names) never becomes markup.
fn lit(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `#table` rows of `(label, value)` cells, each a string literal.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "#table(columns: {}, stroke: 0.4pt + rgb(\"#d0d7de\"), inset: 4pt, align: (left, right, right, right),\n",
        header.len()
    );
    for h in header {
        let _ = writeln!(out, "  [*#{}*],", lit(h));
    }
    for row in rows {
        for cell in row {
            let _ = writeln!(out, "  [#{}],", lit(cell));
        }
    }
    out.push_str(")\n");
    out
}

/// The report's tables, as both renderings print them.
pub(crate) struct Tables {
    pub(crate) title: String,
    pub(crate) summary: Vec<(&'static str, String)>,
    pub(crate) rules: Vec<Vec<String>>,
    pub(crate) week: Vec<Vec<String>>,
    pub(crate) busiest: Vec<Vec<String>>,
    pub(crate) drones: Vec<Vec<String>>,
    pub(crate) citizens: Vec<Vec<String>>,
    pub(crate) names_withheld: bool,
    pub(crate) health: Vec<Vec<String>>,
}

/// Headers of the tables, in [`Tables`]' order after the summary.
pub(crate) const RULES: &[&str] = &["rule", "alerts"];
pub(crate) const WEEK: &[&str] = &["day", "reports", "alerts"];
pub(crate) const BUSIEST: &[&str] = &["busiest cells (lat, lon)", "low-score sightings"];
pub(crate) const DRONES: &[&str] = &["drone", "alerts"];
pub(crate) const CITIZENS: &[&str] = &["citizen", "alerts"];
pub(crate) const HEALTH: &[&str] = &["measure", "value"];
pub(crate) const WITHHELD: &str = "Names are withheld by the tenant's setting (personal data).";

fn counted(rows: &[(String, i64)]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|(label, n)| vec![label.clone(), n.to_string()])
        .collect()
}

impl Tables {
    pub(crate) fn of(r: &DayReport) -> Self {
        let before_reports: Vec<i64> = r.week.iter().map(|d| d.reports).collect();
        let before_alerts: Vec<i64> = r.week.iter().map(|d| d.alerts).collect();
        let mut week: Vec<Vec<String>> = r
            .week
            .iter()
            .map(|d| {
                vec![
                    d.day.to_string(),
                    d.reports.to_string(),
                    d.alerts.to_string(),
                ]
            })
            .collect();
        week.push(vec![
            format!("{} (this report)", r.day),
            r.reports.to_string(),
            r.alerts.to_string(),
        ]);
        week.push(vec![
            "mean of the seven days".into(),
            mean(&before_reports),
            mean(&before_alerts),
        ]);
        week.push(vec![
            "this day against the mean".into(),
            change(r.reports, &before_reports),
            change(r.alerts, &before_alerts),
        ]);
        let mut busiest = r.cells.clone();
        busiest.sort_by(|a, b| b.low.cmp(&a.low).then(a.lat.total_cmp(&b.lat)));
        let h = &r.health;
        Self {
            title: format!("Vigie daily report: {}, {}", r.tenant, r.day),
            summary: vec![
                ("reports", r.reports.to_string()),
                ("alerts", r.alerts.to_string()),
                ("drones reporting", r.drones.to_string()),
                ("citizens recognised", r.sightings.to_string()),
                ("low-score sightings", r.low_score_sightings.to_string()),
                ("citizens with an alert", r.alerted_citizens.to_string()),
            ],
            rules: counted(&r.rules),
            week,
            busiest: busiest
                .iter()
                .take(5)
                .map(|c| vec![format!("{:.2}, {:.2}", c.lat, c.lon), c.low.to_string()])
                .collect(),
            drones: counted(&r.drones_top),
            citizens: r
                .citizens_top
                .iter()
                .enumerate()
                .map(|(i, (name, n))| vec![citizen(name, i), n.to_string()])
                .collect(),
            names_withheld: r.citizens_top.iter().any(|(name, _)| name.is_none()),
            health: vec![
                vec![
                    "reports stored (by report time)".into(),
                    h.received.to_string(),
                ],
                vec![
                    "reports accepted (by time of receipt)".into(),
                    h.ingest.accepted.to_string(),
                ],
                vec![
                    "duplicates (retries, not stored again)".into(),
                    h.ingest.duplicates.to_string(),
                ],
                vec!["rejected (invalid)".into(), h.ingest.rejected.to_string()],
                vec![
                    "refused (server overloaded)".into(),
                    h.ingest.refused.to_string(),
                ],
                vec![
                    "failed flushes (retried)".into(),
                    h.ingest.flush_failures.to_string(),
                ],
                vec![
                    format!("received over {} min late", LATE_SECONDS / 60),
                    h.late.to_string(),
                ],
                vec![
                    "median delay, time to receipt".into(),
                    seconds(h.delay_median),
                ],
                vec!["longest delay".into(), seconds(h.delay_max)],
            ],
        }
    }
}

/// A table, or `None.` when it has no row.
fn table_or_none(header: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        "None.\n".into()
    } else {
        table(header, rows)
    }
}

/// The typst source of the report.
pub(crate) fn markup(r: &DayReport, charts: &Charts) -> String {
    let t = Tables::of(r);
    let mut m = String::new();
    let _ = writeln!(
        m,
        "#set document(title: {}, author: \"Vigie\")",
        lit(&t.title)
    );
    let _ = writeln!(
        m,
        "#set page(paper: \"a4\", margin: (x: 1.8cm, y: 1.6cm), footer: context text(8pt)[#{} #h(1fr) page #counter(page).display() of #counter(page).final().first()])",
        lit(&format!(
            "Vigie · {} · {} · {}",
            r.tenant, r.day, r.time_zone
        ))
    );
    m.push_str("#set text(font: \"Libertinus Serif\", size: 10pt)\n");
    let _ = writeln!(m, "= #{}\n", lit(&t.title));
    let _ = writeln!(m, "Period: #{}\n", lit(&r.period));
    m.push_str("#grid(columns: 3, gutter: 6pt,\n");
    for (label, value) in &t.summary {
        let _ = writeln!(
            m,
            "  box(width: 100%, inset: 6pt, stroke: 0.4pt + rgb(\"#d0d7de\"))[#text(16pt)[*#{}*] \\ #{}],",
            lit(value),
            lit(label)
        );
    }
    m.push_str(")\n\n== Reports per hour\n#image(\"reports.svg\", width: 100%)\n");
    m.push_str("== Alerts per hour\n#image(\"alerts.svg\", width: 100%)\n");
    m.push_str("== Alerts by rule\n");
    m.push_str(&table_or_none(RULES, &t.rules));
    m.push_str("#pagebreak()\n== Compared with the seven days before\n");
    m.push_str(&table(WEEK, &t.week));
    m.push_str("Alerts per day:\n#image(\"week.svg\", width: 100%)\n");
    m.push_str("== Where the low scores were\n");
    if charts.cells.is_some() {
        let _ = writeln!(
            m,
            "Sightings with a score under {:.0}, per area (north up):\n#image(\"cells.svg\", width: 100%)",
            vigie_engine::LOW_SCORE
        );
        m.push_str(&table(BUSIEST, &t.busiest));
    } else {
        m.push_str("No low-score sighting that day.\n");
    }
    let _ = writeln!(m, "== Drones with most alerts (top {TOP})");
    m.push_str(&table_or_none(DRONES, &t.drones));
    let _ = writeln!(m, "== Citizens with most alerts (top {TOP})");
    if t.names_withheld {
        let _ = writeln!(m, "{WITHHELD}\n");
    }
    m.push_str(&table_or_none(CITIZENS, &t.citizens));
    m.push_str("== Ingest health\n");
    m.push_str(&table(HEALTH, &t.health));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_a_literal() {
        assert_eq!(lit(r#"a "b" \ #c"#), r#""a \"b\" \\ #c""#);
        assert_eq!(change(110, &[100, 100]), "+10.0 %");
        assert_eq!(change(5, &[0, 0]), "—");
        assert_eq!(mean(&[1, 2]), "1.5");
        assert_eq!(citizen(&None, 0), "citizen #1 (name withheld)");
    }
}
