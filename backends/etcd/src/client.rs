//! The [`Client`]: endpoints, failover, timeouts, TLS, authentication, and the KV calls.
//!
//! Every RPC of the gateway is a `POST <endpoint>/v3/<service>/<method>` with a JSON
//! body. [`Client::call`] is the one path all unary calls take:
//!
//! ```text
//!   encode body (lease IDs in the server's form)
//!     -> for each endpoint, starting with the last one that worked:
//!          POST; connection refused / 502 / 503  => try the next endpoint
//!     -> token rejected and credentials known   => authenticate again, retry once
//!     -> decode reply (never panics: malformed JSON is Error::Decode)
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::with_flavour;
use crate::error::{BoxError, Error, Result};
use crate::kv::{self, DeleteOptions, DeleteResponse, PutOptions, PutResponse, RangeOptions, RangeResponse};
use crate::txn::{Txn, TxnResponse};
use crate::watch::WatchTransport;

/// Which server implementation the client talks to, detected from
/// `/v3/maintenance/status` at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ServerFlavour {
    /// Not detected (treated like etcd).
    #[default]
    Unknown,
    /// etcd, with its version (e.g. `3.4.23`).
    Etcd {
        /// The reported version.
        version: String,
    },
    /// antietcd (Node or Rust), with its version string (e.g. `antietcd 1.3.1`).
    Antietcd {
        /// The reported version.
        version: String,
    },
}

impl ServerFlavour {
    /// Classifies a `version` string from `/v3/maintenance/status`.
    pub fn from_version(version: &str) -> ServerFlavour {
        if version.to_ascii_lowercase().starts_with("antietcd") {
            ServerFlavour::Antietcd { version: version.to_string() }
        } else {
            ServerFlavour::Etcd { version: version.to_string() }
        }
    }

    /// Whether the server is antietcd.
    pub fn is_antietcd(&self) -> bool {
        matches!(self, ServerFlavour::Antietcd { .. })
    }
}

/// How to connect: timeouts, TLS material, credentials, watch transport.
///
/// ```
/// use std::time::Duration;
/// use etcd_json::ClientOptions;
/// let options = ClientOptions::new()
///     .with_request_timeout(Duration::from_secs(2))
///     .with_user("root", "secret");
/// # let _ = options;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) pool_idle_timeout: Option<Duration>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) watch_transport: WatchTransport,
    pub(crate) ws_idle_timeout: Duration,
    pub(crate) flavour: Option<ServerFlavour>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("watch_transport", &self.watch_transport)
            .field("ws_idle_timeout", &self.ws_idle_timeout)
            .field("flavour", &self.flavour)
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Some(Duration::from_secs(5)),
            connect_timeout: Duration::from_secs(3),
            tcp_keepalive: Some(Duration::from_secs(30)),
            // Below Node's 5 s keep-alive, so that an idle pooled connection is never
            // reused just as antietcd closes it.
            pool_idle_timeout: Some(Duration::from_secs(4)),
            user: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            watch_transport: WatchTransport::Auto,
            ws_idle_timeout: Duration::from_secs(60),
            flavour: None,
        }
    }
}

impl ClientOptions {
    /// Defaults: 5 s per request, 3 s to connect, no TLS client certificate, no auth.
    pub fn new() -> Self {
        Self::default()
    }

    /// The timeout of each unary request (`None`: none). Blocking calls (lock, campaign)
    /// are not bound by it; bound them with `tokio::time::timeout`.
    pub fn with_request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.request_timeout = timeout.into();
        self
    }

    /// The timeout of establishing one TCP (and TLS) connection.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// TCP keep-alive on the connections (`None`: off).
    pub fn with_tcp_keepalive(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.tcp_keepalive = interval.into();
        self
    }

    /// How long an idle pooled connection is kept (`None`: forever).
    pub fn with_pool_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.pool_idle_timeout = timeout.into();
        self
    }

    /// Authenticates as this user (`/v3/auth/authenticate`); the token is renewed when
    /// the server rejects it.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Trusts the CA certificates in this PEM file (instead of the public web roots).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM chain) and private key (PEM).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// How long a websocket watch may hear nothing (no message, no ping or pong) before it is taken for
    /// dead and reconnected, resuming where it was. The client pings after half of it. Default 60 s.
    pub fn with_ws_idle_timeout(mut self, timeout: Duration) -> Self {
        self.ws_idle_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// How watches reach the server (default: [`WatchTransport::Auto`]).
    pub fn with_watch_transport(mut self, transport: WatchTransport) -> Self {
        self.watch_transport = transport;
        self
    }

    /// Skips flavour detection at connect time and assumes this server implementation.
    pub fn with_server_flavour(mut self, flavour: ServerFlavour) -> Self {
        self.flavour = Some(flavour);
        self
    }
}

