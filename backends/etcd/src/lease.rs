//! Leases: grant, revoke, keep alive (once, or in the background with a [`LeaseKeeper`]),
//! time-to-live and listing.
//!
//! The gateway's keepalive is a bidirectional stream, but over HTTP/1.1 the reply only
//! starts once the request body is complete, so each renewal is one POST with one
//! `{"ID":..}`. An unknown or expired lease is not an HTTP error there: the reply simply
//! has no `TTL`, which this module turns into [`Error::LeaseNotFound`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::codec::{b64_list, int, is_false, is_no_lease, LeaseId};
use crate::error::{Error, Result};
use crate::kv::ResponseHeader;

/// The reply to [`Client::lease_grant`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LeaseGrantResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The new lease.
    #[serde(default, rename = "ID")]
    pub id: LeaseId,
    /// The granted TTL in seconds (etcd raises it to its minimum, 2 s by default).
    #[serde(default, rename = "TTL", with = "int")]
    pub ttl: i64,
}

/// The reply to [`Client::lease_keep_alive_once`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LeaseKeepAliveResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The lease.
    #[serde(default, rename = "ID")]
    pub id: LeaseId,
    /// The TTL it was renewed for, in seconds.
    #[serde(default, rename = "TTL", with = "int")]
    pub ttl: i64,
}

/// The reply to [`Client::lease_time_to_live`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LeaseTimeToLiveResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The lease.
    #[serde(default, rename = "ID")]
    pub id: LeaseId,
    /// Seconds left; -1 when the lease does not exist (etcd does not treat that as an error).
    #[serde(default, rename = "TTL", with = "int")]
    pub ttl: i64,
    /// The TTL the lease was granted with.
    #[serde(default, rename = "grantedTTL", with = "int")]
    pub granted_ttl: i64,
    /// The keys attached to the lease, if asked for.
    #[serde(default, with = "b64_list")]
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
struct LeaseStatus {
    #[serde(default, rename = "ID")]
    id: LeaseId,
}

/// The reply to [`Client::lease_leases`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseLeasesResponse {
    /// The reply header.
    pub header: ResponseHeader,
    /// Every live lease.
    pub leases: Vec<LeaseId>,
}

#[derive(Serialize)]
struct IdRequest {
    #[serde(rename = "ID")]
    id: LeaseId,
}

impl Client {
    /// Grants a lease of `ttl` seconds, with a chosen ID or (`None`) one picked by the server.
    pub async fn lease_grant(&self, ttl: i64, id: Option<LeaseId>) -> Result<LeaseGrantResponse> {
        #[derive(Serialize)]
        struct Req {
            #[serde(rename = "TTL")]
            ttl: i64,
            #[serde(rename = "ID", skip_serializing_if = "is_no_lease")]
            id: LeaseId,
        }
        let reply: LeaseGrantResponse =
            self.call("/v3/lease/grant", &Req { ttl, id: id.unwrap_or_default() }).await?;
        if reply.id.is_none() {
            return Err(Error::Decode {
                what: "/v3/lease/grant".into(),
                detail: "the reply has no lease ID".into(),
                source: None,
            });
        }
        Ok(reply)
    }

    /// Revokes a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<ResponseHeader> {
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            header: ResponseHeader,
        }
        let reply: Reply = self.call("/v3/lease/revoke", &IdRequest { id }).await?;
        Ok(reply.header)
    }

    /// Renews a lease once. A lease that no longer exists is [`Error::LeaseNotFound`].
    pub async fn lease_keep_alive_once(&self, id: LeaseId) -> Result<LeaseKeepAliveResponse> {
        #[derive(Deserialize)]
        struct StreamError {
            #[serde(default)]
            message: String,
            #[serde(default)]
            grpc_code: Option<i32>,
            #[serde(default)]
            http_code: Option<u16>,
        }
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            result: Option<LeaseKeepAliveResponse>,
            #[serde(default)]
            error: Option<StreamError>,
        }
        let reply: Reply = self.call("/v3/lease/keepalive", &IdRequest { id }).await?;
        if let Some(e) = reply.error {
            return Err(Error::from_status(e.http_code.unwrap_or(500), e.grpc_code, e.message));
        }
        match reply.result {
            Some(r) if r.ttl > 0 => Ok(r),
            Some(_) => {
                Err(Error::LeaseNotFound { message: format!("lease {id} has expired or was revoked") })
            }
            None => Err(Error::Decode {
                what: "/v3/lease/keepalive".into(),
                detail: "the reply has neither result nor error".into(),
                source: None,
            }),
        }
    }

    /// A lease's remaining and granted TTL, and (with `keys`) its keys.
    pub async fn lease_time_to_live(&self, id: LeaseId, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        #[derive(Serialize)]
        struct Req {
            #[serde(rename = "ID")]
            id: LeaseId,
            #[serde(skip_serializing_if = "is_false")]
            keys: bool,
        }
        self.call("/v3/lease/timetolive", &Req { id, keys }).await
    }

    /// Every live lease.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            header: ResponseHeader,
            #[serde(default)]
            leases: Vec<LeaseStatus>,
        }
        let reply: Reply = self.call("/v3/lease/leases", &serde_json::json!({})).await?;
        Ok(LeaseLeasesResponse {
            header: reply.header,
            leases: reply.leases.into_iter().map(|l| l.id).collect(),
        })
    }

    /// Keeps a lease of `ttl` seconds alive in the background until the returned
    /// [`LeaseKeeper`] is dropped. It renews at once, then every `ttl / 3`.
    ///
    /// Spawns a Tokio task: call it from within a Tokio runtime.
    pub fn lease_keeper(&self, id: LeaseId, ttl: i64) -> LeaseKeeper {
        LeaseKeeper::start(self.clone(), id, ttl)
    }
}

