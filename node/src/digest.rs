//! Block digests for reconciliation (PROTOCOL.md, "Reconciliation").
//!
//! A lane's sequence numbers are cut into blocks of [`BLOCK_EVENTS`]. The digest of a
//! block is the number of records in it and the sum, modulo 2^256, of the SHA-256 of each
//! record's canonical encoding (domain tag, lane, seq, the postcard bytes of the
//! [`Record`]). A sum does not depend on the order records were added in, so each side
//! updates a block's digest in the transaction that stores a record, and the node keeps
//! its digests after it prunes the events. Two sides holding the same records of a block
//! have equal digests; a record missing, added or altered on one side changes its digest
//! (SHA-256 makes a compensating change impractical).

use std::fmt::Write as _;

use ring::digest::{Context, SHA256};
use sync_protocol::{Lane, Record};

/// Sequence numbers per block.
pub const BLOCK_EVENTS: u64 = 1024;

/// The block of `seq` (seqs start at 1).
pub fn block_of(seq: u64) -> u64 {
    seq.saturating_sub(1) / BLOCK_EVENTS
}

/// The first and last seq of `block`.
pub fn seqs_of(block: u64) -> (u64, u64) {
    let first = block.saturating_mul(BLOCK_EVENTS).saturating_add(1);
    (first, first.saturating_add(BLOCK_EVENTS - 1))
}

/// Bytes of an encoded [`BlockDigest`].
pub const DIGEST_BYTES: usize = 40;

/// The digest of one block: how many records, and the sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockDigest {
    /// Records in the block.
    pub count: u64,
    /// Sum of their SHA-256 hashes as little-endian 256-bit numbers, modulo 2^256.
    pub sum: [u8; 32],
}

impl BlockDigest {
    /// The digest of one record: `encoded` is the postcard encoding of its [`Record`].
    pub fn of_record(lane: Lane, seq: u64, encoded: &[u8]) -> BlockDigest {
        // Hashed in parts: this runs once per stored record, on the commit path.
        let mut hash = Context::new(&SHA256);
        hash.update(b"outpost/record/1\0");
        hash.update(&[lane as u8]);
        hash.update(&seq.to_le_bytes());
        hash.update(encoded);
        let mut sum = [0u8; 32];
        sum.copy_from_slice(hash.finish().as_ref());
        BlockDigest { count: 1, sum }
    }

    /// The digest of one record, encoding it first.
    pub fn of(lane: Lane, seq: u64, record: &Record) -> Result<BlockDigest, postcard::Error> {
        Ok(Self::of_record(lane, seq, &postcard::to_allocvec(record)?))
    }

    /// Adds `other`'s records.
    pub fn add(&mut self, other: &BlockDigest) {
        self.count = self.count.wrapping_add(other.count);
        let mut carry = 0u16;
        for (a, b) in self.sum.iter_mut().zip(other.sum) {
            let s = u16::from(*a) + u16::from(b) + carry;
            *a = s as u8;
            carry = s >> 8;
        }
    }

    /// Takes `other`'s records away (the inverse of [`BlockDigest::add`]).
    pub fn subtract(&mut self, other: &BlockDigest) {
        self.count = self.count.wrapping_sub(other.count);
        let mut borrow = 0i16;
        for (a, b) in self.sum.iter_mut().zip(other.sum) {
            let d = i16::from(*a) - i16::from(b) - borrow;
            *a = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
    }

    /// The stored form: count (little-endian) then sum.
    pub fn to_bytes(&self) -> [u8; DIGEST_BYTES] {
        let mut out = [0u8; DIGEST_BYTES];
        out[..8].copy_from_slice(&self.count.to_le_bytes());
        out[8..].copy_from_slice(&self.sum);
        out
    }

    /// Reads the stored form; `None` if it is not [`DIGEST_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<BlockDigest> {
        let count = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let sum: [u8; 32] = bytes.get(8..)?.try_into().ok()?;
        Some(BlockDigest { count, sum })
    }

    /// The sum in hex, most significant byte first.
    pub fn hash_hex(&self) -> String {
        self.sum.iter().rev().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// Most blocks one digest answer lists, and how many when the query does not say.
pub const BLOCKS_PER_ANSWER_MAX: usize = 10_000;

/// One block as the digest endpoints of node and relay show it.
pub fn block_json(block: u64, digest: &BlockDigest) -> serde_json::Value {
    let (first_seq, last_seq) = seqs_of(block);
    serde_json::json!({
        "block": block, "first_seq": first_seq, "last_seq": last_seq,
        "count": digest.count, "hash": digest.hash_hex(),
    })
}

/// The query of the digest endpoints: which lane (and, at the relay, whose), from which
/// block, how many.
#[derive(Debug, serde::Deserialize)]
pub struct DigestQuery {
    /// The node (relay only).
    pub node_id: Option<String>,
    /// Its epoch, 16 hex digits (relay only).
    pub epoch: Option<String>,
    /// The lane.
    pub lane: String,
    /// The first block to list.
    #[serde(default)]
    pub from_block: u64,
    /// How many blocks at most.
    pub limit: Option<usize>,
}

impl DigestQuery {
    /// The lane, or why it is not one.
    pub fn lane(&self) -> Result<Lane, sync_protocol::ParseError> {
        self.lane.parse()
    }

    /// The number of blocks to list.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(BLOCKS_PER_ANSWER_MAX).clamp(1, BLOCKS_PER_ANSWER_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(seq: u64, payload: &[u8]) -> BlockDigest {
        BlockDigest::of_record(Lane::Critical, seq, payload)
    }

    #[test]
    fn blocks_cover_seqs_from_one() {
        assert_eq!(block_of(1), 0);
        assert_eq!(block_of(BLOCK_EVENTS), 0);
        assert_eq!(block_of(BLOCK_EVENTS + 1), 1);
        assert_eq!(seqs_of(1), (BLOCK_EVENTS + 1, 2 * BLOCK_EVENTS));
    }

    #[test]
    fn the_sum_ignores_order_and_sees_any_change() {
        let (a, b, c) = (one(1, b"a"), one(2, b"b"), one(3, b"c"));
        let mut abc = BlockDigest::default();
        for d in [&a, &b, &c] {
            abc.add(d);
        }
        let mut cba = BlockDigest::default();
        for d in [&c, &b, &a] {
            cba.add(d);
        }
        assert_eq!(abc, cba);
        assert_eq!(abc.count, 3);
        // A missing, an altered and a moved record each change the digest.
        let mut ab = abc;
        ab.subtract(&c);
        assert_ne!(ab, abc);
        let mut altered = ab;
        altered.add(&one(3, b"C"));
        assert_ne!(altered, abc);
        let mut moved = ab;
        moved.add(&one(4, b"c"));
        assert_ne!(moved, abc);
        // Subtracting undoes adding, carries and borrows included.
        let mut back = abc;
        back.subtract(&b);
        back.subtract(&a);
        back.subtract(&c);
        assert_eq!(back, BlockDigest::default());
        assert_eq!(BlockDigest::from_bytes(&abc.to_bytes()), Some(abc));
        assert_eq!(BlockDigest::from_bytes(&[0; 39]), None);
        assert_eq!(abc.hash_hex().len(), 64);
    }
}
