//! The cluster: entities addressed by id, spread over runners by shard.
//!
//! - [`mailbox`]: the mailboxes of the entities a runner holds (residency, concurrency,
//!   capacity, passivation), as pure bookkeeping.
//! - [`sharding`]: a runner's membership of a cluster on PostgreSQL: registration, the rings,
//!   shard leases acquired, renewed and released, the store's notifications.
//! - [`transport`]: volatile requests, their replies and interrupts between runners (HTTP/2).

pub mod mailbox;
pub mod sharding;
pub mod transport;
