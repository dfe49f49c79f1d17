//! The messages node and relay exchange, and their framing.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a postcard-encoded
//! [`Message`]. The length is checked against a maximum before anything is allocated, and a
//! body that decodes with bytes left over is refused: postcard's `from_bytes` would silently
//! ignore them.
//!
//! Evolution: the protocol version is in ALPN ([`ALPN`]) and in [`Hello`]. postcard encodes
//! an enum variant by its index, so variants of [`Message`] are only ever appended, never
//! reordered or removed.

use serde::{Deserialize, Serialize};

use crate::event::{DELTAS_MAX, RECEIVED_AT_MS_MAX, Record};
use crate::ids::{Epoch, Lane, NodeId, ParseError, PerLane, Region, Seq};
use crate::inventory::{Inventory, check_deltas};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The ALPN token of [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"outpost/1";
/// Bytes in a frame's length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Default largest frame body. A batch of [`BATCH_EVENTS_MAX`] events of the largest
/// size a scanner can post fits (a test proves it), with room to spare.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Default most events in one [`Batch`]. Large enough that framing costs little per event,
/// small enough that a worst-case batch stays under [`FRAME_BYTES_MAX`].
pub const BATCH_EVENTS_MAX: u32 = 512;
/// Default most unacknowledged batches per lane: enough to keep a 100 ms WAN busy at the
/// commit rate of one relay, small enough that a resync resends little.
pub const BATCHES_IN_FLIGHT_MAX: u32 = 8;

/// Everything that travels between node and relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Node → relay, first on the control stream.
    Hello(Hello),
    /// Relay → node: accepted, and where each lane resumes.
    Welcome(Welcome),
    /// Relay → node: not accepted, and why.
    Refuse(Refuse),
    /// Node → relay, on a lane stream.
    Batch(Batch),
    /// Relay → node: everything through `through_seq` is durable at the relay.
    Ack(Ack),
    /// Relay → node: a batch left a gap; send again from `from_seq`.
    Resync(Resync),
    /// Relay → node, on the control stream: merged inventory the node may be behind on.
    Inventory(InventoryUpdate),
    /// Node → relay, on the control stream: records the relay acknowledged before, sent
    /// again because reconciliation found the relay's copy of their block differs. The
    /// relay adds those it lacks and answers [`Message::Repaired`]; its watermark and
    /// inventory do not move (they counted the records when they first arrived).
    Repair(Batch),
    /// Relay → node, on the control stream: what a [`Message::Repair`] found and did.
    Repaired(Repaired),
}

/// Who the node is and how far each of its lanes goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the node.
    pub version: u16,
    /// The node's claim; the relay compares it with the certificate.
    pub node_id: NodeId,
    /// The node's claimed region; compared with the certificate too.
    pub region: Region,
    /// The node store's epoch.
    pub epoch: Epoch,
    /// Highest seq the node holds per lane (0 for none).
    pub heads: PerLane<u64>,
    /// The relay inventory version the node has merged durably (0 for none): the relay
    /// sends what changed after it.
    pub inventory_version: u64,
}

/// Limits the relay asks the node to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most events per batch.
    pub batch_events_max: u32,
    /// Most unacknowledged batches per lane.
    pub batches_in_flight_max: u32,
    /// Largest frame body the relay accepts.
    pub frame_bytes_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_events_max: BATCH_EVENTS_MAX,
            batches_in_flight_max: BATCHES_IN_FLIGHT_MAX,
            frame_bytes_max: FRAME_BYTES_MAX as u32,
        }
    }
}

/// The relay's answer to an acceptable [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The relay's name, for logs.
    pub relay_id: String,
    /// The relay's region.
    pub region: Region,
    /// The durable watermark per lane for `(node_id, epoch)` (0 for nothing yet).
    pub watermarks: PerLane<u64>,
    /// What the node must keep to.
    pub limits: Limits,
}

/// Why a relay refuses a node. Every refusal closes the connection with
/// [`close::REFUSED`]. New reasons are appended, never inserted: postcard encodes the
/// variant by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The node speaks another protocol version.
    UnsupportedVersion,
    /// The Hello claims an identity other than the certificate's.
    IdentityMismatch,
    /// The certificate names a region this relay does not serve.
    WrongRegion,
    /// Another connection of the same node took over.
    Superseded,
    /// The relay serves as many connections as it is configured to. The node waits at
    /// least `retry_after_ms`, plus jitter, before it dials again.
    Busy {
        /// How long the relay asks the node to stay away, in milliseconds; it grows with
        /// how far over its limit the relay is.
        retry_after_ms: u32,
    },
}

impl RefuseReason {
    /// The name used in logs, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::UnsupportedVersion => "unsupported_version",
            RefuseReason::IdentityMismatch => "identity_mismatch",
            RefuseReason::WrongRegion => "wrong_region",
            RefuseReason::Superseded => "superseded",
            RefuseReason::Busy { .. } => "busy",
        }
    }
}

/// A typed refusal with a sentence for the node's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("refused ({}): {message}", reason.as_str())]
pub struct Refuse {
    /// Why.
    pub reason: RefuseReason,
    /// What a person should know, with the values involved.
    pub message: String,
}

