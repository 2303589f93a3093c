//! Vigie's daily report: one tenant's day in a few charts and figures, as PDF or HTML, made
//! in-process and offline.
//!
//! ```text
//! SqlEngine (the tenant's tables) ─▶ figures::gather(day, time zone, names) ─▶ DayReport
//!   DayReport ─▶ pdf::pdf  ─ markup + SVG charts ─▶ typst (bundled fonts) ─▶ PDF bytes
//!   DayReport ─▶ html::html ─ the same tables and charts ─▶ one HTML page
//! schedule::run (vigie serve): each tenant's report of the day before, at its local hour,
//!   once (checkpoint) ─▶ mail::message (summary + PDF) ─▶ Outbox (SMTP, or .eml files)
//! ```
//! Rendering is a pure function of the figures: the same day's data gives the same bytes (the
//! PDF's identifier and date come from the tenant and the day, not from the clock). Citizens'
//! names are personal data: unless the request allows them, they never leave `gather`.

mod chart;
mod error;
pub mod figures;
mod html;
pub mod mail;
mod markup;
mod pdf;
pub mod schedule;

pub use crate::error::{Error, Result};
pub use crate::figures::{DayReport, ReportRequest, day_bounds, gather, time_zone};
pub use crate::html::html;
pub use crate::mail::{MailSettings, Outbox};
pub use crate::pdf::pdf;

/// The formats a report is made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A4 pages (the mail attachment).
    Pdf,
    /// One self-contained page.
    Html,
}

impl Format {
    /// Reads `pdf` or `html`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "pdf" => Ok(Format::Pdf),
            "html" => Ok(Format::Html),
            other => Err(Error::InvalidInput(format!(
                "unknown report format {other:?}: use pdf or html"
            ))),
        }
    }

    /// The report in this format.
    pub fn render(self, report: &DayReport) -> Result<Vec<u8>> {
        match self {
            Format::Pdf => pdf(report),
            Format::Html => Ok(html(report).into_bytes()),
        }
    }

    /// The file name extension of the rendering.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Html => "html",
        }
    }

    /// The media type of the rendering.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Html => "text/html; charset=utf-8",
        }
    }
}
