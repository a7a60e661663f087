//! An async client for etcd's v3 JSON gateway, which also speaks to antietcd servers.
//!
//! etcd 3.4+ serves every gRPC method as `POST /v3/<service>/<method>` with a JSON body
//! (the grpc-gateway). This crate is a complete client over that API: KV, transactions,
//! leases with a background keeper, watches that survive reconnects, locks, elections
//! and maintenance. It talks HTTP/1.1 (reqwest, pooled keep-alive connections) to one of
//! several endpoints with failover, with optional TLS (CA file, client certificate) and
//! username/password authentication.
//!
//! The same client works against [antietcd](https://www.npmjs.com/package/antietcd)
//! (Node antietcd 1.3.1, and valkeyrie's Rust server), which implements a subset of the
//! same JSON API plus its own websocket watch protocol. The server flavour is detected at
//! connect time ([`ServerFlavour`]) and the client adapts: lease IDs in antietcd's hex
//! form, watches over the websocket, ranges filtered and sorted client-side.
//!
//! ```no_run
//! use etcd_json::{Client, ClientOptions, Compare, CompareOp, RangeOptions, Txn, TxnOp};
//! # async fn demo() -> Result<(), etcd_json::Error> {
//! let client = Client::connect(["127.0.0.1:2379"], ClientOptions::new()).await?;
//! client.put("/app/config", "v1", None).await?;
//! let reply = client.range("/app/", Some(RangeOptions::new().with_prefix())).await?;
//! for kv in &reply.kvs {
//!     println!("{:?} = {:?}", kv.key_str(), kv.value_str());
//! }
//! // Create-if-absent.
//! let txn = Txn::new()
//!     .when([Compare::create_revision("/app/leader", CompareOp::Equal, 0)])
//!     .and_then([TxnOp::put("/app/leader", "me", None)]);
//! let won = client.txn(txn).await?.succeeded;
//! # let _ = won;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! * [`client`](Client) — endpoints, failover, timeouts, TLS, auth, and the KV calls;
//! * `kv` / `txn` — request options and replies ([`RangeOptions`], [`Txn`], ...);
//! * `lease` — grant, revoke, keep-alive, [`LeaseKeeper`];
//! * `watch` — [`WatchStream`] over etcd's HTTP stream or antietcd's websocket;
//! * `concurrency` — lock, unlock, campaign, proclaim, leader, observe, resign;
//! * `maintenance` — status, member list, compaction, auth administration;
//! * [`error`](Error) — one error enum, mapped from the gateway's gRPC codes and HTTP statuses;
//! * `testing` (feature `testing`) — throwaway etcd and Node antietcd servers for tests.
//!
//! # Errors
//!
//! Every call returns [`Error`]. Branch on its variants ([`Error::LeaseNotFound`],
//! [`Error::Compacted`], [`Error::Unauthenticated`], ...), and use
//! [`Error::is_retryable`] to decide whether trying again may help. Malformed replies
//! are [`Error::Decode`], never a panic.

mod client;
mod codec;
mod concurrency;
mod error;
mod kv;
mod lease;
mod maintenance;
mod txn;
mod watch;

#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Client, ClientOptions, ServerFlavour};
pub use codec::{prefix_range_end, LeaseId};
pub use concurrency::{CampaignResponse, LeaderKey, LeaderResponse, LockResponse, ObserveStream};
pub use error::{BoxError, Error, Result};
pub use kv::{
    DeleteOptions, DeleteResponse, KeyValue, PutOptions, PutResponse, RangeOptions, RangeResponse,
    ResponseHeader, SortOrder, SortTarget,
};
pub use lease::{
    LeaseGrantResponse, LeaseKeepAliveResponse, LeaseKeeper, LeaseLeasesResponse, LeaseTimeToLiveResponse,
};
pub use maintenance::{HeaderResponse, Member, MemberListResponse, Permission, StatusResponse};
pub use txn::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};
pub use watch::{Event, EventType, WatchOptions, WatchResponse, WatchStream, WatchTransport};
