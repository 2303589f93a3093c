//! `vigie admin`: tenants, users and API keys, in the data dir's credentials file or, in
//! cluster mode, the bucket every node shares (safe while servers run: they apply a change
//! within a second).
//!
//! ```text
//! vigie admin create-… ─▶ vigie_auth::update ─▶ <data-dir>/auth.json (locked, atomic)
//!                      │                      └▶ --stream: bucket <prefix>-auth (per record, CAS)
//!                      └▶ audit::append_committed ─▶ the tenant's audit_log (one Delta commit)
//! ```

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use vigie_auth::{CredentialStore, Principal, Role, update};
use vigie_engine::audit::{AuditEvent, append_committed};
use vigie_engine::store::{Lake, TenantName};

use crate::config::{Config, ServeArgs};

/// Where a command beside the server finds its credentials and lake: `vigie serve`'s options
/// that say so (`vigie admin`, `vigie report`).
#[derive(Debug, clap::Args)]
pub(crate) struct Location {
    /// TOML file of `vigie serve` (its data dir and object store are used).
    #[arg(long, env = "VIGIE_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// The server's data directory (holds `auth.json`) [default: ./vigie-data].
    #[arg(long, env = "VIGIE_DATA_DIR", global = true)]
    data_dir: Option<std::path::PathBuf>,
    /// The server's lake, where each tenant's tables and `audit_log` are
    /// [default: file://<data-dir>/lake].
    #[arg(long, env = "VIGIE_OBJECT_STORE", global = true)]
    object_store: Option<String>,
    /// Cluster mode: the NATS servers of `vigie serve --stream`; the credentials are the
    /// cluster's, in its bucket `<prefix>-auth`, rather than the data dir's.
    #[arg(long, env = "VIGIE_STREAM", global = true)]
    stream: Option<String>,
    /// Cluster mode: replicas of the credentials bucket if this command creates it [default: 3].
    #[arg(long, env = "VIGIE_STREAM_REPLICAS", global = true)]
    stream_replicas: Option<usize>,
    /// Cluster mode: the deployment's `--stream-prefix` [default: vigie].
    #[arg(long, env = "VIGIE_STREAM_PREFIX", global = true)]
    stream_prefix: Option<String>,
    /// NATS user (with `VIGIE_STREAM_PASSWORD`).
    #[arg(long, env = "VIGIE_STREAM_USER", global = true)]
    stream_user: Option<String>,
    /// NATS password of `--stream-user`.
    #[arg(
        long,
        env = "VIGIE_STREAM_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    stream_password: Option<String>,
    /// NATS token.
    #[arg(
        long,
        env = "VIGIE_STREAM_TOKEN",
        global = true,
        hide_env_values = true
    )]
    stream_token: Option<String>,
    /// PEM root certificates to trust for `tls://` NATS servers.
    #[arg(long, env = "VIGIE_STREAM_TLS_CA", global = true)]
    stream_tls_ca: Option<std::path::PathBuf>,
}

impl Location {
    /// `vigie serve`'s configuration with these options (and the file's, if any).
    pub(crate) fn resolve(self) -> Result<Config> {
        Config::resolve(ServeArgs {
            config: self.config,
            data_dir: self.data_dir,
            object_store: self.object_store,
            stream: self.stream,
            stream_replicas: self.stream_replicas,
            stream_prefix: self.stream_prefix,
            stream_user: self.stream_user,
            stream_password: self.stream_password,
            stream_token: self.stream_token,
            stream_tls_ca: self.stream_tls_ca,
            ..ServeArgs::default()
        })
    }
}

