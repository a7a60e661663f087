//! The cases, written once. Each ports a case of Go valkeyrie's testsuite with exact assertions, or
//! checks a promise we make beyond it; the doc line says which.

use super::harness::Env;
use futures::StreamExt;
use std::time::Duration;
use tokio::time::timeout;
use valkeyrie::{Error, Event, EventKind, KVPair, LockOptions, ReadOptions, TreeBatch, WriteOptions};

/// How long a case waits for something that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);

async fn next<T>(s: &mut futures::stream::BoxStream<'static, valkeyrie::Result<T>>) -> T {
    match timeout(PROMPT, s.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("stream error: {e:?}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("nothing arrived within {PROMPT:?}"),
    }
}

async fn assert_quiet<T: std::fmt::Debug>(s: &mut futures::stream::BoxStream<'static, valkeyrie::Result<T>>) {
    if let Ok(item) = timeout(Duration::from_millis(300), s.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}

fn keys(pairs: &[KVPair]) -> Vec<&str> {
    pairs.iter().map(|p| p.key.as_str()).collect()
}

fn event_keys(b: &TreeBatch) -> Vec<(EventKind, &str)> {
    b.events.iter().map(|e| (e.kind, e.pair.key.as_str())).collect()
}

/// Polls `cond` until it holds or `PROMPT` passes.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PROMPT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// valkeyrie testPutGetDeleteExists, exact: missing keys are KeyNotFound, trailing-slash keys are
/// ordinary keys, LastIndex is never 0.
pub async fn put_get_delete_exists(env: &Env) {
    let s = &*env.store;
    assert!(matches!(s.get("testPutGetDelete_not_exist_key", None).await, Err(Error::KeyNotFound { .. })));
    assert!(matches!(s.delete("testPutGetDelete_not_exist_key").await, Err(Error::KeyNotFound { .. })));
    let keys: &[&str] = if env.caps.trailing_slash_keys {
        &[
            "testPutGetDeleteExists",
            "testPutGetDeleteExists/",
            "testPutGetDeleteExists/testbar/",
            "testPutGetDeleteExists/testbar/testfoobar",
        ]
    } else {
        &["testPutGetDeleteExists", "testPutGetDeleteExists/testbar/testfoobar"]
    };
    for &key in keys {
        let put = s.put(key, b"bar", None).await.unwrap();
        assert_eq!(put.key, key);
        let pair = s.get(key, None).await.unwrap();
        assert_eq!((pair.key.as_str(), pair.value.as_slice()), (key, &b"bar"[..]));
        assert_ne!(pair.last_index, 0);
        assert_eq!(pair.last_index, put.last_index, "put returns the index get sees");
        assert!(s.exists(key, None).await.unwrap());
        s.delete(key).await.unwrap();
        assert!(matches!(s.get(key, None).await, Err(Error::KeyNotFound { key: k }) if k == key));
        assert!(!s.exists(key, None).await.unwrap());
    }
    // A serializable read sees the same data.
    s.put("stale-ok", b"v", None).await.unwrap();
    let relaxed = Some(ReadOptions::new().with_consistent(false));
    assert_eq!(s.get("stale-ok", relaxed).await.unwrap().value, b"v");
}

/// Values are bytes: empty, binary and large values round-trip; unusual keys work; an empty key is a
/// typed error, not a panic.
pub async fn edge_values_and_keys(env: &Env) {
    let s = &*env.store;
    let binary: Vec<u8> = if env.caps.binary_values { (0..=255u8).collect() } else { b"text only".to_vec() };
    let large = vec![b'x'; 512 * 1024];
    for (key, value) in [
        ("empty", &b""[..]),
        ("binary", &binary[..]),
        ("large", &large[..]),
        ("ключ/κλειδί/鍵", &b"unicode"[..]),
        ("with space/and%percent", &b"v"[..]),
    ] {
        s.put(key, value, None).await.unwrap();
        let pair = s.get(key, None).await.unwrap();
        assert_eq!(pair.key, key);
        assert_eq!(pair.value, value, "{key}");
    }
    let huge_key = "k".repeat(64 * 1024);
    s.put(&huge_key, b"v", None).await.unwrap();
    assert_eq!(s.get(&huge_key, None).await.unwrap().key, huge_key);
    let raw = env.connect("").await;
    assert!(matches!(raw.put("", b"v", None).await, Err(Error::InvalidKey { .. })));
    assert!(matches!(raw.get("", None).await, Err(Error::InvalidKey { .. })));
    raw.close().await.unwrap();
}

/// valkeyrie testList, exact, plus directory semantics: `dir` and `dir/` are the same; the directory key
/// itself is excluded; a sibling sharing the string prefix is not part of it; results are sorted.
pub async fn list(env: &Env) {
    let s = &*env.store;
    s.put("testList", b"", None).await.unwrap();
    s.put("testList/child", b"first", None).await.unwrap();
    s.put("testList/subfolder", b"", None).await.unwrap();
    for k in ["key3", "key1", "key2"] {
        s.put(&format!("testList/subfolder/{k}"), b"value", None).await.unwrap();
    }
    s.put("testListSibling/x", b"not mine", None).await.unwrap();
    for parent in ["testList", "testList/"] {
        let pairs = s.list(parent, None).await.unwrap();
        assert_eq!(
            keys(&pairs),
            [
                "testList/child",
                "testList/subfolder",
                "testList/subfolder/key1",
                "testList/subfolder/key2",
                "testList/subfolder/key3"
            ],
            "{parent}"
        );
        assert_eq!(pairs[0].value, b"first");
        assert!(pairs.iter().all(|p| p.last_index != 0));
    }
    assert!(s.list("testList/child", None).await.unwrap().is_empty(), "a leaf lists empty");
    assert_eq!(s.list("testList/subfolder", None).await.unwrap().len(), 3);
    assert!(
        matches!(s.list("idontexist", None).await, Err(Error::KeyNotFound { key }) if key == "idontexist")
    );
    // A directory with children but no key of its own exists.
    assert_eq!(keys(&s.list("testListSibling", None).await.unwrap()), ["testListSibling/x"]);
    // The namespace's root lists everything in it; an empty namespace's root is empty, not missing.
    assert_eq!(s.list("", None).await.unwrap().len(), 7);
    let empty = env.connect(&format!("{}/empty-namespace", env.ns)).await;
    assert!(empty.list("/", None).await.unwrap().is_empty());
    empty.close().await.unwrap();
}

/// valkeyrie testDeleteTree, exact, plus: the directory key goes too, siblings stay, an empty tree is
/// KeyNotFound.
pub async fn delete_tree(env: &Env) {
    let s = &*env.store;
    s.put("testDeleteTree", b"dir", None).await.unwrap();
    s.put("testDeleteTree/first", b"first", None).await.unwrap();
    s.put("testDeleteTree/second", b"second", None).await.unwrap();
    s.put("testDeleteTreeSibling", b"stays", None).await.unwrap();
    for k in ["testDeleteTree/first", "testDeleteTree/second"] {
        assert_ne!(s.get(k, None).await.unwrap().last_index, 0);
    }
    s.delete_tree("testDeleteTree/").await.unwrap();
    for k in ["testDeleteTree", "testDeleteTree/first", "testDeleteTree/second"] {
        assert!(matches!(s.get(k, None).await, Err(Error::KeyNotFound { .. })), "{k}");
    }
    assert!(s.exists("testDeleteTreeSibling", None).await.unwrap());
    assert!(matches!(s.delete_tree("testDeleteTree").await, Err(Error::KeyNotFound { .. })));
}

/// valkeyrie testListLockKey, exact: held locks' queue keys never show in a listing of a directory above
/// them, but their values do.
pub async fn list_lock_key(env: &Env) {
    let s = &*env.store;
    s.put("testListLockSide", b"val", None).await.unwrap();
    s.put("testListLockSide/subfolder", b"val", None).await.unwrap();
    let mut locks = Vec::new();
    for i in 1..=3 {
        let key = format!("testListLockSide/subfolder/key{i}");
        s.put(&key, b"val", None).await.unwrap();
        let opts = LockOptions::new().with_value("locked").with_ttl(Duration::from_secs(2));
        let lock = s.new_lock(&key, Some(opts)).await.unwrap();
        lock.lock().await.unwrap();
        locks.push(lock);
    }
    let pairs = s.list("testListLockSide", None).await.unwrap();
    assert_eq!(pairs.len(), 4, "{:?}", keys(&pairs));
    assert!(pairs.iter().all(|p| !p.key.contains("___lock")));
    assert!(pairs.iter().skip(1).all(|p| p.value == b"locked"));
    for lock in &locks {
        lock.unlock().await.unwrap();
    }
}

/// valkeyrie testAtomicPut, exact: create-only on an existing key is KeyExists, a stale index is
/// KeyModified, a fresh one succeeds and returns the new index.
pub async fn atomic_put(env: &Env) {
    let s = &*env.store;
    s.put("testAtomicPut", b"world", None).await.unwrap();
    let pair = s.get("testAtomicPut", None).await.unwrap();
    assert_eq!(pair.value, b"world");
    assert!(matches!(
        s.atomic_put("testAtomicPut", b"WORLD", None, None).await,
        Err(Error::KeyExists { .. })
    ));
    let new = s.atomic_put("testAtomicPut", b"WORLD", Some(&pair), None).await.unwrap();
    assert!(new.last_index > pair.last_index);
    assert_eq!(s.get("testAtomicPut", None).await.unwrap().last_index, new.last_index);
    let mut stale = pair.clone();
    stale.last_index = 6744;
    assert!(matches!(
        s.atomic_put("testAtomicPut", b"WORLDWORLD", Some(&stale), None).await,
        Err(Error::KeyModified { .. })
    ));
    assert!(matches!(
        s.atomic_put("testAtomicPut", b"x", Some(&pair), None).await,
        Err(Error::KeyModified { .. })
    ));
    assert_eq!(s.get("testAtomicPut", None).await.unwrap().value, b"WORLD");
    // A stale token on a deleted key is KeyModified too (the key changed: it went away).
    s.delete("testAtomicPut").await.unwrap();
    assert!(matches!(
        s.atomic_put("testAtomicPut", b"x", Some(&new), None).await,
        Err(Error::KeyModified { .. })
    ));
    let mut no_index = new.clone();
    no_index.last_index = 0;
    assert!(matches!(
        s.atomic_put("testAtomicPut", b"x", Some(&no_index), None).await,
        Err(Error::PreviousNotSpecified)
    ));
}

/// valkeyrie testAtomicPutCreate, exact (libkv's version asserted nothing).
pub async fn atomic_put_create(env: &Env) {
    let s = &*env.store;
    let key = "testAtomicPutCreate/create";
    s.atomic_put(key, b"putcreate", None, None).await.unwrap();
    let pair = s.get(key, None).await.unwrap();
    assert_eq!(pair.value, b"putcreate");
    assert!(matches!(s.atomic_put(key, b"putcreate", None, None).await, Err(Error::KeyExists { .. })));
    s.atomic_put(key, b"PUTCREATE", Some(&pair), None).await.unwrap();
    assert_eq!(s.get(key, None).await.unwrap().value, b"PUTCREATE");
}

/// valkeyrie testAtomicPutWithSlashSuffixKey.
pub async fn atomic_put_with_slash_suffix_key(env: &Env) {
    if !env.caps.trailing_slash_keys {
        return; // Node antietcd stores `a/` as `a` (compat.md).
    }
    let s = &*env.store;
    let pair = s.atomic_put("testAtomicPutWithSlashSuffixKey/key/", b"", None, None).await.unwrap();
    assert_ne!(pair.last_index, 0);
    assert_eq!(s.get("testAtomicPutWithSlashSuffixKey/key/", None).await.unwrap().value, b"");
}

/// valkeyrie testAtomicDelete, exact and with Go etcdv3's fault fixed: a stale index is KeyModified (Go
/// returned KeyNotFound), a deleted key is KeyNotFound, a pair without index is PreviousNotSpecified.
pub async fn atomic_delete(env: &Env) {
    let s = &*env.store;
    s.put("testAtomicDelete", b"world", None).await.unwrap();
    let pair = s.get("testAtomicDelete", None).await.unwrap();
    let mut stale = pair.clone();
    stale.last_index = 6744;
    assert!(matches!(s.atomic_delete("testAtomicDelete", &stale).await, Err(Error::KeyModified { .. })));
    assert!(s.exists("testAtomicDelete", None).await.unwrap());
    let mut no_index = pair.clone();
    no_index.last_index = 0;
    assert!(matches!(s.atomic_delete("testAtomicDelete", &no_index).await, Err(Error::PreviousNotSpecified)));
    s.atomic_delete("testAtomicDelete", &pair).await.unwrap();
    assert!(matches!(s.atomic_delete("testAtomicDelete", &pair).await, Err(Error::KeyNotFound { .. })));
}

/// valkeyrie testWatch, exact: the current value first, then one event per put, even of an identical value,
/// with the key as the caller named it and increasing indexes.
pub async fn watch(env: &Env) {
    let s = &*env.store;
    s.put("testWatch", b"world", None).await.unwrap();
    let mut w = s.watch("testWatch", None).await.unwrap();
    let first = next(&mut w).await;
    assert_eq!(
        (first.kind, first.pair.key.as_str(), first.pair.value.as_slice()),
        (EventKind::Put, "testWatch", &b"world"[..])
    );
    let mut last = first.pair.last_index;
    for i in 0..3 {
        // Node antietcd ignores a put of the value a key already has: there, make each put a change.
        let value: &[u8] = if env.caps.identical_put_is_change {
            b"world!"
        } else {
            [b"world!0", b"world!1", b"world!2"][i]
        };
        let put = s.put("testWatch", value, None).await.unwrap();
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.kind, ev.pair.key.as_str(), ev.pair.value.as_slice()),
            (EventKind::Put, "testWatch", value)
        );
        assert_eq!(ev.pair.last_index, put.last_index);
        assert!(ev.pair.last_index > last);
        last = ev.pair.last_index;
    }
    // Neighbours sharing the string prefix are not this key.
    s.put("testWatch2", b"x", None).await.unwrap();
    s.put("testWatch/child", b"x", None).await.unwrap();
    assert_quiet(&mut w).await;
}