/// Contiguous events of one lane, starting at `first_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The lane; every batch on one stream names the same lane.
    pub lane: Lane,
    /// The seq of `events[0]`; the others follow without gaps.
    pub first_seq: Seq,
    /// The events.
    pub events: Vec<Record>,
}

impl Batch {
    /// The seq of the last event, or `None` for an empty batch.
    pub fn last_seq(&self) -> Option<Seq> {
        let n = u64::try_from(self.events.len()).ok()?.checked_sub(1)?;
        self.first_seq.get().checked_add(n).and_then(Seq::new)
    }
}

/// Cumulative acknowledgement: every seq of `lane` up to `through_seq` is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The lane.
    pub lane: Lane,
    /// The new durable watermark.
    pub through_seq: Seq,
}

/// The relay's request to send `lane` again from `from_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resync {
    /// The lane.
    pub lane: Lane,
    /// The first seq the relay does not have.
    pub from_seq: Seq,
}

/// Merged inventory from the relay: the counters of every key that changed after the
/// version the node reported. Large updates come in several messages; the node merges
/// each as it arrives (merging is idempotent) and records `through_version` when the
/// one marked `complete` is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryUpdate {
    /// The relay's inventory version this update brings the node up to.
    pub through_version: u64,
    /// The counters of the keys that changed.
    pub state: Inventory,
    /// Whether this is the last message of the update.
    pub complete: bool,
}

/// The relay's answer to a [`Message::Repair`] of `count` records from `first_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    /// The lane.
    pub lane: Lane,
    /// The first seq of the repair.
    pub first_seq: Seq,
    /// Records in the repair.
    pub count: u32,
    /// Records the relay lacked and has now added to its log.
    pub inserted: u32,
    /// Records the relay held already, byte for byte.
    pub present: u32,
    /// Records the relay holds with other contents; kept as they are, for an operator.
    pub differing: u32,
    /// Records past the relay's watermark: normal replication's business, not repaired.
    pub beyond_watermark: u32,
}

/// QUIC application close codes. Each error class closes with exactly one code.
pub mod close {
    /// A clean shutdown of either side.
    pub const SHUTDOWN: u32 = 0;
    /// The peer sent bytes that are not a frame ([`super::DecodeError`]).
    pub const DECODE_ERROR: u32 = 1;
    /// The peer sent a valid message that breaks the rules ([`crate::ProtocolViolation`]).
    pub const PROTOCOL_VIOLATION: u32 = 2;
    /// The relay refused the node ([`super::Refuse`]); the reason is also in the frame.
    pub const REFUSED: u32 = 3;
    /// The relay could not store what it received; the node should reconnect later.
    pub const STORE_FAILED: u32 = 4;
}

/// Bytes that are not an acceptable frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than the receiver accepts.
    #[error("frame of {len} bytes is over the maximum of {max}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The body is not a postcard `Message` (unknown variant, truncated, bad varint).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded with bytes left over.
    #[error("frame has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A field decoded but is out of range (a bad `NodeId`, an event over its limits).
    #[error("frame carries {0}")]
    Invalid(#[from] ParseError),
}

impl Message {
    /// Encodes one frame: the length prefix and the postcard body.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![0u8; LENGTH_PREFIX_BYTES];
        // Serializing into a Vec cannot fail for these types: every field is a plain
        // integer, string, sequence or map with a known length.
        let out = match postcard::to_extend(self, out) {
            Ok(out) => out,
            Err(e) => unreachable!("postcard cannot fail to encode a Message: {e}"),
        };
        let mut out = out;
        let len = (out.len() - LENGTH_PREFIX_BYTES) as u32;
        out[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// Reads a length prefix and checks it against `max` before the caller allocates.
pub fn decode_length(prefix: [u8; LENGTH_PREFIX_BYTES], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(DecodeError::TooLong { len, max });
    }
    Ok(len)
}

/// Decodes one frame body (without its prefix), refusing trailing bytes and out-of-range
/// fields.
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    if let Message::Batch(batch) | Message::Repair(batch) = &msg {
        for record in &batch.events {
            record.event.validate()?;
            if record.received_at_ms > RECEIVED_AT_MS_MAX {
                return Err(DecodeError::Invalid(ParseError::new(
                    "received_at_ms",
                    format!("{} is past the year 9999", record.received_at_ms),
                )));
            }
            if record.deltas.len() > DELTAS_MAX {
                return Err(DecodeError::Invalid(ParseError::new(
                    "deltas",
                    format!("{} deltas on one event; at most {DELTAS_MAX}", record.deltas.len()),
                )));
            }
            check_deltas(&record.event, &record.deltas)?;
        }
    }
    Ok(msg)
}

/// Splits a byte stream into messages. Feed it bytes with [`FrameDecoder::push`], then
/// call [`FrameDecoder::next_message`] until it returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    frame_bytes_max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames over `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> Self {
        FrameDecoder { buf: Vec::new(), frame_bytes_max }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable: the caller closes it.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        let Some(prefix) = self.buf.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let len = decode_length(*prefix, self.frame_bytes_max)?;
        let end = LENGTH_PREFIX_BYTES + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[LENGTH_PREFIX_BYTES..end]);
        self.buf.drain(..end);
        msg.map(Some)
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
