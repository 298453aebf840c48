//! What a node keeps on disk: the message store (segment files with group-committed fsync).
//! The metadata database lives with the metadata (`meta::store`).

pub mod message_store;