/// The person running a command beside the server, as the audit log names them.
pub(crate) fn local_admin(tool: &str) -> Principal {
    Principal {
        tenant: TenantName::default_tenant(),
        role: Role::Admin,
        name: format!(
            "{tool}:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ),
    }
}

/// Options of `vigie admin`.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    location: Location,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// Create a tenant (a police force): its own tables, WAL, retention and alert rules.
    CreateTenant {
        /// Lowercase letters, digits, `_` and `-`.
        name: String,
        /// Delete the tenant's whole days older than this (overrides the server's --retention).
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<Duration>,
        /// The tenant's alert rule `NAME=EXPR` (repeatable; replaces the server's rules).
        #[arg(long = "alert-rule")]
        alert_rules: Vec<String>,
    },
    /// Create a user who logs in with a password, read from the first line of stdin.
    CreateUser {
        /// The user's tenant.
        #[arg(long)]
        tenant: String,
        /// `analyst` (SQL and alerts) or `admin` (also the audit log).
        #[arg(long)]
        role: String,
        /// The user name, unique across tenants.
        name: String,
    },
    /// Replace a user's password, read from the first line of stdin.
    SetPassword {
        /// The user name.
        name: String,
    },
    /// Remove a user; their open sessions end within a second.
    DeleteUser {
        /// The user name.
        name: String,
    },
    /// Create an API key (sent as `authorization: Bearer <key>`); printed once, alone on the
    /// last line.
    CreateKey {
        /// The key's tenant.
        #[arg(long)]
        tenant: String,
        /// `drone` (may only send reports) or `analyst`.
        #[arg(long)]
        role: String,
    },
    /// Revoke an API key by its id (see `list`); servers refuse it within a second.
    RevokeKey {
        /// The key's id.
        id: String,
    },
    /// Set a tenant's daily report: its time zone, whether it names citizens, who receives it
    /// and when (options not given stay as they are).
    SetReport {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Recipients, comma-separated (`a@x,b@y`); `--to ''` stops the mails.
        #[arg(long)]
        to: Option<String>,
        /// Local time of the mail of the day before, `HH:MM` [default when mailing: 06:00].
        #[arg(long)]
        at: Option<String>,
        /// The tenant's time zone (IANA name, e.g. `Europe/Paris`); reports cover its days.
        #[arg(long)]
        tz: Option<String>,
        /// Whether reports name citizens (`on`) or only count them (`off`, the default).
        #[arg(long, value_parser = ["on", "off"])]
        names: Option<String>,
    },
    /// List tenants, users and keys (never secrets).
    List,
}

pub(crate) async fn run(args: AdminArgs) -> Result<()> {
    let config = args.location.resolve()?;
    let store = config.credential_store().await?;
    let store = store.as_ref();
    let admin = local_admin("admin-cli");
    let mut out = std::io::stdout().lock();
    let (tenant, action, detail) = match args.command {
        AdminCommand::CreateTenant {
            name,
            retention,
            alert_rules,
        } => {
            for rule in &alert_rules {
                crate::config::parse_rule(rule)?;
            }
            let tenant = update(store, |f| {
                f.create_tenant(&name, retention, alert_rules.clone())
            })
            .await?;
            writeln!(out, "created tenant {tenant}")?;
            (tenant, "create-tenant", format!("tenant {name}"))
        }
        AdminCommand::CreateUser { tenant, role, name } => {
            let role: Role = role.parse()?;
            let password = read_password()?;
            update(store, |f| f.create_user(&tenant, &name, role, &password)).await?;
            writeln!(out, "created {role} {name} in tenant {tenant}")?;
            (
                TenantName::new(&tenant)?,
                "create-user",
                format!("user {name} ({role})"),
            )
        }
        AdminCommand::SetPassword { name } => {
            let password = read_password()?;
            let tenant = update(store, |f| f.set_password(&name, &password)).await?;
            writeln!(out, "changed the password of {name} (tenant {tenant})")?;
            (tenant, "set-password", format!("user {name}"))
        }
        AdminCommand::DeleteUser { name } => {
            let tenant = update(store, |f| f.delete_user(&name)).await?;
            writeln!(out, "deleted user {name} of tenant {tenant}")?;
            (tenant, "delete-user", format!("user {name}"))
        }
        AdminCommand::CreateKey { tenant, role } => {
            let role: Role = role.parse()?;
            let (id, key) = update(store, |f| f.create_key(&tenant, role)).await?;
            writeln!(
                out,
                "created {role} key {id} in tenant {tenant}; it is shown only now:"
            )?;
            writeln!(out, "{key}")?;
            (
                TenantName::new(&tenant)?,
                "create-key",
                format!("key {id} ({role})"),
            )
        }
        AdminCommand::RevokeKey { id } => {
            let tenant = update(store, |f| f.revoke_key(&id)).await?;
            writeln!(out, "revoked key {id} of tenant {tenant}")?;
            (tenant, "revoke-key", format!("key {id}"))
        }
        AdminCommand::SetReport {
            tenant,
            to,
            at,
            tz,
            names,
        } => {
            let to = to.map(|to| check_recipients(&to)).transpose()?;
            let at = at.map(|at| check_time_of_day(&at)).transpose()?;
            if let Some(tz) = &tz {
                vigie_report::time_zone(tz)?;
            }
            let names = names.map(|n| n == "on");
            let (tenant, settings) = update(store, |f| {
                let mut settings = vigie_auth::ReportSettings::default();
                let tenant = f.set_report(&tenant, |r| {
                    if let Some(to) = &to {
                        r.to = to.clone();
                    }
                    if at.is_some() {
                        r.at = at.clone();
                    }
                    if tz.is_some() {
                        r.time_zone = tz.clone();
                    }
                    if let Some(names) = names {
                        r.names = names;
                    }
                    settings = r.clone();
                })?;
                Ok((tenant, settings))
            })
            .await?;
            let detail = report_settings_line(&settings);
            writeln!(out, "report of tenant {tenant}: {detail}")?;
            (tenant, "set-report", detail)
        }
        AdminCommand::List => return list(store, &mut out),
    };
    let lake = Lake::open(&config.object_store)
        .with_context(|| format!("cannot open the lake at {}", config.object_store))?;
    let mut event = AuditEvent::now(&admin.name, admin.role.as_str(), action);
    event.detail = Some(detail);
    append_committed(&lake, &tenant, &[event])
        .await
        .with_context(|| {
            format!("the change is made, but recording it in {tenant}'s audit_log failed")
        })?;
    Ok(())
}