/// A handle to an etcd (or antietcd) cluster. Cheap to clone: clones share the
/// connection pool, the auth token and the endpoint preference.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("flavour", &self.flavour())
            .finish()
    }
}

/// The shared state behind a [`Client`].
pub(crate) struct Inner {
    /// The pooled HTTP/1.1 client (the gateway does not speak h2c, and h2 over TLS would
    /// reach the gRPC server instead of the gateway).
    pub(crate) http: reqwest::Client,
    /// Base URLs (`http://host:port`), without a trailing slash.
    pub(crate) endpoints: Vec<String>,
    /// Index of the endpoint that answered last; requests start there.
    preferred: AtomicUsize,
    pub(crate) options: ClientOptions,
    /// TLS settings, shared with the websocket watch transport.
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The current auth token (sent raw in `Authorization`, no "Bearer").
    token: RwLock<Option<String>>,
    /// Serialises re-authentication so that a burst of rejected requests authenticates once.
    auth_gate: tokio::sync::Mutex<()>,
    /// The detected server implementation.
    flavour: RwLock<ServerFlavour>,
}

/// Why one attempt against one endpoint failed.
enum Attempt {
    /// Could not connect: safe to try another endpoint.
    Connect(BoxError),
    /// The connection broke after the request was (maybe) sent.
    Broken(Error),
    /// Anything else: the error to report (or to fail over on, if retryable by status).
    Failed(Error),
}

/// Whether sending a request twice is harmless (reads, renewals, authentication).
fn is_idempotent(path: &str) -> bool {
    matches!(
        path,
        "/v3/kv/range"
            | "/v3/maintenance/status"
            | "/v3/cluster/member/list"
            | "/v3/lease/timetolive"
            | "/v3/lease/leases"
            | "/v3/lease/keepalive"
            | "/v3/election/leader"
            | "/v3/lock/unlock"
            | "/v3/auth/authenticate"
    )
}

