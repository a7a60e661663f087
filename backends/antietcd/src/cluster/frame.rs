//! The binary `batch` frame our leaders send our own followers (antietcd 1.3.1 peers never get one: they
//! take JSON `replicate` messages). Building `{"batch":[{"replicate":...}]}` JSON cost the leader a tree of
//! maps per write and every follower a JSON parse of it; this frame is written straight from the journal
//! records of the batch and read straight into the changes the follower applies.
//!
//! Layout (integers little-endian; byte strings are a u32 length then the bytes):
//!
//! ```text
//! MAGIC u8 | request_id u64 | term u64 | commit i64 (0: none) | count u32 | count records
//! record: 1 commit   revision i64, events u32, per event: kind u8 (0 put, 1 delete), key,
//!                    and for a put: value, lease i64 (0: none), create_revision i64, version i64
//!         2 grant    id i64, ttl i64        (also a keepalive: the lease's TTL afresh)
//!         3 revoke   id i64
//!         4 compact  revision i64
//! ```
//!
//! `commit` carries the leader's commit of the previous batch when the next one was ready to go (one frame
//! instead of two); followers apply it before the records, as if a `commit` message had come first. The
//! reply is the usual `{"request_id": R, "reply": {}}` JSON text.

use crate::codec::{put_bytes, put_i64, put_u32, Reader};
use crate::engine::{JournalRecord, ReplicatedChange, ReplicatedEvent};
use crate::types::{EventKind, LeaseId, Revision};

/// The first byte of a batch frame: not one a JSON text can start with.
pub(crate) const MAGIC: u8 = 0xB7;
/// Where the request id sits (patched per peer, see [`set_request_id`]).
const REQUEST_ID_AT: usize = 1;

/// One record of a batch, as the leader's journal wrote it.
#[derive(Debug)]
pub(crate) enum Record {
    Journal(JournalRecord<'static>),
    /// A lease renewed by a keepalive (not journaled by the engine), with its TTL.
    KeepAlive {
        id: LeaseId,
        ttl: i64,
    },
}

/// What a follower applies, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Change(ReplicatedChange),
    Compact(Revision),
}

/// A decoded frame.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) request_id: u64,
    pub(crate) term: u64,
    pub(crate) commit: Option<Revision>,
    pub(crate) items: Vec<Item>,
}

/// The frame of `records` for `term` (request id 0, see [`set_request_id`]), with the piggybacked
/// `commit`, if any.
pub(crate) fn encode(records: &[Record], term: u64, commit: Option<Revision>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + records.len() * 96);
    buf.push(MAGIC);
    buf.extend_from_slice(&0u64.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    put_i64(&mut buf, commit.unwrap_or(0));
    put_u32(&mut buf, records.len());
    for r in records {
        match r {
            Record::Journal(JournalRecord::Commit { revision, events }) => {
                buf.push(1);
                put_i64(&mut buf, *revision);
                put_u32(&mut buf, events.len());
                for e in events.iter() {
                    if e.kind == EventKind::Put {
                        buf.push(0);
                        put_bytes(&mut buf, &e.kv.key);
                        put_bytes(&mut buf, &e.kv.value);
                        put_i64(&mut buf, e.kv.lease.map_or(0, |l| l.0));
                        put_i64(&mut buf, e.kv.create_revision);
                        put_i64(&mut buf, e.kv.version);
                    } else {
                        buf.push(1);
                        put_bytes(&mut buf, &e.kv.key);
                    }
                }
            }
            Record::Journal(JournalRecord::LeaseGrant { id, ttl }) | Record::KeepAlive { id, ttl } => {
                buf.push(2);
                put_i64(&mut buf, id.0);
                put_i64(&mut buf, *ttl);
            }
            Record::Journal(JournalRecord::LeaseRevoke { id }) => {
                buf.push(3);
                put_i64(&mut buf, id.0);
            }
            Record::Journal(JournalRecord::Compact { revision }) => {
                buf.push(4);
                put_i64(&mut buf, *revision);
            }
        }
    }
    buf
}

/// Sets the request id of an encoded frame (one frame, serialised once, goes to every follower).
pub(crate) fn set_request_id(frame: &mut [u8], id: u64) {
    if let Some(at) = frame.get_mut(REQUEST_ID_AT..REQUEST_ID_AT + 8) {
        at.copy_from_slice(&id.to_le_bytes());
    }
}

/// Whether `data` is a batch frame.
pub(crate) fn is_batch(data: &[u8]) -> bool {
    data.first() == Some(&MAGIC)
}

