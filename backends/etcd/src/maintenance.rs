//! Maintenance, cluster and auth administration: status, member list, compaction, users,
//! roles and turning auth on and off.

use serde::{Deserialize, Serialize};

use crate::client::{Client, ServerFlavour};
use crate::codec::{b64, id, int};
use crate::error::Result;
use crate::kv::ResponseHeader;

/// The reply to [`Client::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct StatusResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The server version (`3.4.23`, or `antietcd 1.3.1`).
    #[serde(default)]
    pub version: String,
    /// The database size in bytes.
    #[serde(default, rename = "dbSize", with = "int")]
    pub db_size: i64,
    /// The database size in use, in bytes.
    #[serde(default, rename = "dbSizeInUse", with = "int")]
    pub db_size_in_use: i64,
    /// The leader's member ID (0 when unknown or not a number).
    #[serde(default, with = "id")]
    pub leader: u64,
    /// The raft index.
    #[serde(default, rename = "raftIndex", with = "id")]
    pub raft_index: u64,
    /// The raft term.
    #[serde(default, rename = "raftTerm", with = "id")]
    pub raft_term: u64,
    /// The raft applied index.
    #[serde(default, rename = "raftAppliedIndex", with = "id")]
    pub raft_applied_index: u64,
    /// Errors the member reports (alarms).
    #[serde(default)]
    pub errors: Vec<String>,
}

/// A cluster member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The member ID.
    #[serde(default, rename = "ID", with = "id")]
    pub id: u64,
    /// The member name (empty for a member not started yet).
    #[serde(default)]
    pub name: String,
    /// Peer URLs.
    #[serde(default, rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    /// Client URLs.
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
    /// Whether the member is a learner.
    #[serde(default, rename = "isLearner")]
    pub is_learner: bool,
}

/// The reply to [`Client::member_list`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct MemberListResponse {
    /// The reply header (without revision).
    #[serde(default)]
    pub header: ResponseHeader,
    /// The members.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// Which access a role permission grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Permission {
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Read and write.
    ReadWrite,
}

/// A reply that carries only a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct HeaderResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
}

impl Client {
    /// The answering member's status. Also refreshes the detected [`ServerFlavour`].
    pub async fn status(&self) -> Result<StatusResponse> {
        let status: StatusResponse = self.call("/v3/maintenance/status", &serde_json::json!({})).await?;
        if self.inner.options.flavour.is_none() {
            self.set_flavour(ServerFlavour::from_version(&status.version));
        }
        Ok(status)
    }

    /// The cluster's members.
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.call("/v3/cluster/member/list", &serde_json::json!({})).await
    }

    /// Compacts the history up to `revision`; with `physical`, waits until the space is
    /// reclaimed.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<HeaderResponse> {
        #[derive(Serialize)]
        struct Req {
            revision: i64,
            #[serde(skip_serializing_if = "crate::codec::is_false")]
            physical: bool,
        }
        self.call("/v3/kv/compaction", &Req { revision, physical })
            .await
            .map_err(|e| crate::client::with_requested(e, revision))
    }

    /// Turns authentication on (the `root` user with the `root` role must exist).
    pub async fn auth_enable(&self) -> Result<HeaderResponse> {
        self.call("/v3/auth/enable", &serde_json::json!({})).await
    }

    /// Turns authentication off (needs the root user's token while it is on).
    pub async fn auth_disable(&self) -> Result<HeaderResponse> {
        self.call("/v3/auth/disable", &serde_json::json!({})).await
    }

    /// Adds a user with a password.
    pub async fn user_add(&self, name: &str, password: &str) -> Result<HeaderResponse> {
        self.call("/v3/auth/user/add", &serde_json::json!({"name": name, "password": password})).await
    }

    /// Gives a user a role.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<HeaderResponse> {
        self.call("/v3/auth/user/grant", &serde_json::json!({"user": user, "role": role})).await
    }

    /// Adds a role.
    pub async fn role_add(&self, name: &str) -> Result<HeaderResponse> {
        self.call("/v3/auth/role/add", &serde_json::json!({"name": name})).await
    }

    /// Grants a role access to the keys `[key, range_end)` (a single key when
    /// `range_end` is empty).
    pub async fn role_grant_permission(
        &self,
        role: &str,
        permission: Permission,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<HeaderResponse> {
        #[derive(Serialize)]
        struct Perm {
            #[serde(rename = "permType")]
            perm_type: &'static str,
            #[serde(with = "b64")]
            key: Vec<u8>,
            #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
            range_end: Vec<u8>,
        }
        #[derive(Serialize)]
        struct Req<'a> {
            name: &'a str,
            perm: Perm,
        }
        let perm_type = match permission {
            Permission::Read => "READ",
            Permission::Write => "WRITE",
            Permission::ReadWrite => "READWRITE",
        };
        self.call(
            "/v3/auth/role/grant",
            &Req { name: role, perm: Perm { perm_type, key: key.into(), range_end: range_end.into() } },
        )
        .await
    }
}
