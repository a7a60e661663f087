//! Distributed locks and leader election (etcd's v3lock and v3election services).
//!
//! Both are tied to a lease: keep it alive (a [`LeaseKeeper`](crate::LeaseKeeper)) for as
//! long as the lock or leadership should last. `lock` and `campaign` block on the
//! server until they succeed, so they are not bound by the client's request timeout;
//! wrap them in `tokio::time::timeout` to give up (dropping the request makes the server
//! withdraw the attempt). antietcd serves neither service ([`Error::NotFound`]).

use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::codec::{b64, int, is_no_lease, LeaseId};
use crate::error::{Error, Result};
use crate::kv::{KeyValue, ResponseHeader};
use crate::watch::JsonStream;

/// The reply to [`Client::lock`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LockResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The key that holds the lock (`name/<lease in hex>`): pass it to [`Client::unlock`].
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
}

/// Identifies a leadership won by [`Client::campaign`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeaderKey {
    /// The election name.
    #[serde(default, with = "b64")]
    pub name: Vec<u8>,
    /// The key that holds the leadership.
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
    /// The creation revision of that key.
    #[serde(default, with = "int")]
    pub rev: i64,
    /// The lease of that key.
    #[serde(default, skip_serializing_if = "is_no_lease")]
    pub lease: LeaseId,
}

/// The reply to [`Client::campaign`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CampaignResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The leadership won.
    #[serde(default)]
    pub leader: LeaderKey,
}

/// The reply to [`Client::leader`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LeaderResponse {
    /// The reply header.
    #[serde(default)]
    pub header: ResponseHeader,
    /// The leader's key and its proclaimed value.
    #[serde(default)]
    pub kv: KeyValue,
}

#[derive(Debug, Deserialize)]
struct HeaderOnly {
    #[serde(default)]
    header: ResponseHeader,
}

/// A stream of the leader's key-value pairs: the current one first, then one per
/// proclamation and change of leader. Ends with an error when the connection breaks.
pub type ObserveStream = BoxStream<'static, Result<LeaderResponse>>;

impl Client {
    /// Acquires the lock `name`, held for as long as `lease` lives (or until
    /// [`Client::unlock`]). Blocks until acquired.
    ///
    /// Without a lease the server grants one of 60 s that nobody renews; always pass one.
    pub async fn lock(&self, name: impl Into<Vec<u8>>, lease: LeaseId) -> Result<LockResponse> {
        #[derive(Serialize)]
        struct Req {
            #[serde(with = "b64")]
            name: Vec<u8>,
            #[serde(skip_serializing_if = "is_no_lease")]
            lease: LeaseId,
        }
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidArgument { message: "a lock needs a name".into() });
        }
        self.call_with_timeout("/v3/lock/lock", &Req { name, lease }, None).await
    }

    /// Releases a lock by the key [`Client::lock`] returned. Idempotent.
    pub async fn unlock(&self, key: impl Into<Vec<u8>>) -> Result<ResponseHeader> {
        #[derive(Serialize)]
        struct Req {
            #[serde(with = "b64")]
            key: Vec<u8>,
        }
        let reply: HeaderOnly = self.call("/v3/lock/unlock", &Req { key: key.into() }).await?;
        Ok(reply.header)
    }

    /// Campaigns in the election `name` with an initial `value`; blocks until this
    /// campaigner leads. The leadership lasts as long as `lease` (or until resigned).
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Result<CampaignResponse> {
        #[derive(Serialize)]
        struct Req {
            #[serde(with = "b64")]
            name: Vec<u8>,
            #[serde(skip_serializing_if = "is_no_lease")]
            lease: LeaseId,
            #[serde(with = "b64")]
            value: Vec<u8>,
        }
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidArgument { message: "an election needs a name".into() });
        }
        self.call_with_timeout("/v3/election/campaign", &Req { name, lease, value: value.into() }, None).await
    }

    /// Publishes a new value as the leader. [`Error::NotLeader`] if `leader` no longer leads.
    pub async fn proclaim(&self, leader: &LeaderKey, value: impl Into<Vec<u8>>) -> Result<ResponseHeader> {
        #[derive(Serialize)]
        struct Req<'a> {
            leader: &'a LeaderKey,
            #[serde(with = "b64")]
            value: Vec<u8>,
        }
        let reply: HeaderOnly =
            self.call("/v3/election/proclaim", &Req { leader, value: value.into() }).await?;
        Ok(reply.header)
    }

    /// The current leader of election `name`; [`Error::NoLeader`] when there is none.
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<LeaderResponse> {
        #[derive(Serialize)]
        struct Req {
            #[serde(with = "b64")]
            name: Vec<u8>,
        }
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidArgument { message: "an election needs a name".into() });
        }
        self.call("/v3/election/leader", &Req { name }).await
    }

    /// Gives up a leadership; the next campaigner then wins.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<ResponseHeader> {
        #[derive(Serialize)]
        struct Req<'a> {
            leader: &'a LeaderKey,
        }
        let reply: HeaderOnly = self.call("/v3/election/resign", &Req { leader }).await?;
        Ok(reply.header)
    }

    /// Follows the leader of election `name`: a stream of its key-value pairs.
    pub async fn observe(&self, name: impl Into<Vec<u8>>) -> Result<ObserveStream> {
        #[derive(Serialize)]
        struct Req {
            #[serde(with = "b64")]
            name: Vec<u8>,
        }
        let body = self.encode(&Req { name: name.into() })?;
        let mut last = None;
        for index in self.endpoint_order() {
            let base = &self.inner.endpoints[index];
            let mut request = self
                .inner
                .http
                .post(format!("{base}/v3/election/observe"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = self.token() {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => {
                    return Err(Error::unavailable("cannot open the observe stream", Some(Box::new(e))))
                }
            };
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await.unwrap_or_default();
                return Err(Error::from_reply(status.as_u16(), &body));
            }
            self.mark_good(index);
            let client = self.clone();
            let stream = futures::stream::unfold(
                (JsonStream::new(response), client, false),
                |(mut json, client, done)| async move {
                    if done {
                        return None;
                    }
                    let item = match json.next_value().await {
                        Some(Ok(bytes)) => client
                            .decode::<ObserveEnvelope>("observe message", &bytes)
                            .and_then(ObserveEnvelope::into_result),
                        Some(Err(e)) => Err(e),
                        None => Err(Error::unavailable("the observe stream ended", None)),
                    };
                    let done = item.is_err();
                    Some((item, (json, client, done)))
                },
            );
            return Ok(stream.boxed());
        }
        Err(Error::NotReachable {
            endpoints: self.inner.endpoints.clone(),
            source: match last {
                Some(e) => Box::new(e),
                None => "no endpoint".into(),
            },
        })
    }
}

#[derive(Debug, Deserialize)]
struct ObserveEnvelope {
    #[serde(default)]
    result: Option<LeaderResponse>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl ObserveEnvelope {
    fn into_result(self) -> Result<LeaderResponse> {
        match (self.result, self.error) {
            (_, Some(error)) => {
                let message = error
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| error.to_string());
                let code = error.get("grpc_code").and_then(|c| c.as_i64()).map(|c| c as i32);
                Err(Error::from_status(503, code, message))
            }
            (Some(result), None) => Ok(result),
            (None, None) => Err(Error::Decode {
                what: "observe message".into(),
                detail: "neither result nor error".into(),
                source: None,
            }),
        }
    }
}
