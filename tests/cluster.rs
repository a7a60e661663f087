//! Three `embedded://…?cluster=…` stores in one process form an antietcd cluster (issue 5): a write
//! through one member is read through the others, a watch on one sees writes made through another, locks
//! and elections work across members, closing the leader's store leaves two members that elect a new
//! leader and keep serving everything acknowledged, and closing (or dropping) the stores stops every task
//! and frees every port.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

use etcd_json::testing::free_port;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use valkeyrie::{Election, Error, EventKind, LockOptions, Store, WriteOptions};

/// The TinyRaft timeouts of the test clusters (short, so that failover tests are quick).
const ELECTION: Duration = Duration::from_millis(1000);
const TIMEOUTS: &str = "election_timeout=1s&heartbeat_timeout=200ms&leadership_timeout=600ms";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valkeyrie-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The store URLs of a three-member cluster on free loopback ports (in memory, or durable in `dirs`).
struct Spec {
    ports: Vec<u16>,
    urls: Vec<String>,
}

impl Spec {
    fn new(dirs: Option<&[PathBuf]>) -> Spec {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, p)| format!("n{}=http://127.0.0.1:{p}", i + 1)).collect();
        let cluster = cluster.join(",");
        // A key of its own, so that a node of another test's cluster that reaches one of these ports (they
        // are reused quickly) is refused instead of joining as the node whose id it shares.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let key = format!("test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let urls = (0..3)
            .map(|i| {
                let path = dirs.map_or(String::new(), |d| d[i].display().to_string());
                format!(
                    "embedded://{path}?node_id=n{}&cluster={cluster}&cluster_key={key}&listen=127.0.0.1:{}\
                     &{TIMEOUTS}&prefix=/app",
                    i + 1,
                    ports[i]
                )
            })
            .collect();
        Spec { ports, urls }
    }

    async fn open(&self) -> Vec<Arc<dyn Store>> {
        self.try_open().await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_open(&self) -> Result<Vec<Arc<dyn Store>>, String> {
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for url in &self.urls {
            match valkeyrie::open(url).await {
                Ok(store) => stores.push(store),
                Err(e) => {
                    close_all(&stores).await;
                    return Err(format!("open {url}: {e}"));
                }
            }
        }
        Ok(stores)
    }

    /// A new cluster and its stores. The ports were free when picked, but something else may bind one
    /// before its member does: then the cluster starts again on other ports (at most three times).
    async fn start(dirs: Option<&[PathBuf]>) -> (Spec, Vec<Arc<dyn Store>>) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let spec = Spec::new(dirs);
            match spec.try_open().await {
                Ok(stores) => return (spec, stores),
                Err(e) if attempt < 3 => eprintln!("{e}; starting again on other ports"),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// `/v3/maintenance/status` of the node on `port`, as text (`None` if it does not answer).
async fn status(port: u16) -> Option<String> {
    let mut s =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(("127.0.0.1", port)))
            .await
            .ok()?
            .ok()?;
    let req = "POST /v3/maintenance/status HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
               Content-Length: 2\r\n\r\n{}";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut reply)).await.ok()?.ok()?;
    reply.contains(" 200 ").then_some(reply)
}

/// Waits until exactly one of the nodes on `ports` (`None`: not running) leads and every running one
/// names it; returns its index.
async fn leader(ports: &[Option<u16>], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        let mut named = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let Some(port) = port else { continue };
            let st = status(*port).await.unwrap_or_default();
            if st.contains(r#""raftState":"leader""#) {
                leaders.push(i);
            }
            named.push(st);
        }
        if let [l] = leaders[..] {
            let id = format!(r#""leader":"n{}""#, l + 1);
            if named.iter().all(|st| st.contains(&id)) {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader within {within:?}: {named:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries `put` until it succeeds (an election may be under way); returns how long that took.
async fn put_until_ok(store: &dyn Store, key: &str, value: &[u8], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match store.put(key, value, None).await {
            Ok(_) => return start.elapsed(),
            Err(e) if e.is_transient() && start.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("put {key} failed after {:?}: {e:?}", start.elapsed()),
        }
    }
}

async fn close_all(stores: &[Arc<dyn Store>]) {
    for s in stores {
        s.close().await.unwrap();
    }
}

/// Every member reads what any member wrote (consistent reads, `stale_read` off), CAS tokens from one
/// member work on another, and a directory listed anywhere has the same content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_member_are_read_through_the_others() {
    let (spec, stores) = Spec::start(None).await;
    let ports: Vec<Option<u16>> = spec.ports.iter().copied().map(Some).collect();
    leader(&ports, Duration::from_secs(10)).await;
    put_until_ok(&*stores[0], "ready", b"1", Duration::from_secs(10)).await;
    for (i, writer) in stores.iter().enumerate() {
        let key = format!("dir/from-n{}", i + 1);
        let written = writer.put(&key, format!("v{i}").as_bytes(), None).await.unwrap();
        for (j, reader) in stores.iter().enumerate() {
            let got =
                reader.get(&key, None).await.unwrap_or_else(|e| panic!("n{} reads {key}: {e:?}", j + 1));
            assert_eq!(got.value, format!("v{i}").as_bytes(), "n{} reads {key}", j + 1);
            assert_eq!(got.last_index, written.last_index, "n{} reads {key}", j + 1);
        }
    }
    // A CAS token read on one member, used on another; the stale one fails on a third.
    let pair = stores[1].get("dir/from-n1", None).await.unwrap();
    let newer = stores[2].atomic_put("dir/from-n1", b"cas", Some(&pair), None).await.unwrap();
    let stale = stores[0].atomic_put("dir/from-n1", b"late", Some(&pair), None).await;
    assert!(matches!(stale, Err(Error::KeyModified { .. })), "{stale:?}");
    stores[0].atomic_delete("dir/from-n1", &newer).await.unwrap();
    for s in &stores {
        let keys: Vec<String> = s.list("dir", None).await.unwrap().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["dir/from-n2", "dir/from-n3"]);
    }
    close_all(&stores).await;
}

/// A watch on one member sees every change made through the others, in order, with nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_member_sees_writes_through_another() {
    let (spec, stores) = Spec::start(None).await;
    let ports: Vec<Option<u16>> = spec.ports.iter().copied().map(Some).collect();
    leader(&ports, Duration::from_secs(10)).await;
    put_until_ok(&*stores[0], "ready", b"1", Duration::from_secs(10)).await;
    for watcher in 0..3 {
        let mut key = stores[watcher].watch("config/level", None).await.unwrap();
        let mut tree = stores[watcher].watch_tree("config", None).await.unwrap();
        let first = key.next().await.unwrap().unwrap();
        assert!(tree.next().await.unwrap().unwrap().snapshot);
        let (a, b) = ((watcher + 1) % 3, (watcher + 2) % 3);
        stores[a].put("config/level", b"debug", None).await.unwrap();
        stores[b].put("config/level", b"info", None).await.unwrap();
        stores[a].delete("config/level").await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let ev =
                tokio::time::timeout(Duration::from_secs(10), key.next()).await.unwrap().unwrap().unwrap();
            if ev.pair.last_index > first.pair.last_index {
                seen.push((ev.kind, String::from_utf8(ev.pair.value).unwrap()));
            }
        }
        let expected = [(EventKind::Put, "debug"), (EventKind::Put, "info"), (EventKind::Delete, "")];
        let expected: Vec<(EventKind, String)> = expected.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(seen, expected, "watch on n{}", watcher + 1);
        let mut tree_events = 0;
        while tree_events < 3 {
            let batch =
                tokio::time::timeout(Duration::from_secs(10), tree.next()).await.unwrap().unwrap().unwrap();
            assert!(!batch.snapshot, "no resynchronisation needed");
            tree_events += batch.events.len();
        }
    }
    close_all(&stores).await;
}

