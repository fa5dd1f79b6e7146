//! The cluster: entities addressed by id, spread over runners by shard.
//!
//! - [`mailbox`]: the mailboxes of the entities a runner holds (residency, concurrency,
//!   capacity, passivation), as pure bookkeeping.

pub mod mailbox;
