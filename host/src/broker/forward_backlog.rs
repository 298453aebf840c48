//! Credit flow for publishes forwarded to another node: the bytes one peer has been sent and
//! has not answered yet. The forwarder's queue is otherwise unbounded, so a publisher faster
//! than the owning node (its disk, its CPU) would grow the publishing node's memory until its
//! memory alarm. A publishing connection that pushes the backlog past `HIGH` stops reading
//! from its socket until the owner's answers bring it under `LOW` (RabbitMQ's credit flow,
//! which puts such a connection in the `flow` state).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Unanswered bytes at which publishers to the peer wait: sixteen full batches of 4 KiB
/// messages, well past what four batches in flight need to keep the link busy.
pub const HIGH: u64 = 16 << 20;
/// Publishers go on once the backlog falls under this.
pub const LOW: u64 = 4 << 20;
/// The longest a publisher waits: the forwarder answers or refuses every batch within its
/// timeouts, so a longer wait means its task is gone, and the publisher is not held for it.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Backlog {
    bytes: AtomicU64,
    drained: Notify,
}

impl Backlog {
    /// Counts `bytes` sent on; true if the backlog is now at or past `HIGH`.
    pub fn charge(&self, bytes: u64) -> bool {
        self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes >= HIGH
    }

    /// Takes back `bytes` answered (or refused); wakes the waiting publishers when the
    /// backlog falls under `LOW`.
    pub fn release(&self, bytes: u64) {
        let before = self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        if before >= LOW && before.saturating_sub(bytes) < LOW {
            self.drained.notify_waiters();
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Returns once the backlog is under `LOW`, or after `MAX_WAIT`; false on the timeout.
    pub async fn drained(&self) -> bool {
        self.drained_within(MAX_WAIT).await
    }

    async fn drained_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                // Registered before the check, so a release between the two is not missed.
                notified.as_mut().enable();
                if self.bytes() < LOW {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_publisher_past_the_high_mark_goes_on_once_answers_bring_it_under_the_low_mark() {
        let backlog = Arc::new(Backlog::default());
        assert!(!backlog.charge(HIGH - 1));
        assert!(backlog.charge(1));
        let waiter = tokio::spawn({
            let b = backlog.clone();
            async move { b.drained().await }
        });
        tokio::task::yield_now().await;
        // Answers that leave it above the low mark do not let the publisher go.
        backlog.release(HIGH - LOW);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        backlog.release(1);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(backlog.bytes(), LOW - 1);
    }

    #[tokio::test]
    async fn a_backlog_nobody_answers_holds_a_publisher_no_longer_than_the_bound() {
        let backlog = Backlog::default();
        backlog.charge(HIGH);
        assert!(!backlog.drained_within(Duration::from_millis(50)).await);
        backlog.release(HIGH);
        assert!(backlog.drained_within(Duration::from_millis(50)).await);
    }
}