/// Reads a batch frame.
pub(crate) fn decode(data: &[u8]) -> Result<Batch, String> {
    let mut r = Reader::new(data);
    if r.u8()? != MAGIC {
        return Err("not a batch frame".into());
    }
    let request_id = r.u64()?;
    let term = r.u64()?;
    let commit = Some(r.i64()?).filter(|c| *c != 0);
    let count = r.u32()?;
    // Each record takes at least 9 bytes: a count beyond that is a corrupt frame, not a reason to allocate.
    let mut items = Vec::with_capacity(count.min(r.remaining() / 9));
    // The revision lease-only changes are applied at (the latest commit's, as `to_messages` does).
    let mut revision = 0;
    for _ in 0..count {
        match r.u8()? {
            1 => {
                revision = r.i64()?;
                let n = r.u32()?;
                let mut events = Vec::with_capacity(n.min(r.remaining() / 5));
                for _ in 0..n {
                    let kind = r.u8()?;
                    let key = r.bytes()?;
                    if key.is_empty() {
                        return Err("an event without key".into());
                    }
                    events.push(match kind {
                        0 => ReplicatedEvent {
                            key,
                            value: Some(r.bytes()?),
                            lease: Some(r.i64()?).filter(|l| *l != 0).map(LeaseId),
                            create_revision: Some(r.i64()?),
                            version: Some(r.i64()?),
                        },
                        1 => ReplicatedEvent {
                            key,
                            value: None,
                            lease: None,
                            create_revision: None,
                            version: None,
                        },
                        k => return Err(format!("unknown event kind {k}")),
                    });
                }
                items.push(Item::Change(ReplicatedChange { revision, leases: Vec::new(), events }));
            }
            2 => {
                let (id, ttl) = (LeaseId(r.i64()?), r.i64()?);
                let leases = vec![(id, Some(ttl).filter(|t| *t > 0))];
                items.push(Item::Change(ReplicatedChange { revision, leases, events: Vec::new() }));
            }
            3 => {
                let leases = vec![(LeaseId(r.i64()?), None)];
                items.push(Item::Change(ReplicatedChange { revision, leases, events: Vec::new() }));
            }
            4 => items.push(Item::Compact(r.i64()?)),
            t => return Err(format!("unknown batch record {t}")),
        }
    }
    r.end()?;
    Ok(Batch { request_id, term, commit, items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Event, KeyValue};
    use bytes::Bytes;

    fn event(kind: EventKind, key: &'static [u8], value: &'static [u8], rev: Revision) -> Event {
        Event {
            kind,
            kv: KeyValue {
                key: Bytes::from_static(key),
                value: Bytes::from_static(value),
                create_revision: 3,
                mod_revision: rev,
                version: 2,
                lease: (kind == EventKind::Put).then_some(LeaseId(0x2a)),
            },
            prev_kv: None,
        }
    }

    #[test]
    fn records_round_trip_in_order() {
        let records = vec![
            Record::Journal(JournalRecord::LeaseGrant { id: LeaseId(0x2a), ttl: 10 }),
            Record::Journal(JournalRecord::Commit {
                revision: 5,
                events: vec![
                    event(EventKind::Put, b"/a", &[0xff, 0], 5),
                    event(EventKind::Delete, b"/b", b"", 5),
                ]
                .into(),
            }),
            Record::Journal(JournalRecord::LeaseRevoke { id: LeaseId(7) }),
            Record::KeepAlive { id: LeaseId(0x2a), ttl: 10 },
            Record::Journal(JournalRecord::Compact { revision: 3 }),
        ];
        let mut frame = encode(&records, 9, Some(4));
        set_request_id(&mut frame, 77);
        assert!(is_batch(&frame));
        let b = decode(&frame).unwrap();
        assert_eq!((b.request_id, b.term, b.commit), (77, 9, Some(4)));
        let lease_only =
            |revision, leases| Item::Change(ReplicatedChange { revision, leases, events: vec![] });
        assert_eq!(
            b.items,
            vec![
                lease_only(0, vec![(LeaseId(0x2a), Some(10))]),
                Item::Change(ReplicatedChange {
                    revision: 5,
                    leases: vec![],
                    events: vec![
                        ReplicatedEvent {
                            key: Bytes::from_static(b"/a"),
                            value: Some(Bytes::from_static(&[0xff, 0])),
                            lease: Some(LeaseId(0x2a)),
                            create_revision: Some(3),
                            version: Some(2),
                        },
                        ReplicatedEvent {
                            key: Bytes::from_static(b"/b"),
                            value: None,
                            lease: None,
                            create_revision: None,
                            version: None,
                        },
                    ],
                }),
                lease_only(5, vec![(LeaseId(7), None)]),
                lease_only(5, vec![(LeaseId(0x2a), Some(10))]),
                Item::Compact(3),
            ]
        );
        assert_eq!(decode(&encode(&[], 1, None)).unwrap().commit, None);
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let records = vec![Record::Journal(JournalRecord::Commit {
            revision: 2,
            events: vec![event(EventKind::Put, b"k", b"v", 2)].into(),
        })];
        let frame = encode(&records, 1, None);
        for n in 0..frame.len() {
            assert!(decode(&frame[..n]).is_err(), "truncated at {n}");
        }
        let mut long = frame.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        let mut huge = frame;
        huge[25..29].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
