//! What a node keeps on disk: the message store (segment files with group-committed fsync).
//! The metadata database lives with the metadata (`cluster::meta_store`).

pub mod message_store;
