//! The watch hub: fan-out of committed revisions to watchers, and the [`Watch`] stream they read.
//!
//! On commit the engine hands each revision's batch (behind an `Arc`) to every watcher whose range it
//! touches, through a bounded channel per watcher. Filtering a batch down to the watcher's range, and
//! dropping previous values or event kinds it did not ask for, happens on the reader's side, so a commit
//! costs one range check and one channel send per interested watcher, whatever the batch holds.
//!
//! A watcher whose channel is full is lagging: it is removed from the hub at once and its stream ends
//! with [`Error::Lagged`] after the batches it already has, never silently skipping revisions.

use crate::engine::{touches, Inner};
use crate::types::*;
use futures::Stream;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Why a watch stream ended with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The reader fell too far behind; the watch was cancelled. Re-create it from the last revision seen.
    #[error("watcher lagged behind and was cancelled; resume from the last revision seen")]
    Lagged,
}

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    tx: mpsc::Sender<Arc<WatchBatch>>,
    lagged: Arc<AtomicBool>,
}

/// The registered watchers of one engine.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    watchers: HashMap<u64, Watcher>,
    next_id: u64,
}

impl Hub {
    pub(crate) fn len(&self) -> usize {
        self.watchers.len()
    }

    pub(crate) fn register(
        &mut self,
        req: WatchRequest,
        revision: Revision,
        replay: VecDeque<Arc<WatchBatch>>,
        capacity: usize,
        engine: Weak<Inner>,
    ) -> Watch {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::channel(capacity);
        let lagged = Arc::new(AtomicBool::new(false));
        self.watchers.insert(id, Watcher { range: req.range.clone(), tx, lagged: lagged.clone() });
        Watch {
            id,
            revision,
            // Live batches older than the requested start (a start in the future) are skipped.
            min_revision: req.start_revision,
            req,
            replay,
            rx,
            lagged,
            engine,
            ended: false,
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// Drops every watcher as lagging: their streams end with [`WatchError::Lagged`] after what they
    /// already hold, so their readers resume (and learn of a compaction) instead of missing changes.
    pub(crate) fn lag_all(&mut self) {
        for w in self.watchers.values() {
            w.lagged.store(true, Ordering::Release);
        }
        self.watchers.clear();
    }

    /// Drops every watcher: their streams end after what they already hold.
    pub(crate) fn clear(&mut self) {
        self.watchers.clear();
    }

    pub(crate) fn publish(&mut self, batch: &Arc<WatchBatch>) {
        let mut gone = Vec::new();
        for (id, w) in &self.watchers {
            if !touches(&w.range, batch) {
                continue;
            }
            match w.tx.try_send(batch.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.lagged.store(true, Ordering::Release);
                    gone.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        for id in gone {
            self.watchers.remove(&id);
        }
    }
}

/// A stream of the changes to a key or range, one [`WatchBatch`] per revision, in revision order.
///
/// With a `start_revision` in the past, the retained history from there is delivered first, then live
/// changes, with no gap and no repeat. The stream ends when the engine closes, or with
/// `Err(`[`WatchError::Lagged`]`)` if the reader fell more than the engine's `watch_capacity` revisions
/// behind. Dropping it cancels the watch.
#[derive(Debug)]
pub struct Watch {
    id: u64,
    revision: Revision,
    min_revision: Revision,
    req: WatchRequest,
    replay: VecDeque<Arc<WatchBatch>>,
    rx: mpsc::Receiver<Arc<WatchBatch>>,
    lagged: Arc<AtomicBool>,
    engine: Weak<Inner>,
    ended: bool,
}

impl Watch {
    /// The store's revision when the watch was created: live batches are newer than this.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The id of this watch within its engine (unique while it lives).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What this watch was created with.
    pub fn request(&self) -> &WatchRequest {
        &self.req
    }

    /// `batch` cut down to what this watcher asked for; `None` if nothing is left.
    fn select(&self, batch: &WatchBatch) -> Option<WatchBatch> {
        if batch.revision < self.min_revision {
            return None;
        }
        let req = &self.req;
        let events: Vec<Event> = batch
            .events
            .iter()
            .filter(|e| req.range.contains(&e.kv.key))
            .filter(|e| match e.kind {
                EventKind::Put => !req.no_put,
                EventKind::Delete => !req.no_delete,
            })
            .map(|e| {
                let mut e = e.clone();
                if !req.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        (!events.is_empty()).then_some(WatchBatch { revision: batch.revision, events })
    }
}

impl Stream for Watch {
    type Item = Result<WatchBatch, WatchError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        while let Some(batch) = this.replay.pop_front() {
            if let Some(b) = this.select(&batch) {
                return Poll::Ready(Some(Ok(b)));
            }
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => {
                    if let Some(b) = this.select(&batch) {
                        return Poll::Ready(Some(Ok(b)));
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(
                        this.lagged.load(Ordering::Acquire).then_some(Err(WatchError::Lagged)),
                    );
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            engine.unregister_watch(self.id);
        }
    }
}