/// What the keeper task reports.
#[derive(Debug, Clone)]
enum KeeperState {
    /// Renewed; the lease lives at least until this instant.
    Alive(Instant),
    /// Gone (revoked or expired) or not renewable in time; the keeper stopped.
    Lost(Arc<Error>),
}

/// Keeps a lease alive in the background: renews every TTL/3 and stops when dropped.
///
/// When the lease disappears (revoked, expired) or cannot be renewed before it would
/// expire, the keeper stops and [`LeaseKeeper::lost`] completes: whatever the lease
/// guards (a lock, a leadership, a registration) must be considered gone.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: LeaseId,
    ttl: i64,
    state: watch::Receiver<KeeperState>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    fn start(client: Client, id: LeaseId, ttl: i64) -> LeaseKeeper {
        let ttl_duration = Duration::from_secs(ttl.max(1) as u64);
        let (tx, rx) = watch::channel(KeeperState::Alive(Instant::now() + ttl_duration));
        let task = tokio::spawn(keep(client, id, ttl_duration, tx));
        LeaseKeeper { id, ttl, state: rx, task }
    }

    /// The lease kept alive.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The TTL the keeper renews for, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Until when the lease is known to live (its last renewal plus its TTL), or `None`
    /// once it is lost.
    pub fn alive_until(&self) -> Option<Instant> {
        match *self.state.borrow() {
            KeeperState::Alive(until) => Some(until),
            KeeperState::Lost(_) => None,
        }
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        matches!(*self.state.borrow(), KeeperState::Lost(_))
    }

    /// Completes when the lease is lost, with the reason.
    pub async fn lost(&self) -> Arc<Error> {
        let mut state = self.state.clone();
        let result = state.wait_for(|s| matches!(s, KeeperState::Lost(_))).await.map(|s| (*s).clone());
        match result {
            Ok(KeeperState::Lost(e)) => e,
            _ => Arc::new(Error::unavailable("the lease keeper stopped", None)),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The keeper task: renew now and every `ttl / 3`; on failure retry quickly until the
/// lease would have expired.
async fn keep(client: Client, id: LeaseId, ttl: Duration, state: watch::Sender<KeeperState>) {
    let interval = (ttl / 3).max(Duration::from_millis(300));
    let retry = Duration::from_millis(250);
    let mut expires = Instant::now() + ttl;
    loop {
        let now = Instant::now();
        let remaining = expires.saturating_duration_since(now);
        let attempt = tokio::time::timeout(remaining, client.lease_keep_alive_once(id)).await;
        let next = match attempt {
            Ok(Ok(reply)) => {
                expires = now + Duration::from_secs(reply.ttl.max(1) as u64);
                let _ = state.send(KeeperState::Alive(expires));
                now + interval
            }
            Ok(Err(e @ Error::LeaseNotFound { .. })) => {
                let _ = state.send(KeeperState::Lost(Arc::new(e)));
                return;
            }
            Ok(Err(e)) if Instant::now() < expires => {
                tracing::debug!(lease = %id, error = %e, "lease renewal failed, retrying");
                Instant::now() + retry.min(expires.saturating_duration_since(Instant::now()))
            }
            Ok(Err(e)) => {
                let _ = state.send(KeeperState::Lost(Arc::new(e)));
                return;
            }
            Err(_elapsed) => {
                let _ = state.send(KeeperState::Lost(Arc::new(Error::timeout(
                    "lease renewal: the lease expired before a renewal succeeded",
                    ttl,
                ))));
                return;
            }
        };
        tokio::time::sleep_until(next).await;
    }
}
