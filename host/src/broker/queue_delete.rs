//! queue.delete on the node that holds the queue: the if-unused / if-empty checks and the
//! message count are only true where the queue lives, so a delete through another node is
//! sent here (`queue_delete` on the dist port) and answered with what this node measured.

use serde::{Deserialize, Serialize};

use super::Broker;
use crate::meta::MetaError;
use crate::meta::command::MetaCommand;

/// A delete as it crosses to the owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub vhost: String,
    pub name: String,
    pub if_unused: bool,
    pub if_empty: bool,
}

/// Why the owner did not delete.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum DeleteRefusal {
    /// if-unused, and it has consumers.
    InUse,
    /// if-empty, and it has ready messages (RabbitMQ's is_empty looks at those only).
    NotEmpty,
    /// The queue is not served here (it moved, or this node does not hold it).
    NotHere,
    /// The metadata change failed (no quorum, say): its text.
    Failed(String),
}

impl DeleteRefusal {
    fn from_meta(e: MetaError) -> Self {
        DeleteRefusal::Failed(e.to_string())
    }
}

impl Broker {
    /// Deletes a queue this node serves after the flag checks; the number of ready
    /// messages it held. A queue whose record is already gone counts as deleted.
    pub async fn delete_local_queue(&self, req: &DeleteRequest) -> Result<u32, DeleteRefusal> {
        let Some(q) = self.vhost(&req.vhost).and_then(|v| v.queue(&req.name)) else {
            return Err(DeleteRefusal::NotHere);
        };
        let s = q.stats();
        if req.if_unused && s.consumers > 0 {
            return Err(DeleteRefusal::InUse);
        }
        if req.if_empty && s.messages_ready > 0 {
            return Err(DeleteRefusal::NotEmpty);
        }
        let count = s.messages_ready as u32;
        match self
            .meta
            .submit(MetaCommand::DeleteQueue {
                vhost: req.vhost.clone(),
                name: req.name.clone(),
            })
            .await
        {
            Ok(_) | Err(MetaError::NotFound(_)) => Ok(count),
            Err(e) => Err(DeleteRefusal::from_meta(e)),
        }
    }
}