impl Client {
    /// Connects to a cluster.
    ///
    /// Endpoints are `http://host:port`, `https://host:port` or `host:port` (https when a
    /// CA file or client certificate is configured). Unless the flavour is given in the
    /// options, this asks `/v3/maintenance/status` which server it is (failing with
    /// [`Error::NotReachable`] when no endpoint answers), then authenticates if a user is
    /// configured.
    pub async fn connect<E, S>(endpoints: E, options: ClientOptions) -> Result<Client>
    where
        E: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let tls_wanted =
            options.ca_file.is_some() || options.cert_file.is_some() || options.key_file.is_some();
        let endpoints = endpoints
            .into_iter()
            .map(|e| normalise_endpoint(e.as_ref(), tls_wanted))
            .collect::<Result<Vec<_>>>()?;
        if endpoints.is_empty() {
            return Err(Error::config("no endpoint given", None));
        }
        let tls = Arc::new(tls_config(&options)?);
        let http = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(options.pool_idle_timeout)
            .tcp_keepalive(options.tcp_keepalive)
            // Find a dead peer (a silently dropped connection, as under a long HTTP watch) within about
            // twice the keepalive time, not the kernel's default of over ten minutes.
            .tcp_keepalive_interval(options.tcp_keepalive.map(|k| (k / 3).max(Duration::from_secs(1))))
            .tcp_keepalive_retries(options.tcp_keepalive.map(|_| 3))
            .use_preconfigured_tls((*tls).clone())
            .build()
            .map_err(|e| Error::config("cannot build the HTTP client", Some(Box::new(e))))?;
        let flavour = options.flavour.clone().unwrap_or_default();
        let client = Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                preferred: AtomicUsize::new(0),
                options,
                tls,
                token: RwLock::new(None),
                auth_gate: tokio::sync::Mutex::new(()),
                flavour: RwLock::new(flavour),
            }),
        };
        if client.inner.options.flavour.is_none() {
            client.status().await?;
        }
        if client.inner.options.user.is_some() {
            client.authenticate_now(None).await?;
        }
        Ok(client)
    }

    /// The detected (or configured) server implementation.
    pub fn flavour(&self) -> ServerFlavour {
        match self.inner.flavour.read() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_flavour(&self, flavour: ServerFlavour) {
        match self.inner.flavour.write() {
            Ok(mut f) => *f = flavour,
            Err(poisoned) => *poisoned.into_inner() = flavour,
        }
    }

    /// The endpoints, normalised to base URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The current auth token, if authenticated.
    pub(crate) fn token(&self) -> Option<String> {
        match self.inner.token.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_token(&self, token: Option<String>) {
        match self.inner.token.write() {
            Ok(mut t) => *t = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }

    /// The endpoints in the order to try them: the preferred one first.
    pub(crate) fn endpoint_order(&self) -> Vec<usize> {
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(|i| (start + i) % n).collect()
    }

    pub(crate) fn mark_good(&self, index: usize) {
        self.inner.preferred.store(index, Ordering::Relaxed);
    }

    /// Encodes a request body with lease IDs in the server's form.
    pub(crate) fn encode(&self, body: &impl Serialize) -> Result<Bytes> {
        let flavour = self.flavour();
        with_flavour(&flavour, || serde_json::to_vec(body))
            .map(Bytes::from)
            .map_err(|e| Error::InvalidArgument { message: format!("cannot encode the request: {e}") })
    }

    /// Decodes a reply body with lease IDs in the server's form.
    pub(crate) fn decode<T: DeserializeOwned>(&self, what: &str, body: &[u8]) -> Result<T> {
        let flavour = self.flavour();
        with_flavour(&flavour, || serde_json::from_slice(body))
            .map_err(|e| Error::decode(what, body, Some(Box::new(e))))
    }

    /// Calls a unary RPC with the default request timeout.
    pub(crate) async fn call<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call_with_timeout(path, body, self.inner.options.request_timeout).await
    }

    /// Calls a unary RPC with the given timeout (`None`: wait as long as it takes).
    pub(crate) async fn call_with_timeout<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let body = self.encode(body)?;
        let reply = self.call_raw(path, body, timeout).await?;
        self.decode(path, &reply)
    }

    /// Sends a body with failover and one re-authentication; returns the 2xx body.
    pub(crate) async fn call_raw(&self, path: &str, body: Bytes, timeout: Option<Duration>) -> Result<Bytes> {
        let token = self.token();
        match self.send_failover(path, body.clone(), timeout, token.clone()).await {
            Err(e) if e.is_token_problem() && self.inner.options.user.is_some() => {
                tracing::debug!(error = %e, "auth token rejected, authenticating again");
                self.authenticate_now(token).await?;
                self.send_failover(path, body, timeout, self.token()).await
            }
            other => other,
        }
    }

    async fn send_failover(
        &self,
        path: &str,
        body: Bytes,
        timeout: Option<Duration>,
        token: Option<String>,
    ) -> Result<Bytes> {
        let mut last_connect_error: Option<BoxError> = None;
        let mut last_unavailable: Option<Error> = None;
        let mut server_unavailable: Option<Error> = None;
        let mut order: std::collections::VecDeque<usize> = self.endpoint_order().into();
        // A read may be sent again when its connection broke mid-request (typically a
        // pooled connection that the server closed or a server that just died); a write
        // may not, since the server may have applied it.
        let mut resend_budget = usize::from(is_idempotent(path));
        while let Some(index) = order.pop_front() {
            match self.send_once(index, path, body.clone(), timeout, token.as_deref()).await {
                Ok(reply) => {
                    self.mark_good(index);
                    return Ok(reply);
                }
                Err(Attempt::Connect(e)) => {
                    tracing::debug!(endpoint = %self.inner.endpoints[index], error = %e, "cannot connect");
                    last_connect_error = Some(e);
                }
                Err(Attempt::Broken(e)) if resend_budget > 0 => {
                    tracing::debug!(endpoint = %self.inner.endpoints[index], error = %e, "connection broke, sending again");
                    resend_budget -= 1;
                    order.push_front(index);
                    last_unavailable = Some(e);
                }
                Err(Attempt::Broken(e)) => return Err(e),
                Err(Attempt::Failed(e @ Error::Unavailable { .. })) => {
                    tracing::debug!(endpoint = %self.inner.endpoints[index], error = %e, "unavailable");
                    server_unavailable = Some(e);
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        // A server that answered "unavailable" says more than a refused connection.
        if let Some(e) = server_unavailable {
            return Err(e);
        }
        match (last_connect_error, last_unavailable) {
            (Some(source), _) => Err(Error::NotReachable { endpoints: self.inner.endpoints.clone(), source }),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::NotReachable {
                endpoints: self.inner.endpoints.clone(),
                source: "no endpoint".into(),
            }),
        }
    }

    async fn send_once(
        &self,
        index: usize,
        path: &str,
        body: Bytes,
        timeout: Option<Duration>,
        token: Option<&str>,
    ) -> Result<Bytes, Attempt> {
        let url = format!("{}{}", self.inner.endpoints[index], path);
        let mut request =
            self.inner.http.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        if let Some(token) = token {
            request = request.header(reqwest::header::AUTHORIZATION, token);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| classify(e, path, timeout))?;
        let status = response.status();
        let reply = response.bytes().await.map_err(|e| classify(e, path, timeout))?;
        if status.is_success() {
            Ok(reply)
        } else {
            Err(Attempt::Failed(Error::from_reply(status.as_u16(), &reply)))
        }
    }

    /// Authenticates with the configured user, unless another task already replaced
    /// `stale` (the token that was rejected) with a fresh one.
    pub(crate) async fn authenticate_now(&self, stale: Option<String>) -> Result<()> {
        let Some((name, password)) = self.inner.options.user.clone() else {
            return Ok(());
        };
        let _gate = self.inner.auth_gate.lock().await;
        let current = self.token();
        if current.is_some() && current != stale {
            return Ok(());
        }
        #[derive(Serialize)]
        struct AuthRequest<'a> {
            name: &'a str,
            password: &'a str,
        }
        #[derive(Deserialize)]
        struct AuthResponse {
            #[serde(default)]
            token: String,
        }
        let body = self.encode(&AuthRequest { name: &name, password: &password })?;
        let reply =
            self.send_failover("/v3/auth/authenticate", body, self.inner.options.request_timeout, None).await;
        match reply {
            Ok(reply) => {
                let auth: AuthResponse = self.decode("/v3/auth/authenticate", &reply)?;
                self.set_token((!auth.token.is_empty()).then_some(auth.token));
                Ok(())
            }
            // Auth is off: run without a token.
            Err(Error::FailedPrecondition { message })
                if message.contains("authentication is not enabled") =>
            {
                self.set_token(None);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    // ----------------------------------------------------------------------------------
    // KV
    // ----------------------------------------------------------------------------------

    /// Reads a key, or a range of keys (see [`RangeOptions`]).
    pub async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<RangeOptions>,
    ) -> Result<RangeResponse> {
        let options = options.unwrap_or_default();
        let request = options.to_wire(key.into());
        if self.flavour().is_antietcd() {
            if options.revision != 0 || options.min_create_revision != 0 || options.max_create_revision != 0 {
                return Err(Error::Unimplemented {
                    message: "antietcd has no historical reads and no create revisions".into(),
                });
            }
            let mut sent = request.clone();
            kv::antietcd_range(&mut sent.key, &mut sent.range_end);
            // antietcd cannot count or filter by itself: ask for the keys and do it here.
            sent.count_only = false;
            sent.limit = 0;
            let mut reply: RangeResponse = self.call("/v3/kv/range", &sent).await?;
            request.normalise_antietcd_reply(&mut reply);
            return Ok(reply);
        }
        self.call("/v3/kv/range", &request).await.map_err(|e| with_requested(e, options.revision))
    }

    /// Reads one key's value, or `None` when it does not exist.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let mut reply = self.range(key, None).await?;
        Ok(reply.kvs.pop().map(|kv| kv.value))
    }

    /// Writes a key.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse> {
        let request = options.unwrap_or_default().to_wire(key.into(), value.into());
        self.call("/v3/kv/put", &request).await
    }

    /// Deletes a key, or a range of keys (see [`DeleteOptions`]).
    pub async fn delete_range(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse> {
        let options = options.unwrap_or_default();
        let mut request = options.to_wire(key.into());
        if self.flavour().is_antietcd() && !request.range_end.is_empty() {
            if kv::antietcd_range(&mut request.key, &mut request.range_end) {
                return Err(Error::Unimplemented {
                    message: "antietcd deletes only single keys and directory prefixes (\"dir/\")".into(),
                });
            }
            // antietcd's subtree delete of "/dir/" also deletes the key "/dir" itself. When
            // that key exists, delete the range's keys one by one in a transaction instead
            // (atomic, but keys created between the listing and the transaction survive).
            if let Some(dir) = request.key.strip_suffix(b"/").filter(|d| !d.is_empty()) {
                if self.get(dir.to_vec()).await?.is_some() {
                    return self.antietcd_delete_listed(&request, options.prev_kv).await;
                }
            }
        }
        self.call("/v3/kv/deleterange", &request).await
    }

    async fn antietcd_delete_listed(
        &self,
        request: &kv::DeleteRequest,
        prev_kv: bool,
    ) -> Result<DeleteResponse> {
        let listed = self
            .range(request.key.clone(), Some(RangeOptions::new().with_range_end(request.range_end.clone())))
            .await?;
        let ops = listed.kvs.iter().map(|kv| crate::txn::TxnOp::delete(kv.key.clone(), None));
        let reply = self.txn(Txn::new().and_then(ops)).await?;
        let deleted = reply.responses.iter().filter_map(|r| r.as_delete()).map(|d| d.deleted).sum();
        Ok(DeleteResponse {
            header: reply.header,
            deleted,
            prev_kvs: if prev_kv { listed.kvs } else { Vec::new() },
        })
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call("/v3/kv/txn", &txn.to_wire()).await
    }
}

/// Fills in the requested revision of a [`Error::Compacted`].
pub(crate) fn with_requested(e: Error, revision: i64) -> Error {
    match e {
        Error::Compacted { requested: 0, compact_revision } => {
            Error::Compacted { requested: revision, compact_revision }
        }
        other => other,
    }
}

/// Classifies a transport error of one attempt.
fn classify(e: reqwest::Error, path: &str, timeout: Option<Duration>) -> Attempt {
    if e.is_connect() {
        Attempt::Connect(Box::new(e))
    } else if e.is_timeout() {
        Attempt::Failed(Error::timeout(path, timeout.unwrap_or_default()))
    } else {
        Attempt::Broken(Error::unavailable(
            format!("{path}: the connection failed during the request"),
            Some(Box::new(e)),
        ))
    }
}

/// Turns `host:port`, `http://host:port/` or `https://host:port` into a base URL.
fn normalise_endpoint(endpoint: &str, tls: bool) -> Result<String> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(Error::config("empty endpoint", None));
    }
    let url = if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_string()
    } else if trimmed.contains("://") {
        return Err(Error::config(format!("endpoint {endpoint:?}: only http and https are supported"), None));
    } else if tls {
        format!("https://{trimmed}")
    } else {
        format!("http://{trimmed}")
    };
    reqwest::Url::parse(&url)
        .map_err(|e| Error::config(format!("endpoint {endpoint:?}"), Some(Box::new(e))))?;
    Ok(url)
}