/// Beyond valkeyrie (libkv#16, and typed events): a watch on a missing key starts with a Delete event,
/// then sees creation, update and deletion with their kinds.
pub async fn watch_missing_key(env: &Env) {
    let s = &*env.store;
    let mut w = s.watch("later", None).await.unwrap();
    let first = next(&mut w).await;
    assert_eq!((first.kind, first.pair.value.len()), (EventKind::Delete, 0));
    let created = s.put("later", b"1", None).await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!(
        (ev.kind, ev.pair.value.as_slice(), ev.pair.last_index),
        (EventKind::Put, &b"1"[..], created.last_index)
    );
    assert!(ev.pair.last_index > first.pair.last_index);
    s.put("later", b"", None).await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!((ev.kind, ev.pair.value.len()), (EventKind::Put, 0), "an empty value is a put, not a delete");
    s.delete("later").await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!((ev.kind, ev.pair.key.as_str()), (EventKind::Delete, "later"));
}

/// No gap between the snapshot and the changes: writes racing with the watch's creation are seen exactly
/// once, in order.
pub async fn watch_no_gap(env: &Env) {
    let s = env.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..50u32 {
            s.put("race", i.to_string().as_bytes(), None).await.unwrap();
        }
    });
    let mut w = env.store.watch("race", None).await.unwrap();
    let mut seen: Vec<u32> = Vec::new();
    let mut last_index = 0;
    loop {
        let ev = next(&mut w).await;
        assert!(ev.pair.last_index > last_index || ev.kind == EventKind::Delete, "indexes increase");
        last_index = ev.pair.last_index.max(last_index);
        if ev.kind == EventKind::Put {
            seen.push(ev.pair.value_str().unwrap().parse().unwrap());
        }
        if seen.last() == Some(&49) {
            break;
        }
    }
    writer.await.unwrap();
    let from = seen[0];
    assert_eq!(seen, (from..50).collect::<Vec<_>>(), "every value after the first, once, in order");
}

