//! The owner's memory of forwarded publish batches, so that a batch sent again (its answer
//! was lost with a link, or came too late) is answered from the first run instead of being
//! enqueued twice. That is what lets the forwarding node resend before it nacks, and keeps a
//! nack meaning "not enqueued".

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use tokio::sync::watch;

/// Batches remembered per sending node: far more than a forwarder has in flight (four).
const REMEMBERED: usize = 64;

/// A batch's answer: one verdict per message, once it is known.
type Answer = watch::Receiver<Option<Vec<bool>>>;

/// What [`ForwardLedger::admit`] decides for a batch.
pub enum Admission {
    /// Not seen before: the caller runs it and reports through `done`.
    First(watch::Sender<Option<Vec<bool>>>),
    /// Seen: its answer (perhaps still being worked out).
    Seen(Answer),
}

#[derive(Default)]
pub struct ForwardLedger {
    senders: Mutex<HashMap<String, VecDeque<(u64, Answer)>>>,
}

impl ForwardLedger {
    pub fn admit(&self, from: &str, batch: u64) -> Admission {
        let mut senders = self.senders.lock();
        let log = senders.entry(from.to_string()).or_default();
        if let Some((_, answer)) = log.iter().find(|(id, _)| *id == batch) {
            return Admission::Seen(answer.clone());
        }
        let (tx, rx) = watch::channel(None);
        if log.len() == REMEMBERED {
            log.pop_front();
        }
        log.push_back((batch, rx));
        Admission::First(tx)
    }
}

/// Waits for a batch's answer; a run that ended without one refused everything (`n` items).
pub async fn answer_of(mut answer: Answer, n: usize) -> Vec<bool> {
    match answer.wait_for(Option::is_some).await {
        Ok(a) => a.clone().unwrap_or_default(),
        Err(_) => vec![false; n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_sent_again_gets_the_first_answer() {
        let ledger = ForwardLedger::default();
        let Admission::First(done) = ledger.admit("a@h", 7) else {
            panic!("a new batch was taken for a repeat");
        };
        // The repeat arrives while the first run is still working.
        let Admission::Seen(pending) = ledger.admit("a@h", 7) else {
            panic!("a repeat was run again");
        };
        let waiter = tokio::spawn(answer_of(pending, 2));
        done.send_replace(Some(vec![true, false]));
        assert_eq!(waiter.await.unwrap(), vec![true, false]);
        // Another sender's batch 7 is its own.
        assert!(matches!(ledger.admit("b@h", 7), Admission::First(_)));
    }

    #[tokio::test]
    async fn a_run_that_died_refuses_its_repeat() {
        let ledger = ForwardLedger::default();
        let Admission::First(done) = ledger.admit("a@h", 1) else {
            panic!()
        };
        drop(done);
        let Admission::Seen(answer) = ledger.admit("a@h", 1) else {
            panic!()
        };
        assert_eq!(answer_of(answer, 3).await, vec![false; 3]);
    }

    #[test]
    fn only_recent_batches_are_remembered() {
        let ledger = ForwardLedger::default();
        for id in 0..(REMEMBERED as u64 + 1) {
            assert!(matches!(ledger.admit("a@h", id), Admission::First(_)));
        }
        assert!(matches!(ledger.admit("a@h", 0), Admission::First(_)));
        assert!(matches!(
            ledger.admit("a@h", REMEMBERED as u64),
            Admission::Seen(_)
        ));
    }
}
