//! What the cases run against: a backend's server (shared by the handles of one test) and the handles.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use valkeyrie::Store;

/// What a backend can do beyond the common contract; each `false` is a line in compat.md.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// The watch buffer size, when a case can make a consumer lag on purpose.
    pub lag_after: Option<usize>,
}

/// A running backend that hands out store handles.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A new handle (its own leases and watches) on the shared server, with every key under `prefix`.
    async fn connect(&self, prefix: &str) -> Arc<dyn Store>;
    /// The backend's capabilities.
    fn caps(&self) -> Caps;
}

/// What a case gets: a store, a second handle on the same server and namespace, and the capabilities.
pub struct Env {
    pub store: Arc<dyn Store>,
    pub other: Arc<dyn Store>,
    pub caps: Caps,
    pub ns: String,
    harness: Arc<dyn Harness>,
}

impl Env {
    /// A new handle on the same server with another prefix (`""` for none).
    pub async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        self.harness.connect(prefix).await
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Runs `case` against `harness` under a namespace no other test uses.
pub async fn run<F>(harness: Arc<dyn Harness>, name: &str, case: F)
where
    F: for<'a> FnOnce(&'a Env) -> futures::future::BoxFuture<'a, ()>,
{
    let ns = format!("/vk/{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), name);
    let env = Env {
        store: harness.connect(&ns).await,
        other: harness.connect(&ns).await,
        caps: harness.caps(),
        ns,
        harness,
    };
    case(&env).await;
    let _ = env.store.close().await;
    let _ = env.other.close().await;
}

/// The embedded backend: a fresh in-process engine per test.
pub struct Embedded {
    engine: valkeyrie::embedded::Engine,
}

impl Embedded {
    pub const WATCH_CAPACITY: usize = 64;

    pub fn start() -> Arc<dyn Harness> {
        let config = valkeyrie::embedded::Config::default().with_watch_capacity(Self::WATCH_CAPACITY);
        Arc::new(Embedded { engine: valkeyrie::embedded::Engine::new(config).unwrap() })
    }
}

#[async_trait]
impl Harness for Embedded {
    async fn connect(&self, prefix: &str) -> Arc<dyn Store> {
        valkeyrie::embedded::connect(&self.engine, prefix)
    }

    fn caps(&self) -> Caps {
        Caps { lag_after: Some(Self::WATCH_CAPACITY) }
    }
}