/// A lock held through one member excludes the others until released, fencing tokens increase across
/// members, and an election campaigned on two members is observed from the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_elections_work_across_members() {
    let (spec, stores) = Spec::start(None).await;
    let ports: Vec<Option<u16>> = spec.ports.iter().copied().map(Some).collect();
    leader(&ports, Duration::from_secs(10)).await;
    put_until_ok(&*stores[0], "ready", b"1", Duration::from_secs(10)).await;

    let options = || Some(LockOptions::new().with_ttl(Duration::from_secs(5)));
    let first = stores[0].new_lock("jobs/lock", options()).await.unwrap();
    let held = first.lock().await.unwrap();
    let second = stores[1].new_lock("jobs/lock", options()).await.unwrap();
    let waiting = tokio::spawn(async move {
        let held = second.lock().await.unwrap();
        (second, held)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "n2 must wait while n1 holds the lock");
    first.unlock().await.unwrap();
    let (second, held2) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert!(held2.fencing_token() > held.fencing_token());
    second.unlock().await.unwrap();

    let election =
        |i: usize| Election::new(stores[i].clone(), "jobs/leader").with_ttl(Duration::from_secs(5));
    let mut observer = election(2).observe().await.unwrap();
    assert_eq!(observer.next().await.unwrap().unwrap(), None, "nobody leads yet");
    let alpha = election(0).campaign("alpha").await.unwrap();
    let bravo_election = election(1);
    let bravo = tokio::spawn(async move { bravo_election.campaign("bravo").await.unwrap() });
    assert_eq!(next_leader(&mut observer).await.as_deref(), Some("alpha"));
    assert_eq!(election(2).leader().await.unwrap().unwrap().value, b"alpha");
    alpha.resign().await.unwrap();
    let mut now = next_leader(&mut observer).await;
    if now.is_none() {
        now = next_leader(&mut observer).await; // the gap between resignation and the next leader
    }
    assert_eq!(now.as_deref(), Some("bravo"));
    let bravo = tokio::time::timeout(Duration::from_secs(10), bravo).await.unwrap().unwrap();
    assert!(bravo.fencing_token() > held2.fencing_token(), "tokens increase across members");
    bravo.resign().await.unwrap();
    close_all(&stores).await;
}

