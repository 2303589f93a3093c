//! The report by mail: a short text summary with the PDF attached, sent over SMTP (STARTTLS or
//! TLS; clear text only to a loopback relay) or, for a dry run, written as `.eml` files.
//!
//! ```text
//! DayReport + PDF ─▶ message (fixed Message-ID per tenant and day) ─▶ Outbox::Smtp (lettre)
//!                                                                 └▶ Outbox::Dir (dry run)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::markup::change;
use crate::{DayReport, Error, Result};

/// Where reports are mailed from and through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSettings {
    /// `smtp://host[:587]` (STARTTLS required), `smtps://host[:465]` (TLS), or
    /// `smtp://127.0.0.1:PORT?tls=none` (clear text: loopback relays only).
    pub url: String,
    /// The sender, `Name <address>` or `address`.
    pub from: String,
    /// SMTP credentials (`VIGIE_SMTP_USER`, `VIGIE_SMTP_PASSWORD`).
    pub credentials: Option<(String, String)>,
    /// A dry run: mails are written as `.eml` files in this directory instead of being sent.
    pub dry_run: Option<PathBuf>,
}

impl MailSettings {
    /// The sender when none is set.
    pub const DEFAULT_FROM: &'static str = "Vigie <vigie@localhost>";
}

/// A failed send; `permanent` when the server refused the mail itself (5xx), which a retry of
/// the same mail will not change.
#[derive(Debug)]
pub struct SendError {
    /// Whether retrying is pointless until something changes.
    pub permanent: bool,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Sends mails.
#[derive(Debug)]
pub enum Outbox {
    /// Through an SMTP server.
    Smtp(Box<AsyncSmtpTransport<Tokio1Executor>>),
    /// Into a directory (dry run).
    Dir(PathBuf),
}

impl Outbox {
    /// The outbox `settings` describe; a URL it cannot use is an error that says why. Must be
    /// called inside a Tokio runtime.
    pub fn new(settings: &MailSettings) -> Result<Self> {
        if let Some(dir) = &settings.dry_run {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::InvalidInput(format!("cannot create {}: {e}", dir.display()))
            })?;
            return Ok(Outbox::Dir(dir.clone()));
        }
        let bad = |why: String| Error::InvalidInput(format!("--smtp-url {}: {why}", settings.url));
        let url = url::Url::parse(&settings.url).map_err(|e| bad(e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| bad("no host".into()))?
            .to_string();
        let tls_param = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let parameters = || TlsParameters::new(host.clone()).map_err(|e| bad(e.to_string()));
        let (tls, port) = match (url.scheme(), tls_param.as_deref()) {
            ("smtps", None) => (Tls::Wrapper(parameters()?), 465),
            ("smtp", None | Some("required")) => (Tls::Required(parameters()?), 587),
            ("smtp", Some("none")) => {
                let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]");
                if !loopback {
                    return Err(bad(
                        "clear text (tls=none) is refused except to a loopback relay: reports \
                         hold personal data"
                            .into(),
                    ));
                }
                (Tls::None, 25)
            }
            (scheme, tls) => {
                return Err(bad(format!(
                    "use smtp:// (STARTTLS) or smtps:// (TLS), not {scheme}:// with tls={tls:?}"
                )));
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(url.port().unwrap_or(port))
            .tls(tls)
            .timeout(Some(Duration::from_secs(60)));
        if let Some((user, password)) = &settings.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Outbox::Smtp(Box::new(builder.build())))
    }

    /// Sends `message` (or writes it, `<name>.eml`, on a dry run).
    pub async fn send(&self, name: &str, message: Message) -> std::result::Result<(), SendError> {
        match self {
            Outbox::Smtp(transport) => {
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| SendError {
                        permanent: e.is_permanent(),
                        message: e.to_string(),
                    })
            }
            Outbox::Dir(dir) => {
                let path = dir.join(format!("{name}.eml"));
                std::fs::write(&path, message.formatted()).map_err(|e| SendError {
                    permanent: false,
                    message: format!("cannot write {}: {e}", path.display()),
                })
            }
        }
    }
}

/// The mail of `report`: a summary in the body, `pdf` attached.
pub fn message(report: &DayReport, pdf: Vec<u8>, from: &str, to: &[String]) -> Result<Message> {
    let mailbox = |a: &str| {
        a.parse::<Mailbox>()
            .map_err(|e| Error::InvalidInput(format!("mail address {a:?}: {e}")))
    };
    let mut builder = Message::builder()
        .from(mailbox(from)?)
        .subject(format!(
            "Vigie daily report: {}, {}",
            report.tenant, report.day
        ))
        .message_id(Some(format!(
            "<vigie-report-{}-{}@vigie>",
            report.tenant, report.day
        )));
    for address in to {
        builder = builder.to(mailbox(address)?);
    }
    let name = format!("vigie-{}-{}.pdf", report.tenant, report.day);
    builder
        .multipart(
            MultiPart::mixed()
                .boundary("vigiereportboundary0001")
                .singlepart(SinglePart::plain(summary(report)))
                .singlepart(Attachment::new(name).body(
                    pdf,
                    ContentType::parse("application/pdf").expect("a valid media type"),
                )),
        )
        .map_err(|e| Error::InvalidInput(format!("cannot build the mail: {e}")))
}

/// The mail's text: the day's main figures (what the PDF shows, in a few lines).
pub fn summary(r: &DayReport) -> String {
    let before_reports: Vec<i64> = r.week.iter().map(|d| d.reports).collect();
    let before_alerts: Vec<i64> = r.week.iter().map(|d| d.alerts).collect();
    let rules: Vec<String> = r.rules.iter().map(|(n, c)| format!("{n} {c}")).collect();
    format!(
        "Vigie daily report of {} for {}\nPeriod: {}\n\n\
         Reports: {} from {} drones ({} against the mean of the 7 days before)\n\
         Alerts: {} ({}; {} against the mean)\n\
         Citizens with an alert: {}\n\n\
         The report is attached as a PDF.\n",
        r.tenant,
        r.day,
        r.period,
        r.reports,
        r.drones,
        change(r.reports, &before_reports),
        r.alerts,
        if rules.is_empty() {
            "none".to_string()
        } else {
            rules.join(", ")
        },
        change(r.alerts, &before_alerts),
        r.alerted_citizens,
    )
}
