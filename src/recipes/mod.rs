//! Coordination recipes written once over [`Store`](crate::Store), so they work on every backend.
//!
//! - [`lock`]: a FIFO lock with renewal, a lost signal and fencing tokens (also [`Store::new_lock`](crate::Store::new_lock)).
//! - [`election`]: leader election (campaign, proclaim, resign, leader, observe).
//! - [`discovery`]: service registration with a lease, and a stream of the current instances.

pub mod discovery;
pub mod election;
pub mod lock;