/// Builds the rustls configuration shared by HTTPS and WSS.
fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::config(format!("CA file {}", path.display()), Some(Box::new(e))))?;
            if certs.is_empty() {
                return Err(Error::config(format!("CA file {} holds no certificate", path.display()), None));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| Error::config(format!("CA file {}", path.display()), Some(Box::new(e))))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("TLS protocol versions", Some(Box::new(e))))?
        .with_root_certificates(roots);
    let mut config = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::config(format!("certificate {}", cert.display()), Some(Box::new(e))))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::config(format!("private key {}", key.display()), Some(Box::new(e))))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| Error::config("client certificate", Some(Box::new(e))))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(Error::config("a client certificate needs both a cert and a key file", None)),
    };
    // HTTP/1.1 only: ALPN h2 would reach etcd's gRPC server instead of the gateway.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints are normalised to base URLs, with https when TLS is configured.
    #[test]
    fn endpoints() {
        assert_eq!(
            normalise_endpoint("127.0.0.1:2379", false).ok().as_deref(),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(normalise_endpoint("h:1", true).ok().as_deref(), Some("https://h:1"));
        assert_eq!(normalise_endpoint("https://h:1/", false).ok().as_deref(), Some("https://h:1"));
        assert!(normalise_endpoint("unix:///x", false).is_err());
        assert!(normalise_endpoint(" ", false).is_err());
    }

    /// The version string tells etcd from antietcd.
    #[test]
    fn flavours() {
        assert!(ServerFlavour::from_version("antietcd 1.3.1").is_antietcd());
        assert!(!ServerFlavour::from_version("3.4.23").is_antietcd());
    }
}
