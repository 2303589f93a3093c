//! Facts about the machine that memory defaults are derived from, and the CPU priority of the
//! threads that must yield to ingest (flushes, queries).

/// The machine's memory in bytes (Linux `/proc/meminfo`), `None` when unknown.
pub fn memory_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<usize>()
        .ok()?;
    kib.checked_mul(1024)
}

/// A fraction `1/divisor` of the machine's memory, or `fallback` when it is unknown.
pub fn memory_share(divisor: usize, fallback: usize) -> usize {
    memory_bytes().map_or(fallback, |m| m / divisor.max(1))
}

/// Lowers the calling thread's CPU priority by `nice` (Linux: nice values are per thread); a
/// no-op elsewhere.
pub fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; on Linux, PRIO_PROCESS with `who = 0`
    // names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_machine_has_memory() {
        let total = super::memory_bytes();
        if cfg!(target_os = "linux") {
            assert!(total.is_some_and(|m| m >= 64 << 20), "{total:?}");
        }
        assert_eq!(super::memory_share(4, 7), total.map_or(7, |m| m / 4));
    }
}