/// A member without a quorum (the others not started yet) refuses a read and a write with transient errors,
/// holding the read at most 2 s (its node answers 503 before the client's 5 s request timeout, so that the
/// client can move on to another member), and serves once a second member is up; the third catches up
/// when it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_quorum_refuses_then_serves() {
    let spec = Spec::new(None);
    let first = valkeyrie::open(&spec.urls[0]).await.unwrap();
    let start = Instant::now();
    let err = first.get("k", None).await.expect_err("no quorum, no linearizable read");
    let took = start.elapsed();
    assert!(err.is_transient(), "{err:?}");
    let err = first.put("k", b"v", None).await.expect_err("no quorum, no write");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        took < Duration::from_secs(4),
        "refused after {took:?}: the node should answer before the client times out"
    );
    let second = valkeyrie::open(&spec.urls[1]).await.unwrap();
    put_until_ok(&*first, "k", b"v", Duration::from_secs(10)).await;
    assert_eq!(second.get("k", None).await.unwrap().value, b"v");
    let third = valkeyrie::open(&spec.urls[2]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match third.get("k", None).await {
            Ok(pair) => break assert_eq!(pair.value, b"v"),
            Err(e) => assert!(e.is_transient() && Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    close_all(&[first, second, third]).await;
}

type Observer = futures::stream::BoxStream<'static, valkeyrie::Result<Option<valkeyrie::KVPair>>>;

/// The next leader value an election observer reports.
async fn next_leader(o: &mut Observer) -> Option<String> {
    let next = tokio::time::timeout(Duration::from_secs(10), o.next()).await.expect("no leader change");
    next.unwrap().unwrap().map(|p| String::from_utf8(p.value).unwrap())
}

/// Closing the leader's store: the two other members elect a new leader and accept writes within the
/// election timeout plus a margin, everything acknowledged before is still there on both, and a watch
/// on a surviving member keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_leaders_store_fails_over() {
    let (spec, stores) = Spec::start(None).await;
    let mut ports: Vec<Option<u16>> = spec.ports.iter().copied().map(Some).collect();
    let l = leader(&ports, Duration::from_secs(10)).await;
    put_until_ok(&*stores[0], "ready", b"1", Duration::from_secs(10)).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for i in 0..20 {
        stores[i % 3].put(&format!("before/{i}"), i.to_string().as_bytes(), None).await.unwrap();
    }
    let mut w = stores[survivors[0]].watch_tree("after", None).await.unwrap();
    assert!(w.next().await.unwrap().unwrap().snapshot);

    let closed = Instant::now();
    stores[l].close().await.unwrap();
    ports[l] = None;
    let close_took = closed.elapsed();
    put_until_ok(&*stores[survivors[1]], "after/1", b"x", ELECTION * 5).await;
    let took = closed.elapsed();
    eprintln!("first write {took:?} after the leader's store began closing (close took {close_took:?})");
    assert!(took <= ELECTION + Duration::from_secs(2), "a write succeeded only after {took:?}");
    let new_leader = leader(&ports, Duration::from_secs(5)).await;
    assert_ne!(new_leader, l);
    for &i in &survivors {
        let before = stores[i].list("before", None).await.unwrap();
        assert_eq!(before.len(), 20, "n{} lost acknowledged writes", i + 1);
        assert_eq!(stores[i].get("after/1", None).await.unwrap().value, b"x");
        stores[i].put(&format!("after/from-n{}", i + 1), b"y", None).await.unwrap();
    }
    let mut keys = Vec::new();
    while keys.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap() {
            Ok(batch) if batch.snapshot => keys = batch.events.into_iter().map(|e| e.pair.key).collect(),
            Ok(batch) => keys.extend(batch.events.into_iter().map(|e| e.pair.key)),
            Err(e) => assert!(e.is_transient(), "{e:?}"),
        }
    }
    keys.sort();
    let mut expected = vec!["after/1".to_owned()];
    expected.extend(survivors.iter().map(|i| format!("after/from-n{}", i + 1)));
    assert_eq!(keys, expected);
    close_all(&stores).await;
}

