//! Timers: the in-memory wheel and the async service that waits on it.
//!
//! Persisted timers are rows in the store; the wheel is the index that says which of them are
//! due now, so a process never scans the store to find the next wake-up.

mod service;
mod wheel;

pub use service::{Closed, TimerService};
pub use wheel::{Expired, TimerWheel};
