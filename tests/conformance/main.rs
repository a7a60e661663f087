//! The conformance suite: every case of `cases.rs` against every backend.
//!
//! A case is written once as `async fn case(env: &Env)` and instantiated per backend by `conformance!`,
//! so a failure names both (`embedded::lock_ttl`). Backends that run on real time (servers) take
//! seconds where the embedded one, on paused tokio time, takes none.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod cases;
mod harness;

use harness::*;

/// Instantiates every case for one backend: `conformance!(module_name, paused_time, harness_expr)`.
macro_rules! conformance {
    ($backend:ident, $paused:literal, $harness:expr) => {
        mod $backend {
            use super::*;
            conformance!(@cases $paused, $harness,
                put_get_delete_exists, edge_values_and_keys, list, delete_tree, list_lock_key,
                atomic_put, atomic_put_create, atomic_put_with_slash_suffix_key, atomic_delete,
                watch, watch_missing_key, watch_no_gap, watch_tree, watch_tree_missing_dir, lagging_watcher,
                lock_unlock, lock_ttl, lock_wait, lock_fifo_and_fencing, lock_cancel,
                put_ttl, ttl_expires, keep_alive, leases, prefix_namespaces, close, concurrent_writers_ordered,
                election, discovery);
        }
    };
    (@cases $paused:literal, $harness:expr, $($case:ident),*) => {
        $(
            #[tokio::test(start_paused = $paused)]
            async fn $case() {
                let harness = $harness;
                run(harness, stringify!($case), |env| Box::pin(cases::$case(env))).await;
            }
        )*
    };
}

conformance!(embedded, true, Embedded::start());
// The same engine on real time: what the server backends will see (timers really elapse, tasks interleave).
conformance!(embedded_realtime, false, Embedded::start());
// Real etcd 3.4, one throwaway server per test.
#[cfg(feature = "etcd")]
conformance!(etcd, false, Remote::etcd());
// Node antietcd 1.3.1, one throwaway server per test.
#[cfg(feature = "etcd")]
conformance!(node_antietcd, false, Remote::node_antietcd());
// Our antietcd server over HTTP and websockets, in-process on a port-0 listener.
#[cfg(feature = "etcd")]
conformance!(antietcd_server, false, OurServer::start().await);
// Three of our antietcd binaries as a cluster (`--stale_read 0`), one per test, via `antietcd://n1,n2,n3`.
#[cfg(feature = "etcd")]
conformance!(antietcd_cluster, false, AntietcdCluster::start().await);
