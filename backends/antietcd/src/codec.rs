//! The little-endian building blocks of our binary formats: the write-ahead log's records and checkpoints
//! ([`crate::durable`]) and the cluster's batch frames (`cluster/frame.rs`). Byte strings are a `u32` length
//! then the bytes. Every read is bounds-checked, so damaged input is an error, never a panic.

use crate::types::{KeyValue, LeaseId};
use bytes::Bytes;

pub(crate) fn put_u32(buf: &mut Vec<u8>, v: usize) {
    buf.extend_from_slice(&u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes());
}

pub(crate) fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u32(buf, b.len());
    buf.extend_from_slice(b);
}

/// A whole key-value: key, value, create and mod revisions, version, lease (0: none).
pub(crate) fn put_kv(buf: &mut Vec<u8>, kv: &KeyValue) {
    put_bytes(buf, &kv.key);
    put_bytes(buf, &kv.value);
    put_i64(buf, kv.create_revision);
    put_i64(buf, kv.mod_revision);
    put_i64(buf, kv.version);
    put_i64(buf, kv.lease.map_or(0, |l| l.0));
}

/// A bounds-checked reader over one record or frame.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, String> {
        self.u64().map(|v| v as i64)
    }

    /// A byte string, copied: a slice of the input would keep all of it alive as long as the key lives.
    pub(crate) fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()?;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    /// What [`put_kv`] wrote.
    pub(crate) fn kv(&mut self) -> Result<KeyValue, String> {
        Ok(KeyValue {
            key: self.bytes()?,
            value: self.bytes()?,
            create_revision: self.i64()?,
            mod_revision: self.i64()?,
            version: self.i64()?,
            lease: Some(self.i64()?).filter(|l| *l != 0).map(LeaseId),
        })
    }

    /// An `i64` count of items that take at least `min_size` bytes each: a count the rest of the input
    /// cannot hold is damage, not a reason to allocate.
    pub(crate) fn count(&mut self, min_size: usize) -> Result<usize, String> {
        let n = self.i64()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.data.len() / min_size.max(1))
            .ok_or_else(|| format!("bad count {n}"))
    }

    /// Fails unless everything was read.
    pub(crate) fn end(&self) -> Result<(), String> {
        match self.data.len() {
            0 => Ok(()),
            n => Err(format!("{n} trailing bytes")),
        }
    }
}
