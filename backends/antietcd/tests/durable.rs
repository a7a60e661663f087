//! Durable storage: what was synced survives a restart (keys, leases with their keys, deletes, revision,
//! the history watches need), checkpoints bound the log, and a failing disk refuses writes without
//! applying them.

#![allow(clippy::unwrap_used)]

use antietcd::durable::{Durable, DurableOptions};
use antietcd::wal::{FaultPoint, WalOptions};
use antietcd::*;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("antietcd-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn open(d: &std::path::Path, options: DurableOptions) -> (Engine, Durable) {
    Durable::open(d, Config::default(), options).await.unwrap()
}

fn value(e: &Engine, k: &str) -> Option<String> {
    e.get(k.as_bytes()).unwrap().1.map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
}

/// Without a clean close (a crash after sync), everything synced is back: values, deletes, transactions,
/// leases with their keys, revisions; and the next write continues the revision sequence.
#[tokio::test]
async fn synced_state_survives_a_crash() {
    let d = dir("crash");
    let (e, durable) = open(&d, DurableOptions::default()).await;
    let lease = e.lease_grant(60, None).unwrap().id;
    e.put(PutRequest::new("a", "1")).unwrap();
    e.put(PutRequest::new("leased", "x").with_lease(lease)).unwrap();
    e.put(PutRequest::new("gone", "x")).unwrap();
    e.delete_range(&DeleteRequest { range: KeyRange::key("gone"), prev_kv: false }).unwrap();
    let txn = TxnRequest {
        compare: vec![Compare::new("a", CompareResult::Equal, CompareTarget::Value("1".into()))],
        success: vec![TxnOp::Put(PutRequest::new("t1", "y")), TxnOp::Put(PutRequest::new("t2", "y"))],
        failure: vec![],
    };
    assert!(e.txn(&txn).unwrap().succeeded);
    let revision = e.revision();
    let kv_a = e.get(b"a").unwrap().1.unwrap();
    durable.sync().await.unwrap();
    // Crash: no close, no checkpoint.
    drop(durable);
    e.close();

    let (e, durable) = open(&d, DurableOptions::default()).await;
    assert_eq!(durable.recovery().replayed, 6, "grant, 4 writes, 1 txn");
    assert_eq!(e.revision(), revision);
    assert_eq!(e.get(b"a").unwrap().1.unwrap(), kv_a, "revisions and versions too");
    assert_eq!((value(&e, "t1"), value(&e, "t2")), (Some("y".into()), Some("y".into())));
    assert_eq!(value(&e, "gone"), None);
    assert_eq!(e.get(b"leased").unwrap().1.unwrap().lease, Some(lease));
    assert_eq!(e.leases(), [lease]);
    e.lease_revoke(lease).unwrap();
    assert_eq!(value(&e, "leased"), None, "the lease still owns its key");
    assert_eq!(e.put(PutRequest::new("b", "2")).unwrap().revision, revision + 2);
    durable.close().await.unwrap();
}

/// Watches that start in the replayed history get it; earlier starts are reported as compacted.
#[tokio::test]
async fn watch_history_survives_a_restart() {
    let d = dir("history");
    let (e, durable) = open(&d, DurableOptions::default()).await;
    for i in 1..=5 {
        e.put(PutRequest::new("w", i.to_string())).unwrap();
    }
    e.delete_range(&DeleteRequest { range: KeyRange::key("w"), prev_kv: false }).unwrap(); // revision 6
    durable.sync().await.unwrap();
    drop(durable);
    e.close();
    let (e, durable) = open(&d, DurableOptions::default()).await;
    let mut w =
        e.watch(WatchRequest { range: KeyRange::key("w"), start_revision: 4, ..Default::default() }).unwrap();
    let mut kinds: Vec<(Revision, EventKind)> = Vec::new();
    for _ in 0..3 {
        let b = w.next().await.unwrap().unwrap();
        kinds.push((b.revision, b.events[0].kind));
    }
    assert_eq!(kinds, [(4, EventKind::Put), (5, EventKind::Put), (6, EventKind::Delete)], "tombstones too");
    // After a checkpoint, history before it is gone: an earlier start is refused, not silently short.
    durable.checkpoint().await.unwrap();
    drop(durable);
    e.close();
    let (e, durable) = open(&d, DurableOptions::default()).await;
    assert_eq!(durable.recovery().checkpoint_revision, Some(6));
    let err = e
        .watch(WatchRequest { range: KeyRange::all(), start_revision: 5, ..Default::default() })
        .unwrap_err();
    assert!(matches!(err, Error::Compacted { .. }), "{err:?}");
    assert!(e
        .watch(WatchRequest { range: KeyRange::all(), start_revision: 7, ..Default::default() })
        .is_ok());
    durable.close().await.unwrap();
}