/// valkeyrie testWatchTree, with what users asked for (libkv#107): a sorted snapshot first, then one
/// batch per revision holding only the changes, with kinds; a tree delete is one batch.
pub async fn watch_tree(env: &Env) {
    let s = &*env.store;
    for i in 1..=3 {
        s.put(&format!("testWatchTree/node{i}"), format!("node{i}").as_bytes(), None).await.unwrap();
    }
    s.put("testWatchTree", b"dir key", None).await.unwrap();
    let mut w = s.watch_tree("testWatchTree", None).await.unwrap();
    let snap = next(&mut w).await;
    assert!(snap.snapshot);
    assert_eq!(
        event_keys(&snap),
        [
            (EventKind::Put, "testWatchTree/node1"),
            (EventKind::Put, "testWatchTree/node2"),
            (EventKind::Put, "testWatchTree/node3")
        ]
    );
    assert_eq!(snap.events[0].pair.value, b"node1");
    s.delete("testWatchTree/node3").await.unwrap();
    let b = next(&mut w).await;
    assert!(!b.snapshot);
    assert_eq!(event_keys(&b), [(EventKind::Delete, "testWatchTree/node3")]);
    assert!(b.revision > snap.revision);
    let put = s.put("testWatchTree/sub/node4", b"4", None).await.unwrap();
    let b = next(&mut w).await;
    assert_eq!(event_keys(&b), [(EventKind::Put, "testWatchTree/sub/node4")]);
    assert_eq!((b.revision, b.events[0].pair.last_index), (put.last_index, put.last_index));
    // Outside the directory, the directory key itself, and lock queues: nothing.
    s.put("testWatchTreeSibling", b"x", None).await.unwrap();
    s.put("testWatchTree", b"dir key 2", None).await.unwrap();
    let lock = s.new_lock("testWatchTree/leader", None).await.unwrap();
    lock.lock().await.unwrap();
    let b = next(&mut w).await;
    assert_eq!(event_keys(&b), [(EventKind::Put, "testWatchTree/leader")], "the lock's value, not its queue");
    s.delete_tree("testWatchTree").await.unwrap();
    let b = next(&mut w).await;
    let mut deleted = event_keys(&b);
    deleted.sort_by_key(|(_, k)| *k);
    assert_eq!(
        deleted,
        [
            (EventKind::Delete, "testWatchTree/leader"),
            (EventKind::Delete, "testWatchTree/node1"),
            (EventKind::Delete, "testWatchTree/node2"),
            (EventKind::Delete, "testWatchTree/sub/node4"),
        ],
        "one atomic delete, one batch"
    );
    drop(lock);
}

