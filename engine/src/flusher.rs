//! The engine's background loops: the flusher (buffers → Delta, audit events every second) and
//! maintenance (retention, compaction, vacuum), each an interval + `select!` on a shutdown token.
//!
//! ```text
//! every --flush-interval, or a table at --flush-rows ─▶ Engine::flush_all ─▶ Tenant::flush each
//!     failure: rows stay buffered (and in the WAL), retried with backoff up to 30 s
//! every second ─▶ Engine::flush_audit; shutdown ─▶ one last flush_all
//! every --compact-interval ─▶ Engine::maintain_all ─▶ compaction::maintain per table
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::schema::TableKind;
use crate::store::TenantName;
use crate::{Engine, Result, compaction};

/// How often buffered audit events are committed.
const AUDIT_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Longest wait between two attempts of a failing flush.
const MAX_FLUSH_BACKOFF: Duration = Duration::from_secs(30);

impl Engine {
    /// Flushes every table of every tenant once; returns the rows written. Stops at the first error
    /// (the unflushed rows stay buffered).
    pub async fn flush_all(&self) -> Result<usize> {
        let started = std::time::Instant::now();
        let rows = self.flush_tenants().await;
        metrics::histogram!("vigie_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("vigie_buffered_bytes").set(self.gauge.load(Ordering::Relaxed) as f64);
        if rows.is_err() {
            metrics::counter!("vigie_flush_failures_total").increment(1);
        }
        rows
    }

    async fn flush_tenants(&self) -> Result<usize> {
        let mut rows = 0;
        for tenant in self.tenants() {
            rows += tenant
                .flush()
                .await
                .inspect_err(|_| tenant.stats.add(|c| c.flush_failures += 1))?;
        }
        Ok(rows)
    }

    /// Commits the buffered audit events of every tenant (failures are logged; the events stay
    /// buffered for the next try).
    pub async fn flush_audit(&self) {
        for tenant in self.tenants() {
            if let Err(e) = tenant.flush_audit().await {
                warn!(tenant = %tenant.name(), error = %e, "cannot commit the audit log; retried");
            }
        }
    }

    /// Starts the background flusher: every `flush_interval`, or sooner when a table holds
    /// `flush_rows`. On `shutdown` it flushes one last time and ends.
    pub fn start_flusher(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<Result<()>> {
        let engine = self.clone();
        tokio::spawn(async move {
            let period = engine.args.flush_interval;
            // The first flush is one period after start, not at once.
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut audit_ticker = tokio::time::interval(AUDIT_FLUSH_PERIOD);
            audit_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                    _ = engine.flush_now.notified() => {}
                    _ = audit_ticker.tick() => {
                        engine.flush_audit().await;
                        continue;
                    }
                }
                match engine.flush_all().await {
                    Ok(_) => backoff = Duration::from_secs(1),
                    Err(e) => {
                        error!(error = %e, retry_in = ?backoff, "flush failed; the rows stay buffered (and in the WAL) and are retried");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_FLUSH_BACKOFF);
                    }
                }
            }
            info!("flushing before shutdown");
            for tenant in engine.tenants() {
                tenant.stats.stage_all_next();
            }
            let rows = engine.flush_all().await.inspect_err(|e| {
                warn!(error = %e, "final flush failed; the WAL keeps the rows for the next start");
            })?;
            info!(rows, "final flush done");
            Ok(())
        })
    }

    /// Runs retention, compaction and vacuum on every table of every tenant this node owns
    /// once (in cluster mode each tenant's owner maintains it; followers read its commits).
    pub async fn maintain_all(
        &self,
        args: &compaction::MaintenanceArgs,
    ) -> Result<Vec<(TenantName, TableKind, compaction::MaintenanceReport)>> {
        let mut reports = Vec::new();
        for tenant in self.tenants().into_iter().filter(|t| t.is_owner()) {
            let args = compaction::MaintenanceArgs {
                retention: tenant.retention.or(args.retention),
                ..args.clone()
            };
            for (_, table) in tenant.tables() {
                let report = compaction::maintain(self.lake(), table, &args).await?;
                reports.push((tenant.name().clone(), table.kind(), report));
            }
        }
        Ok(reports)
    }

    /// Starts background maintenance: every `every`, [`Engine::maintain_all`] with `args`
    /// (`now` taken at each run). Failures are logged and retried at the next period.
    pub fn start_maintenance(
        self: &Arc<Self>,
        every: Duration,
        args: compaction::MaintenanceArgs,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let args = compaction::MaintenanceArgs {
                    now: chrono::Utc::now(),
                    ..args.clone()
                };
                let run = engine.maintain_all(&args);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    result = run => match result {
                        Ok(reports) => {
                            for (tenant, kind, r) in reports {
                                if r != compaction::MaintenanceReport::default() {
                                    info!(%tenant, table = kind.name(), ?r, "maintenance done");
                                }
                            }
                        }
                        Err(e) => error!(error = %e, "maintenance failed; retried at the next period"),
                    }
                }
            }
        })
    }
}
