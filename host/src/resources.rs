//! Resource alarms: the memory high-watermark and the free-disk limit. Past either, the
//! broker blocks publishing connections (connection.blocked) while consumers keep draining.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Alarms, Broker};

pub struct Limits {
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
    pub data_dir: PathBuf,
}

/// Total RAM from /proc/meminfo (bytes), as RabbitMQ's vm_memory_monitor sees it.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}

/// Resident memory of this process.
pub fn process_memory() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * page)
        .unwrap_or(0)
}

/// Free bytes available to us on the filesystem holding `path`.
pub fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

pub async fn monitor(broker: Arc<Broker>, limits: Limits) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let memory = process_memory() > limits.memory_bytes;
        let disk = disk_free(&limits.data_dir).is_some_and(|f| f < limits.disk_free_bytes);
        let next = Alarms { memory, disk };
        broker.alarms.send_if_modified(|current| {
            if *current != next {
                if next.any() {
                    tracing::warn!(?next, "resource alarm set: blocking publishers");
                } else {
                    tracing::info!("resource alarm cleared");
                }
                *current = next.clone();
                true
            } else {
                false
            }
        });
    }
}