/// A watched directory that does not exist yet can be watched (valkeyrie etcdv3 refused it).
pub async fn watch_tree_missing_dir(env: &Env) {
    let s = &*env.store;
    let mut w = s.watch_tree("services/web", None).await.unwrap();
    let snap = next(&mut w).await;
    assert!(snap.snapshot && snap.events.is_empty());
    s.put("services/web/a", b"10.0.0.1", None).await.unwrap();
    let b = next(&mut w).await;
    assert_eq!(event_keys(&b), [(EventKind::Put, "services/web/a")]);
}

/// A consumer that falls behind gets an explicit Lagged error and then a fresh snapshot, never silent loss.
pub async fn lagging_watcher(env: &Env) {
    let Some(capacity) = env.caps.lag_after else { return };
    let s = &*env.store;
    let mut w = s.watch_tree("lag", None).await.unwrap();
    assert!(next(&mut w).await.snapshot);
    let mut last = 0;
    for i in 0..capacity + 20 {
        last = s.put(&format!("lag/k{}", i % 5), i.to_string().as_bytes(), None).await.unwrap().last_index;
    }
    let mut saw_lagged = false;
    loop {
        match timeout(PROMPT, w.next()).await.expect("stream stalled").expect("stream ended") {
            Err(Error::Lagged) => saw_lagged = true,
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(b) if b.snapshot => {
                assert!(saw_lagged, "a snapshot only after the error");
                assert_eq!(b.events.len(), 5);
                assert!(b.revision >= last);
                break;
            }
            Ok(b) => assert!(!saw_lagged, "no stale batch after the error: {b:?}"),
        }
    }
    s.put("lag/after", b"x", None).await.unwrap();
    assert_eq!(event_keys(&next(&mut w).await), [(EventKind::Put, "lag/after")], "live again");
}