/// Recipients as `vigie admin set-report --to` takes them: comma-separated mail addresses.
fn check_recipients(to: &str) -> Result<Vec<String>> {
    to.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (local, domain) = a.split_once('@').unwrap_or_default();
            if local.is_empty() || domain.is_empty() || a.contains(char::is_whitespace) {
                anyhow::bail!("{a:?} is not a mail address (name@domain)");
            }
            Ok(a.to_string())
        })
        .collect()
}

/// A local time of day, `HH:MM`.
fn check_time_of_day(at: &str) -> Result<String> {
    chrono::NaiveTime::parse_from_str(at, "%H:%M")
        .map(|t| t.format("%H:%M").to_string())
        .map_err(|_| anyhow::anyhow!("--at {at:?} is not a time of day: use HH:MM, e.g. 06:00"))
}

fn report_settings_line(r: &vigie_auth::ReportSettings) -> String {
    format!(
        "time zone {}, names {}, to {}, at {}",
        r.time_zone.as_deref().unwrap_or("UTC"),
        if r.names { "on" } else { "off" },
        if r.to.is_empty() {
            "nobody".to_string()
        } else {
            r.to.join(",")
        },
        r.at.as_deref().unwrap_or("06:00")
    )
}

/// The password: the first line of stdin (prompted for on a terminal).
fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!(
            "password (at least {} characters): ",
            vigie_auth::MIN_PASSWORD_CHARS
        );
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn list(store: &dyn CredentialStore, out: &mut impl Write) -> Result<()> {
    let file = store.load()?;
    writeln!(out, "tenants:")?;
    for (name, t) in &file.tenants {
        let retention = t.retention.map_or("server default".to_string(), |r| {
            humantime::format_duration(r).to_string()
        });
        writeln!(
            out,
            "  {name}  created={}  retention={retention}  rules={}",
            t.created_at,
            if t.alert_rules.is_empty() {
                "server default".to_string()
            } else {
                t.alert_rules.join("; ")
            }
        )?;
        writeln!(out, "    report: {}", report_settings_line(&t.report))?;
    }
    writeln!(out, "users:")?;
    for u in &file.users {
        writeln!(
            out,
            "  {}  tenant={}  role={}  created={}",
            u.name, u.tenant, u.role, u.created_at
        )?;
    }
    writeln!(out, "keys:")?;
    for k in &file.keys {
        writeln!(
            out,
            "  {}  tenant={}  role={}  created={}  {}",
            k.id,
            k.tenant,
            k.role,
            k.created_at,
            k.revoked_at
                .as_ref()
                .map_or("active".to_string(), |r| format!("revoked={r}"))
        )?;
    }
    Ok(())
}
