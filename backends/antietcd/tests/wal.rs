//! The write-ahead log on its own: round trips, group commit, torn tails cut at every offset, damage in
//! the middle refused with file and offset, checkpoints, segment rotation, and failing disks.

#![allow(clippy::unwrap_used)]

use antietcd::wal::{FaultPoint, Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("antietcd-wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn record(i: u64) -> Vec<u8> {
    format!("record {i} {}", "x".repeat((i % 7) as usize * 10)).into_bytes()
}

fn segments(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

async fn write(d: &Path, n: u64, options: WalOptions) {
    let (wal, _) = Wal::open(d, options).unwrap();
    let mut last = 0;
    for i in 1..=n {
        last = wal.append(record(i)).unwrap();
    }
    wal.sync(last).await.unwrap();
    wal.close().unwrap();
}

/// What is appended and synced comes back, in order, after reopening; appending continues the sequence.
#[tokio::test]
async fn round_trip() {
    let d = dir("roundtrip");
    write(&d, 100, WalOptions::default()).await;
    let (wal, rec) = Wal::open(&d, WalOptions::default()).unwrap();
    assert!(rec.checkpoint.is_none() && rec.truncated.is_none());
    assert_eq!(rec.records.len(), 100);
    for (i, (seq, payload)) in rec.records.iter().enumerate() {
        assert_eq!((*seq, payload.clone()), (i as u64 + 1, record(i as u64 + 1)));
    }
    assert_eq!(wal.append(b"next".to_vec()).unwrap(), 101);
}

/// Many concurrent writers share syncs: far fewer fdatasyncs than records, and every sync returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit() {
    let d = dir("group");
    let (wal, _) = Wal::open(&d, WalOptions::default()).unwrap();
    let wal = Arc::new(wal);
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let seq = wal.append(record(t * 1000 + i)).unwrap();
                wal.sync(seq).await.unwrap();
                assert!(wal.durable_seq() >= seq);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.records, 1600);
    assert!(stats.syncs < 1600, "one sync per record means no group commit: {stats:?}");
    println!("group commit: {stats:?}");
}

/// A crash in the middle of an append (the file cut at any offset of its last records): recovery keeps
/// every whole record before the cut, truncates the rest, and the log keeps working.
#[tokio::test]
async fn torn_tail_at_every_offset() {
    let d = dir("torn");
    write(&d, 20, WalOptions::default()).await;
    let seg = segments(&d).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    // Offsets of record ends, to know how many whole records a cut keeps.
    let (_, rec) = Wal::open(&d, WalOptions::default()).unwrap();
    let sizes: Vec<usize> = rec.records.iter().map(|(_, p)| 20 + p.len()).collect();
    let start_of_last3: usize = sizes[..17].iter().sum();
    for cut in start_of_last3..full.len() {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let (wal, rec) = Wal::open(&d, WalOptions::default()).unwrap();
        let mut whole = 0;
        let mut end = 0;
        for s in &sizes {
            if end + s <= cut {
                end += s;
                whole += 1;
            }
        }
        assert_eq!(rec.records.len(), whole, "cut at {cut}");
        assert_eq!(rec.truncated.is_some(), cut != end, "cut at {cut}");
        assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, end);
        let seq = wal.append(b"after".to_vec()).unwrap();
        assert_eq!(seq, whole as u64 + 1);
        wal.sync(seq).await.unwrap();
        drop(wal);
        let (_, again) = Wal::open(&d, WalOptions::default()).unwrap();
        assert_eq!(again.records.last().unwrap().1, b"after");
        assert!(again.truncated.is_none());
    }
}

/// Garbage after the last record (a torn, zero-filled block) is a torn tail too.
#[tokio::test]
async fn zeroed_tail_is_cut() {
    let d = dir("zeros");
    write(&d, 5, WalOptions::default()).await;
    let seg = segments(&d).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let len = data.len() as u64;
    data.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&seg, &data).unwrap();
    let (_, rec) = Wal::open(&d, WalOptions::default()).unwrap();
    assert_eq!(rec.records.len(), 5);
    assert_eq!(rec.truncated, Some((seg, len)));
}

/// Damage in the middle (a flipped byte with valid records after it) stops the open, naming file and
/// offset, and changes nothing on disk.
#[tokio::test]
async fn corruption_in_the_middle_is_an_error() {
    let d = dir("corrupt");
    write(&d, 10, WalOptions::default()).await;
    let seg = segments(&d).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let before = data.len();
    data[30] ^= 0xff; // inside the first record's payload
    std::fs::write(&seg, &data).unwrap();
    match Wal::open(&d, WalOptions::default()) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (seg.clone(), 0));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, before, "nothing was truncated");
}

/// A checkpoint replaces the records it covers: older segments go; recovery gives the checkpoint and
/// only later records. Segments rotate at their size limit and are read back in order.
#[tokio::test]
async fn checkpoints_and_rotation() {
    let d = dir("checkpoint");
    let options = WalOptions::default().with_segment_bytes(300);
    let (wal, _) = Wal::open(&d, options.clone()).unwrap();
    for i in 1..=30 {
        wal.append(record(i)).unwrap();
    }
    wal.sync(30).await.unwrap();
    assert!(segments(&d).len() > 3, "rotated: {:?}", segments(&d));
    wal.checkpoint(b"state at 30".to_vec()).await.unwrap();
    assert_eq!(segments(&d).len(), 1, "old segments removed");
    for i in 31..=40 {
        wal.append(record(i)).unwrap();
    }
    wal.sync(40).await.unwrap();
    wal.close().unwrap();
    let (wal, rec) = Wal::open(&d, options).unwrap();
    let cp = rec.checkpoint.unwrap();
    assert_eq!((cp.seq, cp.payload.as_slice()), (30, &b"state at 30"[..]));
    assert_eq!(rec.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (31..=40).collect::<Vec<_>>());
    assert_eq!(wal.append(b"x".to_vec()).unwrap(), 41);
    // A damaged checkpoint is refused, not skipped.
    drop(wal);
    let snap = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .unwrap();
    let mut data = std::fs::read(&snap).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&snap, data).unwrap();
    assert!(matches!(Wal::open(&d, WalOptions::default()), Err(WalError::Corrupt { .. })));
}

/// A failing disk: the write that hit the failure is not acknowledged, and every later one is refused.
#[tokio::test]
async fn disk_failure_refuses_writes() {
    let d = dir("fault");
    let broken = Arc::new(AtomicBool::new(false));
    let hook_state = broken.clone();
    let options = WalOptions::default().with_fault_hook(Arc::new(move |point| {
        if point == FaultPoint::Sync && hook_state.load(Ordering::SeqCst) {
            Err(std::io::Error::other("simulated: no space left on device"))
        } else {
            Ok(())
        }
    }));
    let (wal, _) = Wal::open(&d, options).unwrap();
    let ok = wal.append(b"fine".to_vec()).unwrap();
    wal.sync(ok).await.unwrap();
    broken.store(true, Ordering::SeqCst);
    let seq = wal.append(b"lost".to_vec()).unwrap();
    let err = wal.sync(seq).await.unwrap_err();
    assert!(matches!(err, WalError::Failed(ref m) if m.contains("no space")), "{err:?}");
    assert!(matches!(wal.append(b"later".to_vec()), Err(WalError::Failed(_))));
    assert!(wal.checkpoint(b"s".to_vec()).await.is_err());
    assert!(wal.close().is_err());
}
