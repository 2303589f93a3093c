//! `vigie query`: a Flight SQL client for operators who live in a terminal.
//!
//! ```text
//! SQL (argument, or the prompt with history) ─▶ GetFlightInfo ─▶ DoGet per endpoint ─▶ table
//! ```
//! It speaks the same protocol as DBeaver or ADBC, so it works against any Flight SQL server.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Options of `vigie query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// The server: `grpc://host:port`, or `grpc+tls://host:port` for TLS.
    #[arg(long, env = "VIGIE_ENDPOINT", default_value = "grpc://127.0.0.1:50051")]
    endpoint: String,
    /// PEM certificate(s) to trust for `grpc+tls://` besides the system's (e.g. a self-signed
    /// server certificate).
    #[arg(long, env = "VIGIE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// User name for the Flight SQL handshake (Basic credentials, answered with a token).
    #[arg(long, env = "VIGIE_USER", requires = "password")]
    user: Option<String>,
    /// Password for `--user`; prefer the environment variable to keep it out of `ps`.
    #[arg(long, env = "VIGIE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A bearer token (API key) sent on every call instead of a handshake.
    #[arg(
        long,
        env = "VIGIE_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    token: Option<String>,
    /// The statement to run; without it, an interactive prompt (statements end with `;`).
    sql: Option<String>,
}

/// Connects, then runs one statement or the prompt.
pub(crate) async fn run(args: QueryArgs) -> Result<()> {
    let mut client = connect(&args).await?;
    match &args.sql {
        Some(sql) => {
            let batches = execute(&mut client, sql).await?;
            println!("{}", pretty_format_batches(&batches)?);
            Ok(())
        }
        None => prompt(client).await,
    }
}

async fn connect(args: &QueryArgs) -> Result<FlightSqlServiceClient<Channel>> {
    let (tls, rest) = if let Some(rest) = args.endpoint.strip_prefix("grpc+tls://") {
        (true, rest)
    } else if let Some(rest) = args.endpoint.strip_prefix("grpc://") {
        (false, rest)
    } else if let Some(rest) = args.endpoint.strip_prefix("grpc+tcp://") {
        (false, rest)
    } else {
        bail!(
            "--endpoint {} must start with grpc:// or grpc+tls://",
            args.endpoint
        );
    };
    let url = format!("{}://{rest}", if tls { "https" } else { "http" });
    let mut endpoint = Endpoint::from_shared(url)
        .with_context(|| format!("invalid --endpoint {}", args.endpoint))?;
    if tls {
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read --tls-ca {}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(config)
            .context("invalid TLS configuration")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.endpoint))?;
    let mut client = FlightSqlServiceClient::new(channel);
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        client
            .handshake(user, password)
            .await
            .context("the handshake was refused")?;
    }
    if let Some(token) = &args.token {
        client.set_token(token.clone());
    }
    Ok(client)
}

/// Runs `sql` and gathers every endpoint's batches.
async fn execute(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

/// The interactive prompt: statements end with `;`, history in `~/.vigie_history`.
async fn prompt(mut client: FlightSqlServiceClient<Channel>) -> Result<()> {
    use rustyline::error::ReadlineError;

    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".vigie_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    eprintln!("Connected. End statements with `;`, quit with \\q or Ctrl-D.");
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            "vigie> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if statement.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
                    break;
                }
                if trimmed.is_empty() {
                    continue;
                }
                statement.push_str(&line);
                statement.push('\n');
                if !trimmed.ends_with(';') {
                    continue;
                }
                let sql = std::mem::take(&mut statement);
                let _ = editor.add_history_entry(sql.trim());
                let started = Instant::now();
                match execute(&mut client, sql.trim().trim_end_matches(';')).await {
                    Ok(batches) => {
                        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                        println!("{}", pretty_format_batches(&batches)?);
                        eprintln!("{rows} row(s) in {:.3?}", started.elapsed());
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            Err(ReadlineError::Interrupted) => statement.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}