/// valkeyrie testLockUnlock with DeleteOnUnlock, exact, plus: the value goes on unlock; the same Lock can be
/// taken again; locking twice returns the same acquisition.
pub async fn lock_unlock(env: &Env) {
    let s = &*env.store;
    let opts =
        LockOptions::new().with_value("bar").with_ttl(Duration::from_secs(2)).with_delete_on_unlock(true);
    let lock = s.new_lock("testLockUnlock", Some(opts)).await.unwrap();
    let held = lock.lock().await.unwrap();
    assert!(!held.lost().is_lost());
    let pair = s.get("testLockUnlock", None).await.unwrap();
    assert_eq!(pair.value, b"bar");
    assert_ne!(pair.last_index, 0);
    assert_eq!(lock.lock().await.unwrap().fencing_token(), held.fencing_token(), "re-entrant");
    lock.unlock().await.unwrap();
    assert!(matches!(s.get("testLockUnlock", None).await, Err(Error::KeyNotFound { .. })));
    let again = lock.lock().await.unwrap();
    assert!(again.fencing_token() > held.fencing_token());
    assert_eq!(s.get("testLockUnlock", None).await.unwrap().value, b"bar");
    lock.unlock().await.unwrap();
    lock.unlock().await.unwrap();
}

/// valkeyrie testLockTTL, exact: a holder renews past its TTL; a waiter with a deadline gives up; when the
/// holder's store closes, the holder's lost signal fires and the waiter gets the lock and writes its value.
pub async fn lock_ttl(env: &Env) {
    let (kv, other) = (&*env.store, &*env.other);
    let opts = LockOptions::new().with_value("bar").with_ttl(Duration::from_secs(2));
    let lock_oc = other.new_lock("testLockTTL", Some(opts)).await.unwrap();
    let held = lock_oc.lock().await.unwrap();
    assert_eq!(other.get("testLockTTL", None).await.unwrap().value, b"bar");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!held.lost().is_lost(), "renewed past its TTL");
    let opts = LockOptions::new().with_value("foobar").with_ttl(Duration::from_secs(3));
    let lock = kv.new_lock("testLockTTL", Some(opts)).await.unwrap();
    assert!(timeout(Duration::from_secs(4), lock.lock()).await.is_err(), "must block while held");
    other.close().await.unwrap();
    let mut lost = held.lost();
    timeout(PROMPT, lost.wait()).await.expect("the holder learns it lost the lock");
    let mine = timeout(Duration::from_secs(4), lock.lock()).await.expect("unable to take the lock").unwrap();
    assert!(mine.fencing_token() > held.fencing_token());
    assert_eq!(kv.get("testLockTTL", None).await.unwrap().value, b"foobar");
    lock.unlock().await.unwrap();
}

