//! The same report as one self-contained HTML page (charts inline, no script, no external
//! resource): for a browser, or a mail client that shows HTML.

use std::fmt::Write;

use crate::DayReport;
use crate::chart::escape;
use crate::figures::TOP;
use crate::markup::{BUSIEST, CITIZENS, Charts, DRONES, HEALTH, RULES, Tables, WEEK, WITHHELD};

const STYLE: &str = "body{font-family:serif;max-width:46rem;margin:2rem auto;color:#24292f}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:2px 8px}\
td+td{text-align:right}.figures{display:grid;grid-template-columns:repeat(3,1fr);gap:6px}\
.figures div{border:1px solid #d0d7de;padding:6px}.figures b{font-size:1.5rem;display:block}\
svg{max-width:100%;height:auto}";

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("<p>None.</p>\n");
        return;
    }
    out.push_str("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>\n");
}

/// The report as an HTML document.
pub fn html(r: &DayReport) -> String {
    let charts = Charts::of(r);
    let t = Tables::of(r);
    let mut h = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n<p>Period: {}</p>\n\
         <div class=\"figures\">",
        escape(&r.period),
        title = escape(&t.title),
    );
    for (label, value) in &t.summary {
        let _ = write!(h, "<div><b>{}</b>{}</div>", escape(value), escape(label));
    }
    let _ = write!(
        h,
        "</div>\n<h2>Reports per hour</h2>{}\n<h2>Alerts per hour</h2>{}\n<h2>Alerts by rule</h2>",
        charts.reports, charts.alerts
    );
    table(&mut h, RULES, &t.rules);
    h.push_str("<h2>Compared with the seven days before</h2>");
    table(&mut h, WEEK, &t.week);
    let _ = write!(
        h,
        "<p>Alerts per day:</p>{}\n<h2>Where the low scores were</h2>",
        charts.week
    );
    match &charts.cells {
        Some(svg) => {
            h.push_str(svg);
            table(&mut h, BUSIEST, &t.busiest);
        }
        None => h.push_str("<p>No low-score sighting that day.</p>"),
    }
    let _ = write!(h, "\n<h2>Drones with most alerts (top {TOP})</h2>");
    table(&mut h, DRONES, &t.drones);
    let _ = write!(h, "<h2>Citizens with most alerts (top {TOP})</h2>");
    if t.names_withheld {
        let _ = write!(h, "<p>{}</p>", escape(WITHHELD));
    }
    table(&mut h, CITIZENS, &t.citizens);
    h.push_str("<h2>Ingest health</h2>");
    table(&mut h, HEALTH, &t.health);
    h.push_str("</body></html>\n");
    h
}
