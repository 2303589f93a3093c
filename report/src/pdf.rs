//! The PDF: typst markup written from the figures, compiled in memory with typst's bundled fonts
//! (no file, no network, no system font), and exported with a fixed identifier and timestamp, so
//! the same figures give the same bytes.
//!
//! ```text
//! DayReport ─▶ markup (main.typ) + charts (reports.svg, alerts.svg, week.svg, cells.svg)
//!           ─▶ ReportWorld (typst::World in memory) ─▶ typst::compile ─▶ typst_pdf::pdf
//! ```

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{Datelike, Timelike};
use typst::diag::{FileError, FileResult, SourceDiagnostic};
use typst::foundations::{Bytes, Datetime, Duration, Smart};
use typst::syntax::{FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{Font, FontBook};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};
use typst_pdf::{PdfOptions, Timestamp};

use crate::markup::{Charts, markup};
use crate::{DayReport, Error, Result};

/// typst's bundled fonts, parsed once per process.
static FONTS: LazyLock<(LazyHash<FontBook>, Vec<Font>)> = LazyLock::new(|| {
    let fonts: Vec<Font> = typst_assets::fonts()
        .flat_map(|data| Font::iter(Bytes::new(data)))
        .collect();
    (LazyHash::new(FontBook::from_fonts(&fonts)), fonts)
});

static LIBRARY: LazyLock<LazyHash<Library>> = LazyLock::new(|| LazyHash::new(Library::default()));

fn file_id(path: &str) -> Result<FileId> {
    let path = VirtualPath::new(path).map_err(|e| Error::Typeset(format!("{path}: {e:?}")))?;
    Ok(RootedPath::new(VirtualRoot::Project, path).intern())
}

/// One document's sources, in memory.
struct ReportWorld {
    main: Source,
    files: HashMap<FileId, Bytes>,
    today: Datetime,
}

impl World for ReportWorld {
    fn library(&self) -> &LazyHash<Library> {
        &LIBRARY
    }

    fn book(&self) -> &LazyHash<FontBook> {
        &FONTS.0
    }

    fn main(&self) -> FileId {
        self.main.id()
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.main.id() {
            Ok(self.main.clone())
        } else {
            Err(FileError::NotSource)
        }
    }

    fn file(&self, id: FileId) -> FileResult<Bytes> {
        self.files
            .get(&id)
            .cloned()
            .ok_or_else(|| FileError::NotFound(id.vpath().get_with_slash().into()))
    }

    fn font(&self, index: usize) -> Option<Font> {
        FONTS.1.get(index).cloned()
    }

    fn today(&self, _offset: Option<Duration>) -> Option<Datetime> {
        Some(self.today)
    }
}

fn diagnostics(diags: &[SourceDiagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.message.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The report as PDF bytes: A4 pages, charts as vector graphics, text extractable.
pub fn pdf(report: &DayReport) -> Result<Vec<u8>> {
    let charts = Charts::of(report);
    let mut files = HashMap::new();
    for (name, svg) in charts.files() {
        files.insert(file_id(&format!("/{name}"))?, Bytes::from_string(svg));
    }
    // The document's date is the end of the day reported: fixed by the figures.
    let end = report.end;
    let today = Datetime::from_ymd_hms(
        end.year(),
        end.month() as u8,
        end.day() as u8,
        end.hour() as u8,
        end.minute() as u8,
        end.second() as u8,
    )
    .ok_or_else(|| Error::Typeset(format!("{end} is not a typst date")))?;
    let world = ReportWorld {
        main: Source::new(file_id("/main.typ")?, markup(report, &charts)),
        files,
        today,
    };
    let document = typst::compile(&world)
        .output
        .map_err(|e| Error::Typeset(diagnostics(&e)))?;
    let options = PdfOptions {
        ident: Smart::Custom(format!("vigie-report-{}-{}", report.tenant, report.day)),
        timestamp: Some(Timestamp::new_utc(today)),
        ..PdfOptions::default()
    };
    typst_pdf::pdf(&document, &options).map_err(|e| Error::Typeset(diagnostics(&e)))
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};

    use super::*;
    use crate::figures::{Cell, Health, Hour, PastDay};

    fn sample(names: bool) -> DayReport {
        let day = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
        DayReport {
            tenant: "north".into(),
            day,
            time_zone: "UTC".into(),
            start: Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 2, 2, 0, 0, 0).unwrap(),
            period: "2026-02-01 00:00 to 2026-02-02 00:00 (UTC)".into(),
            reports: 2400,
            alerts: 12,
            drones: 100,
            sightings: 3000,
            low_score_sightings: 30,
            alerted_citizens: 9,
            hours: (0..24)
                .map(|h| Hour {
                    label: format!("{h:02}:00"),
                    reports: 100,
                    alerts: i64::from(h % 2 == 0),
                })
                .collect(),
            rules: vec![("low_score".into(), 12)],
            drones_top: vec![("drone-00001".into(), 3)],
            citizens_top: vec![(names.then(|| "Zoé \"Z\" #Test".to_string()), 2)],
            cells: vec![Cell {
                lat: 48.85,
                lon: 2.35,
                low: 4,
            }],
            week: (1..=7)
                .map(|d| PastDay {
                    day: NaiveDate::from_ymd_opt(2026, 1, 24 + d).unwrap(),
                    reports: 2000,
                    alerts: 10,
                })
                .collect(),
            health: Health {
                received: 2400,
                late: 2,
                delay_median: Some(0.4),
                delay_max: Some(700.0),
                ingest: crate::figures::IngestCounts::default(),
            },
        }
    }

    #[test]
    fn the_same_figures_give_the_same_pdf() {
        let a = pdf(&sample(true)).unwrap();
        assert!(a.starts_with(b"%PDF-"));
        assert_eq!(a, pdf(&sample(true)).unwrap());
        assert_ne!(a, pdf(&sample(false)).unwrap());
        let page = crate::html(&sample(false));
        assert!(page.contains("name withheld") && !page.contains("Zoé"));
        assert!(crate::html(&sample(true)).contains("Zoé &quot;Z&quot; #Test"));
    }
}
