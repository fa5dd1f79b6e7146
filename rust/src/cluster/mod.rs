//! The cluster: entities addressed by id, spread over runners by shard.
//!
//! - [`mailbox`]: the mailboxes of the entities a runner holds (residency, concurrency,
//!   capacity, passivation), as pure bookkeeping.
//! - [`sharding`]: a runner's membership of a cluster on PostgreSQL: registration, the rings,
//!   shard leases acquired, renewed and released, the store's notifications.

pub mod mailbox;
pub mod sharding;