/// Automatic checkpoints keep the log short, and recovery = checkpoint + the records after it.
#[tokio::test]
async fn checkpoints_bound_the_log() {
    let d = dir("checkpoints");
    let options = DurableOptions::default()
        .with_checkpoint_every(100)
        .with_wal(WalOptions::default().with_segment_bytes(4096));
    let (e, durable) = open(&d, options.clone()).await;
    for i in 0..1000 {
        e.put(PutRequest::new(format!("k{}", i % 50), i.to_string())).unwrap();
    }
    durable.sync().await.unwrap();
    // Wait for the checkpointer to catch up with the last trigger.
    for _ in 0..100 {
        let logs = std::fs::read_dir(&d)
            .unwrap()
            .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
            .count();
        if logs <= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(durable);
    e.close();
    let (e, durable) = open(&d, options).await;
    assert!(durable.recovery().checkpoint_revision.is_some());
    assert!(durable.recovery().replayed < 300, "{:?}", durable.recovery());
    assert_eq!(e.revision(), 1000);
    assert_eq!(value(&e, "k49"), Some("999".into()));
    durable.close().await.unwrap();
}

/// A disk that fails: the write caught by the failure is not acknowledged (sync fails), and every later
/// write is refused and not applied; reads go on.
#[tokio::test]
async fn failing_disk_refuses_writes() {
    let d = dir("failing");
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let hook: antietcd::wal::FaultHook = Arc::new(move |p| {
        if p == FaultPoint::Sync && flag.load(Ordering::SeqCst) {
            Err(std::io::Error::other("simulated disk failure"))
        } else {
            Ok(())
        }
    });
    let (e, durable) =
        open(&d, DurableOptions::default().with_wal(WalOptions::default().with_fault_hook(hook))).await;
    e.put(PutRequest::new("k", "ok")).unwrap();
    durable.sync().await.unwrap();
    broken.store(true, Ordering::SeqCst);
    e.put(PutRequest::new("k", "unacknowledged")).unwrap();
    assert!(durable.sync().await.is_err(), "not on disk: not acknowledged");
    let refused = e.put(PutRequest::new("k", "refused"));
    assert!(matches!(refused, Err(Error::Journal(_))), "{refused:?}");
    assert_ne!(value(&e, "k").as_deref(), Some("refused"), "a refused write is not applied");
    assert!(matches!(e.lease_grant(10, None), Err(Error::Journal(_))));
    assert!(e.range(&RangeRequest::new(KeyRange::all())).is_ok());
    drop(durable);
    e.close();
    // After the disk is back, a restart has what was acknowledged, possibly the write whose sync failed
    // (it was written, only not confirmed), and never the refused one.
    broken.store(false, Ordering::SeqCst);
    let (e, durable) = open(&d, DurableOptions::default()).await;
    let v = value(&e, "k");
    assert!(v.as_deref() == Some("ok") || v.as_deref() == Some("unacknowledged"), "{v:?}");
    durable.close().await.unwrap();
}

/// A real full disk: the store on a 256 KiB tmpfs. Writes succeed until the disk fills; then the write is
/// not acknowledged (ENOSPC), later ones are refused, and a restart on the same full disk has every
/// acknowledged write. Needs root (it mounts the tmpfs), as CI has.
#[tokio::test]
async fn full_disk_on_a_small_tmpfs() {
    struct Mount(PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let mnt = dir("tmpfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount(8) is needed");
    assert!(status.success(), "mounting a tmpfs failed: this test needs root (as CI runs)");
    let _mount = Mount(mnt.clone());
    let d = mnt.join("store");
    let options = DurableOptions::default().with_checkpoint_every(0);
    let (e, durable) = open(&d, options.clone()).await;
    let value = "v".repeat(4000);
    let mut acknowledged = Vec::new();
    let mut failure = None;
    for i in 0..1000 {
        let key = format!("k{i}");
        match e.put(PutRequest::new(key.clone(), value.clone())) {
            Ok(_) => match durable.sync().await {
                Ok(()) => acknowledged.push(key),
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            },
            Err(err) => {
                failure = Some(err.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("a 256 KiB disk must fill up");
    assert!(failure.contains("No space left"), "{failure}");
    assert!(acknowledged.len() > 20, "{} writes fitted", acknowledged.len());
    assert!(matches!(e.put(PutRequest::new("after", "x")), Err(Error::Journal(_))));
    drop(durable);
    e.close();
    let (e, durable) = open(&d, options).await;
    for key in &acknowledged {
        assert!(e.get(key.as_bytes()).unwrap().1.is_some(), "{key} was acknowledged and is lost");
    }
    drop(durable);
    e.close();
}
