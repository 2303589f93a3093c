//! The query runtime: the threads SQL runs on, apart from ingest and alert delivery.
//!
//! ```text
//! gRPC runtime (ingest, alerts, Flight SQL's RPCs)      query runtime (nice +15, one thread per core)
//!   Sessions::run / Sessions::stream ── spawn ──────────▶ planning, DataFusion's streams and the
//!        ◀── result | channel of 2 items ─────────────── tasks they spawn, Arrow IPC encoding
//!   deadline or shutdown: the task is aborted and the caller answers at once
//! ```
//! A query that keeps a core busy (a cross join, a regular expression over a huge string) then
//! competes for the CPU at a lower priority than ingest, so drones' acknowledgements and alerts
//! keep their latency; and it is the query's task that waits for the next yield point to stop, not
//! the RPC: the client gets its `DEADLINE_EXCEEDED` on time. At shutdown the runtime is let go
//! without waiting for its threads, so a busy query never holds the process up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};
use tokio::task::{JoinError, JoinHandle};

/// How much lower the query threads' CPU priority is (Linux nice increment): below ingest (0) and
/// below flushes and compaction (+10), which must keep the buffer draining while queries run.
const QUERY_NICE: i32 = 15;

/// A multi-threaded tokio runtime of its own for queries.
#[derive(Debug)]
pub struct QueryRuntime {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
}

impl QueryRuntime {
    /// Starts `threads` worker threads (at least one) at the query priority.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("vigie-query")
            .enable_all()
            .on_thread_start(|| vigie_engine::host::lower_thread_priority(QUERY_NICE))
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Mutex::new(Some(runtime)),
            handle,
        })
    }

    /// Runs `work` on the query runtime; dropping the returned handle aborts it.
    pub fn spawn<F>(&self, work: F) -> AbortOnDrop<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDrop(self.handle.spawn(work))
    }

    /// Stops the runtime without waiting for its threads: tasks are dropped at their next yield
    /// point, and new ones are dropped at once (their handles report cancellation).
    pub fn shutdown(&self) {
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids.
        self.shutdown();
    }
}

/// A task's handle that aborts the task when dropped: a query whose caller went away (deadline,
/// client gone, shutdown) stops instead of running on unseen.
#[derive(Debug)]
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_aborts_the_task_and_shutdown_does_not_wait() {
        let runtime = QueryRuntime::start(1).unwrap();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let task = runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flag.store(true, Ordering::SeqCst);
        });
        drop(task);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!finished.load(Ordering::SeqCst), "the aborted task ran on");

        assert_eq!(runtime.spawn(async { 7 }).await.unwrap(), 7);
        // A thread busy without yielding does not hold shutdown up.
        let busy = runtime.spawn(async { std::thread::sleep(Duration::from_secs(3)) });
        let started = std::time::Instant::now();
        runtime.shutdown();
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(busy);
        let late = runtime.spawn(async { 1 }).await;
        assert!(
            late.is_err_and(|e| e.is_cancelled()),
            "a shut-down runtime runs nothing"
        );
    }
}
