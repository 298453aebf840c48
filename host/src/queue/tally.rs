//! Running totals over a set of a queue's entries (its ready messages, its unacknowledged
//! ones), kept as entries come and go so that listing a queue costs nothing per message.

use super::Entry;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub count: usize,
    /// Body bytes, as RabbitMQ counts `message_bytes`.
    pub bytes: u64,
    /// Messages published with delivery mode 2.
    pub persistent: usize,
    /// Heap bytes the entries hold (see `Message::footprint`).
    pub memory: u64,
}

impl Tally {
    pub fn add(&mut self, e: &Entry) {
        self.count += 1;
        self.bytes += e.msg.size() as u64;
        self.persistent += usize::from(e.msg.persistent());
        self.memory += entry_memory(e);
    }

    pub fn remove(&mut self, e: &Entry) {
        debug_assert!(self.count > 0, "removing from an empty tally");
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(e.msg.size() as u64);
        self.persistent = self
            .persistent
            .saturating_sub(usize::from(e.msg.persistent()));
        self.memory = self.memory.saturating_sub(entry_memory(e));
    }
}

fn entry_memory(e: &Entry) -> u64 {
    std::mem::size_of::<Entry>() as u64 + e.msg.footprint()
}
