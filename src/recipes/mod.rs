//! Coordination recipes written once over [`Store`](crate::Store), so they work on every backend.

pub mod lock;
