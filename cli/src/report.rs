//! `vigie report`: one tenant's day as a PDF (or HTML) file, made here from the lake's
//! committed tables (safe while servers run: it only reads them, and appends one audit event).
//!
//! ```text
//! credentials ─▶ the tenant's report settings (time zone, names)
//! lake ─▶ Engine (no WAL, this tenant only) ─▶ SqlEngine ─▶ vigie_report::gather ─▶ pdf | html
//!      ─▶ --out (written whole, then renamed) ; audit_log += `report`
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use chrono_tz::Tz;
use vigie_engine::audit::{AuditEvent, append_committed};
use vigie_engine::store::{Lake, TenantName};
use vigie_engine::{Engine, EngineArgs, WalMode};
use vigie_report::{Format, ReportRequest};
use vigie_sql::SqlEngine;

use crate::admin::{Location, local_admin};

/// Options of `vigie report`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    location: Location,
    /// The tenant reported on.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// The day (`YYYY-MM-DD`, in the tenant's time zone) [default: yesterday there].
    #[arg(long)]
    day: Option<String>,
    /// Where to write the report.
    #[arg(long)]
    out: PathBuf,
    /// `pdf` or `html`.
    #[arg(long, default_value = "pdf")]
    format: String,
    /// A time zone instead of the tenant's setting (IANA name).
    #[arg(long)]
    tz: Option<String>,
}

/// The local day before today in `tz`.
pub(crate) fn yesterday(tz: Tz) -> NaiveDate {
    let today = chrono::Utc::now().with_timezone(&tz).date_naive();
    today.pred_opt().unwrap_or(today)
}

pub(crate) async fn run(args: ReportArgs) -> Result<()> {
    let format = Format::parse(&args.format)?;
    let config = args.location.resolve()?;
    let file = config
        .credential_store()
        .await?
        .load()
        .context("cannot read the credentials")?;
    let name = TenantName::new(&args.tenant)?;
    let settings = crate::serve::tenant_settings(&file)?
        .into_iter()
        .find(|t| t.name == name)
        .with_context(|| {
            format!(
                "there is no tenant {name}: see `vigie admin list`, or create it with \
                 `vigie admin create-tenant {name}`"
            )
        })?;
    let report_settings = file
        .tenants
        .get(name.as_str())
        .map(|t| t.report.clone())
        .unwrap_or_default();
    let tz = vigie_report::time_zone(
        args.tz
            .as_deref()
            .or(report_settings.time_zone.as_deref())
            .unwrap_or("UTC"),
    )?;
    let day = match &args.day {
        Some(day) => NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .map_err(|_| anyhow::anyhow!("--day {day:?} is not a date: use YYYY-MM-DD"))?,
        None => yesterday(tz),
    };
    let lake = Lake::open(&config.object_store)
        .with_context(|| format!("cannot open the lake at {}", config.object_store))?;
    let engine = Engine::open(EngineArgs::new(lake.clone(), WalMode::Off), vec![settings])
        .await
        .context("cannot open the tenant's tables")?;
    let tenant = engine
        .tenant(&name)
        .with_context(|| format!("tenant {name} did not open"))?;
    let sql = SqlEngine::new(tenant, &lake).await?;
    let report = vigie_report::gather(
        &sql,
        &ReportRequest {
            tenant: name.to_string(),
            day,
            time_zone: tz,
            names: report_settings.names,
        },
    )
    .await?;
    let bytes = format.render(&report)?;
    write_whole(&args.out, &bytes)?;
    let admin = local_admin("report-cli");
    let mut event = AuditEvent::now(&admin.name, admin.role.as_str(), "report");
    event.detail = Some(format!(
        "day {day} ({tz}), {}, names {}",
        args.format,
        if report_settings.names { "on" } else { "off" }
    ));
    append_committed(&lake, &name, &[event])
        .await
        .context("the report is written, but recording it in the audit_log failed")?;
    println!(
        "report of tenant {name} for {day} ({tz}): {} ({} bytes; {} reports, {} alerts)",
        args.out.display(),
        bytes.len(),
        report.reports,
        report.alerts
    );
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file beside it: a reader never sees half a file.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let Some(name) = path.file_name() else {
        bail!("--out {} names no file", path.display());
    };
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