/// The number of tasks alive on this runtime.
fn alive() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Waits until the live tasks drop back to `baseline` and every port can be bound again.
async fn everything_stopped(baseline: usize, ports: &[u16], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let free = ports.iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if alive() <= baseline && free {
            eprintln!(
                "{what}: everything stopped within {:?}",
                Duration::from_secs(15) - (deadline - Instant::now())
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} tasks alive (baseline {baseline}), ports free: {free}",
            alive()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Busy members (keep-alive keys, a held lock, watches) stop every task and free their ports when
/// closed, even while the caller still holds the stores and their handles, and again when only dropped.
/// (After close, the HTTP client's connection pool keeps one timer task until its next idle check, at
/// most its 4 s idle timeout later, or until the store is dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_drop_stop_every_task_and_free_the_ports() {
    let baseline = alive();
    for close in [true, false] {
        let (spec, stores) = Spec::start(None).await;
        let ports: Vec<Option<u16>> = spec.ports.iter().copied().map(Some).collect();
        leader(&ports, Duration::from_secs(10)).await;
        put_until_ok(&*stores[0], "ready", b"1", Duration::from_secs(10)).await;
        let mut held = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            let opts = Some(WriteOptions::new().with_ttl(Duration::from_secs(2)).with_keep_alive(true));
            s.put(&format!("alive/{i}"), b"x", opts).await.unwrap();
            let mut w = s.watch_tree("alive", None).await.unwrap();
            w.next().await.unwrap().unwrap();
            let lock = s.new_lock(&format!("l{i}"), None).await.unwrap();
            lock.lock().await.unwrap();
            held.push((w, lock));
        }
        assert!(alive() > baseline, "the members run tasks");
        if close {
            close_all(&stores).await;
            for (w, _) in &mut held {
                assert!(w.next().await.is_none(), "a watch ends with its store");
            }
            // Closed while the caller still holds the stores, their watches and locks.
            everything_stopped(baseline, &spec.ports, "after close").await;
        }
        drop(held);
        drop(stores);
        everything_stopped(baseline, &spec.ports, if close { "after close and drop" } else { "after drop" })
            .await;
    }
}

/// Durable members (`embedded:///dir?cluster=…`): after every store is closed and the cluster reopened
/// from the same directories, everything acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_members_keep_their_data() {
    let root = temp_dir("durable");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.join(format!("n{i}"))).collect();
    let (spec, stores) = Spec::start(Some(&dirs)).await;
    let ports: Vec<Option<u16>> = spec.ports.iter().copied().map(Some).collect();
    leader(&ports, Duration::from_secs(10)).await;
    put_until_ok(&*stores[0], "ready", b"1", Duration::from_secs(10)).await;
    let mut last = 0;
    for i in 0..30 {
        last = stores[i % 3].put(&format!("k{i}"), i.to_string().as_bytes(), None).await.unwrap().last_index;
    }
    close_all(&stores).await;
    drop(stores);
    assert!(dirs.iter().all(|d| d.is_dir()), "each member keeps its own log");

    let stores = spec.open().await;
    leader(&ports, Duration::from_secs(10)).await;
    put_until_ok(&*stores[1], "ready", b"2", Duration::from_secs(10)).await;
    for s in &stores {
        assert_eq!(s.get("k29", None).await.unwrap().value, b"29");
        assert_eq!(s.list("", None).await.unwrap().len(), 31);
    }
    assert!(stores[2].put("next", b"x", None).await.unwrap().last_index > last, "revisions continue");
    close_all(&stores).await;
    let _ = std::fs::remove_dir_all(&root);
}
