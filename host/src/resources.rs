//! Resource alarms: the memory high-watermark and the free-disk limit. Past either, the
//! broker blocks publishing connections (connection.blocked) while consumers keep draining.
//!
//! Memory is the live heap the broker accounts for (`memory`), checked every 100 ms and by
//! each publishing connection between frames, so a burst is stopped near the watermark rather
//! than a second later. Each alarm clears only some way below its threshold (hysteresis), so
//! a broker hovering at the line does not block and unblock publishers on every tick.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Resource alarms: past them publishers are blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alarms {
    pub memory: bool,
    pub disk: bool,
}

impl Alarms {
    pub fn any(&self) -> bool {
        self.memory || self.disk
    }
    pub fn reason(&self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory and disk",
            (true, false) => "low on memory",
            (false, true) => "low on disk",
            _ => "",
        }
    }
}

/// Whoever holds the alarms (the broker): the monitor sets them, connections read them. A
/// trait, so that this module stays below the broker instead of importing it.
pub trait AlarmHolder: Send + Sync + 'static {
    fn alarms(&self) -> &watch::Sender<Alarms>;
    /// The memory watermark in bytes, as the monitor last set it.
    fn memory_limit(&self) -> &AtomicU64;
}

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

/// An alarm set at its threshold clears below this fraction of it (memory), or above the
/// threshold by this fraction's complement (disk: free space back to 110 % of the limit).
const CLEAR_AT: f64 = 0.9;
/// How often the memory count is looked at; the disk every tenth time.
const TICK: Duration = Duration::from_millis(100);

/// The memory the alarm is based on: live heap bytes when the counting allocator runs, else
/// the resident set size.
pub fn memory_used() -> u64 {
    crate::memory::allocated().unwrap_or_else(process_memory)
}

/// Raises the memory alarm at once if the accounted memory is past the watermark: called by
/// publishing connections between frames. Two atomic loads; without the counting allocator
/// (RSS would cost a file read per frame) the monitor's tick alone decides.
pub fn check_memory(holder: &dyn AlarmHolder) {
    let Some(used) = crate::memory::allocated() else {
        return;
    };
    let limit = holder.memory_limit().load(Ordering::Relaxed);
    if used > limit && !holder.alarms().borrow().memory {
        set_alarms(holder.alarms(), |a| a.memory = true);
    }
}

fn set_alarms(alarms: &watch::Sender<Alarms>, change: impl FnOnce(&mut Alarms)) {
    alarms.send_if_modified(|current| {
        let mut next = current.clone();
        change(&mut next);
        if *current == next {
            return false;
        }
        if next.any() {
            tracing::warn!(?next, "resource alarm set: blocking publishers");
        } else {
            tracing::info!("resource alarm cleared");
        }
        *current = next;
        true
    });
}

/// Whether an alarm that is `on` stays or goes on: set past `limit`, cleared only once
/// `value` is back on the safe side of the hysteresis band.
fn memory_alarm(on: bool, used: u64, limit: u64) -> bool {
    if on {
        used as f64 >= limit as f64 * CLEAR_AT
    } else {
        used > limit
    }
}

fn disk_alarm(on: bool, free: u64, limit: u64) -> bool {
    if on {
        (free as f64) < limit as f64 * (2.0 - CLEAR_AT)
    } else {
        free < limit
    }
}

pub async fn monitor(holder: Arc<dyn AlarmHolder>, limits: Limits) {
    holder
        .memory_limit()
        .store(limits.memory_bytes, Ordering::Relaxed);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut disk_free_now = disk_free(&limits.data_dir);
    loop {
        tick.tick().await;
        if n.is_multiple_of(10) {
            disk_free_now = disk_free(&limits.data_dir);
        }
        if n.is_multiple_of(50) {
            give_back_if_worth_it().await;
        }
        n += 1;
        let used = memory_used();
        set_alarms(holder.alarms(), |a| {
            a.memory = memory_alarm(a.memory, used, limits.memory_bytes);
            a.disk = disk_free_now.is_some_and(|f| disk_alarm(a.disk, f, limits.disk_free_bytes));
        });
    }
}

/// Hands freed heap back to the system once resident memory is well above the live heap
/// (after a burst was consumed), so that RSS, what an operator sees, follows it down.
async fn give_back_if_worth_it() {
    let Some(live) = crate::memory::allocated() else {
        return;
    };
    let rss = process_memory();
    if rss > live.saturating_mul(3) / 2 + (64 << 20) {
        let _ = tokio::task::spawn_blocking(crate::memory::give_back).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_alarm_clears_only_below_the_band() {
        assert!(!memory_alarm(false, 100, 100));
        assert!(memory_alarm(false, 101, 100));
        assert!(memory_alarm(true, 95, 100), "inside the band it stays on");
        assert!(memory_alarm(true, 90, 100));
        assert!(!memory_alarm(true, 89, 100));
    }

    #[test]
    fn the_disk_alarm_clears_only_above_the_band() {
        assert!(!disk_alarm(false, 100, 100));
        assert!(disk_alarm(false, 99, 100));
        assert!(disk_alarm(true, 105, 100), "inside the band it stays on");
        assert!(!disk_alarm(true, 111, 100));
    }
}