/// libkv testLockWait: a second Lock on the same store waits while the first is held (renewed past its
/// TTL), and gets it when the first unlocks.
pub async fn lock_wait(env: &Env) {
    let s = env.store.clone();
    let opts = LockOptions::new().with_ttl(Duration::from_secs(2));
    let lock1 = s.new_lock("testLockWait", Some(opts.clone())).await.unwrap();
    let first = lock1.lock().await.unwrap();
    let lock2 = s.new_lock("testLockWait", Some(opts)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let held = lock2.lock().await.unwrap();
        (lock2, held)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiter.is_finished(), "the second lock must wait");
    lock1.unlock().await.unwrap();
    let (lock2, second) = timeout(PROMPT, waiter).await.expect("woken by unlock").unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    lock2.unlock().await.unwrap();
}

/// Waiters are served in order of arrival, each with a larger fencing token, and never two at once.
pub async fn lock_fifo_and_fencing(env: &Env) {
    let s = env.store.clone();
    let holder = s.new_lock("fifo", None).await.unwrap();
    let first = holder.lock().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..3u32 {
        let lock = s.new_lock("fifo", None).await.unwrap();
        let (tx, inside) = (tx.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            let held = lock.lock().await.unwrap();
            assert!(!inside.swap(true, std::sync::atomic::Ordering::SeqCst), "two holders at once");
            tx.send((i, held.fencing_token())).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            inside.store(false, std::sync::atomic::Ordering::SeqCst);
            lock.unlock().await.unwrap();
        }));
        // Let waiter i enqueue before waiter i + 1.
        eventually("waiter enqueued", || {
            let s = s.clone();
            async move { s.list("fifo___lock", None).await.map(|l| l.len()).unwrap_or(0) == i as usize + 2 }
        })
        .await;
    }
    holder.unlock().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(timeout(PROMPT, rx.recv()).await.unwrap().unwrap());
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(order.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
    let tokens: Vec<u64> =
        std::iter::once(first.fencing_token()).chain(order.iter().map(|(_, t)| *t)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// Giving up on a lock (dropping the future) leaves the queue at once, so it does not delay the others.
pub async fn lock_cancel(env: &Env) {
    let s = &*env.store;
    let holder = s.new_lock("cancel", None).await.unwrap();
    holder.lock().await.unwrap();
    let quitter = s.new_lock("cancel", None).await.unwrap();
    assert!(timeout(Duration::from_millis(500), quitter.lock()).await.is_err());
    eventually("the cancelled waiter left the queue", || async {
        s.list("cancel___lock", None).await.map(|l| l.len()).unwrap_or(0) == 1
    })
    .await;
    holder.unlock().await.unwrap();
    let next_one = s.new_lock("cancel", None).await.unwrap();
    timeout(Duration::from_secs(2), next_one.lock()).await.expect("not delayed by the quitter").unwrap();
    next_one.unlock().await.unwrap();
}

/// valkeyrie testPutTTL, exact: keys put with a TTL by a store that then closes are gone after the TTL.
pub async fn put_ttl(env: &Env) {
    let (kv, other) = (&*env.store, &*env.other);
    let opts = Some(WriteOptions::new().with_ttl(Duration::from_secs(2)));
    other.put("testPutTTL", b"foo", opts.clone()).await.unwrap();
    other.put("second", b"bar", opts).await.unwrap();
    assert_eq!(kv.get("testPutTTL", None).await.unwrap().value, b"foo");
    assert_eq!(kv.get("second", None).await.unwrap().value, b"bar");
    other.close().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(matches!(kv.get("testPutTTL", None).await, Err(Error::KeyNotFound { .. })));
    assert!(matches!(kv.get("second", None).await, Err(Error::KeyNotFound { .. })));
}

/// A TTL without keep-alive expires even while the store stays open; the key is there until then.
pub async fn ttl_expires(env: &Env) {
    let s = &*env.store;
    let mut w = s.watch("ephemeral", None).await.unwrap();
    assert_eq!(next(&mut w).await.kind, EventKind::Delete);
    s.put("ephemeral", b"x", Some(WriteOptions::new().with_ttl(Duration::from_millis(1500)))).await.unwrap();
    assert_eq!(next(&mut w).await.kind, EventKind::Put);
    assert!(s.exists("ephemeral", None).await.unwrap());
    let expired = next(&mut w).await;
    assert_eq!(
        (expired.kind, expired.pair.key.as_str()),
        (EventKind::Delete, "ephemeral"),
        "expiry is a typed delete"
    );
    assert!(!s.exists("ephemeral", None).await.unwrap());
}

/// valkeyrie TestEtcdV3KeepAlive, for every backend: a keep-alive key outlives its TTL while the store is
/// open, and goes when the store closes.
pub async fn keep_alive(env: &Env) {
    let (kv, other) = (&*env.store, &*env.other);
    let opts = Some(WriteOptions::new().with_ttl(Duration::from_secs(1)).with_keep_alive(true));
    other.put("alive", b"bar", opts.clone()).await.unwrap();
    other.put("alive2", b"baz", opts).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(kv.get("alive", None).await.unwrap().value, b"bar");
    assert_eq!(
        kv.get("alive2", None).await.unwrap().lease,
        kv.get("alive", None).await.unwrap().lease,
        "one shared lease"
    );
    other.close().await.unwrap();
    assert!(matches!(kv.get("alive", None).await, Err(Error::KeyNotFound { .. })), "revoked at close");
}

/// Leases granted explicitly: keys attached to one go when it is revoked or its handle dropped.
pub async fn leases(env: &Env) {
    let s = &*env.store;
    let lease = s.grant_lease(Duration::from_secs(5)).await.unwrap();
    assert_eq!(lease.ttl(), Duration::from_secs(5));
    let opts = Some(WriteOptions::new().with_lease(lease.id()));
    s.put("leased/a", b"1", opts.clone()).await.unwrap();
    s.put("leased/b", b"2", opts).await.unwrap();
    assert_eq!(s.get("leased/a", None).await.unwrap().lease, Some(lease.id()));
    lease.revoke().await.unwrap();
    assert!(matches!(s.list("leased", None).await, Err(Error::KeyNotFound { .. })));
    let lease = s.grant_lease(Duration::from_secs(5)).await.unwrap();
    s.put("leased/c", b"3", Some(WriteOptions::new().with_lease(lease.id()))).await.unwrap();
    drop(lease);
    eventually("dropping the handle revokes it", || async { !s.exists("leased/c", None).await.unwrap() })
        .await;
    let gone =
        s.put("leased/d", b"4", Some(WriteOptions::new().with_lease(valkeyrie::LeaseId(424242)))).await;
    assert!(matches!(gone, Err(Error::LeaseNotFound)), "{gone:?}");
    // An absurd TTL is an error from the backend, not a panic.
    assert!(s.grant_lease(Duration::MAX).await.is_err());
    assert!(s.put("leased/e", b"5", Some(WriteOptions::new().with_ttl(Duration::MAX))).await.is_err());
}

/// `prefix=` namespaces: stores with different prefixes do not see each other's keys; a store without a
/// prefix sees them under the prefix.
pub async fn prefix_namespaces(env: &Env) {
    let a = env.connect(&format!("{}/a", env.ns)).await;
    let b = env.connect(&format!("{}/b/", env.ns)).await;
    let raw = env.connect("").await;
    a.put("k", b"from a", None).await.unwrap();
    b.put("/k", b"from b", None).await.unwrap();
    assert_eq!(a.get("k", None).await.unwrap().value, b"from a");
    assert_eq!(b.get("k", None).await.unwrap().value, b"from b");
    assert_eq!(raw.get(&format!("{}/a/k", env.ns), None).await.unwrap().value, b"from a");
    assert_eq!(keys(&a.list("", None).await.unwrap()), ["k"]);
    let mut w = a.watch_tree("/", None).await.unwrap();
    assert_eq!(event_keys(&next(&mut w).await), [(EventKind::Put, "k")]);
    b.put("other", b"x", None).await.unwrap();
    a.put("mine", b"x", None).await.unwrap();
    assert_eq!(event_keys(&next(&mut w).await), [(EventKind::Put, "mine")]);
    for s in [a, b, raw] {
        s.close().await.unwrap();
    }
}

/// close(): later calls fail with Closed, watch streams end, locks are lost, other handles carry on, and
/// closing twice is fine.
pub async fn close(env: &Env) {
    let (s, other) = (&*env.store, &*env.other);
    let mut w = s.watch("k", None).await.unwrap();
    let _ = next(&mut w).await;
    let lock = s.new_lock("closing", None).await.unwrap();
    let held = lock.lock().await.unwrap();
    s.close().await.unwrap();
    s.close().await.unwrap();
    assert!(matches!(timeout(PROMPT, w.next()).await, Ok(None)), "the stream ends");
    let mut lost = held.lost();
    timeout(PROMPT, lost.wait()).await.expect("the lock is lost");
    assert!(matches!(s.get("k", None).await, Err(Error::Closed)));
    assert!(matches!(s.put("k", b"v", None).await, Err(Error::Closed)));
    assert!(matches!(s.watch("k", None).await, Err(Error::Closed)));
    assert!(matches!(s.list("", None).await, Err(Error::Closed)));
    other.put("k", b"still here", None).await.unwrap();
    let taken = other.new_lock("closing", None).await.unwrap();
    timeout(PROMPT, taken.lock()).await.expect("the closed store's lock was released").unwrap();
}

/// Typed events carry what happened: watch sees the event kinds in revision order across many writers.
pub async fn concurrent_writers_ordered(env: &Env) {
    let mut w = env.store.watch_tree("counters", None).await.unwrap();
    assert!(next(&mut w).await.snapshot);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = env.other.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                s.put(&format!("counters/{t}"), i.to_string().as_bytes(), None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = 0;
    let mut events: Vec<Event> = Vec::new();
    while events.len() < 40 {
        let b = next(&mut w).await;
        assert!(b.revision > last, "batches in revision order");
        last = b.revision;
        events.extend(b.events);
    }
    for t in 0..4 {
        let values: Vec<String> = events
            .iter()
            .filter(|e| e.pair.key == format!("counters/{t}"))
            .map(|e| e.pair.value_str().unwrap().to_owned())
            .collect();
        assert_eq!(values, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }
}

/// Election: the first candidate leads and publishes its value; others wait in order; proclaim changes
/// the value only while leading; resigning or closing hands over; observers see every change.
pub async fn election(env: &Env) {
    use valkeyrie::Election;
    let ttl = Duration::from_secs(2);
    let mine = Election::new(env.store.clone(), "election/leader").with_ttl(ttl);
    let theirs = Election::new(env.other.clone(), "election/leader").with_ttl(ttl);
    assert_eq!(mine.leader().await.unwrap(), None);
    let mut observed = mine.observe().await.unwrap();
    assert_eq!(timeout(PROMPT, observed.next()).await.unwrap().unwrap().unwrap(), None, "nobody leads yet");
    let first = mine.campaign("node-a").await.unwrap();
    let seen = timeout(PROMPT, observed.next()).await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(seen.value, b"node-a");
    assert_eq!(theirs.leader().await.unwrap().unwrap().value, b"node-a");
    let waiting = tokio::spawn(async move { theirs.campaign("node-b").await });
    first.proclaim("node-a v2").await.unwrap();
    let seen = timeout(PROMPT, observed.next()).await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(seen.value, b"node-a v2");
    assert!(!waiting.is_finished(), "the second candidate waits");
    let first_token = first.fencing_token();
    first.resign().await.unwrap();
    let second = timeout(PROMPT, waiting).await.expect("second candidate elected").unwrap().unwrap();
    assert!(second.fencing_token() > first_token);
    // Observers see the handover: possibly a moment with no leader, then the new value.
    loop {
        match timeout(PROMPT, observed.next()).await.unwrap().unwrap().unwrap() {
            None => continue,
            Some(pair) => {
                assert_eq!(pair.value, b"node-b");
                break;
            }
        }
    }
    // A deposed leader cannot proclaim; the new one loses leadership when its store closes.
    let stale = Election::new(env.store.clone(), "election/leader").with_ttl(ttl);
    assert_eq!(stale.leader().await.unwrap().unwrap().value, b"node-b");
    let mut lost = second.lost();
    env.other.close().await.unwrap();
    timeout(PROMPT, lost.wait()).await.expect("leadership lost on close");
    assert!(matches!(second.proclaim("too late").await, Err(Error::NotHeld { .. })));
    assert_eq!(timeout(PROMPT, observed.next()).await.unwrap().unwrap().unwrap(), None, "nobody leads");
}

/// Discovery: registered instances appear, update, and disappear on deregister and when their store
/// closes; a late subscriber gets the current set first; nested keys are not instances.
pub async fn discovery(env: &Env) {
    use valkeyrie::{discover, register};
    let ttl = Duration::from_secs(2);
    let a = register(env.store.clone(), "svc/web", "a", "10.0.0.1:80", ttl).await.unwrap();
    let mut sets = discover(&*env.store, "svc/web").await.unwrap();
    let set = next(&mut sets).await;
    assert_eq!(set.keys().collect::<Vec<_>>(), ["a"]);
    let b = register(env.other.clone(), "svc/web", "b", "10.0.0.2:80", ttl).await.unwrap();
    assert_eq!(next(&mut sets).await.keys().collect::<Vec<_>>(), ["a", "b"]);
    env.store.put("svc/web/a/health", b"nested, not an instance", None).await.unwrap();
    a.update("10.0.0.1:8080").await.unwrap();
    let set = loop {
        let set = next(&mut sets).await;
        if set["a"] == b"10.0.0.1:8080" {
            break set;
        }
    };
    assert_eq!(set.len(), 2);
    assert!(matches!(
        register(env.store.clone(), "svc/web", "x/y", "v", ttl).await,
        Err(Error::InvalidKey { .. })
    ));
    let late = discover(&*env.other, "svc/web/").await.unwrap().next().await.unwrap().unwrap();
    assert_eq!(late.len(), 2);
    a.deregister().await.unwrap();
    assert_eq!(next(&mut sets).await.keys().collect::<Vec<_>>(), ["b"]);
    let mut lost = b.lost();
    env.other.close().await.unwrap();
    assert!(next(&mut sets).await.is_empty(), "b's store closed");
    timeout(PROMPT, lost.wait()).await.expect("b learns it is gone");
}
