//! The protocol core of Outpost: domain types, wire messages, and the sans-IO state
//! machines of the replication sender (node side) and receiver (relay side).
//!
//! This crate does no IO: no sockets, no files, no clock reads, no OS randomness. Time
//! arrives as an `Instant` argument and randomness as an `&mut impl Rng`, so the same
//! inputs always give the same outputs. That is what lets `outpost-sim` replay any
//! failure from a seed.
//!
//! Main types:
//! - [`ids`]: [`NodeId`], [`Region`], [`Epoch`], [`Lane`], [`Seq`], [`EventId`], [`Sku`],
//!   [`Location`], each parsed at the edge.
//! - [`event`]: the scanner's [`Event`] with its limits, and the stored [`Record`].
//! - [`wire`]: [`Message`] and its length-prefixed postcard framing.
//! - [`sender`] and [`receiver`]: the state machines, driven with `handle_*` inputs and
//!   drained with `poll_*` outputs.
//!
//! ```
//! use std::time::Instant;
//! use sync_protocol::{Epoch, Lane, NodeIdentity, PerLane, Sender, SenderConfig, SenderEvent, Transmit};
//!
//! let identity = NodeIdentity::from_uri("outpost://eu-west/store-0042").unwrap();
//! let now = Instant::now();
//! let mut sender = Sender::new(SenderConfig::new(identity, Epoch(7)), PerLane::default(), PerLane::default(), now);
//! sender.handle_timeout(now);
//! assert_eq!(sender.poll_event(), Some(SenderEvent::Connect));
//! sender.handle_connected(now);
//! assert!(matches!(sender.poll_transmit(), Some(Transmit::Control(_))));
//! sender.handle_appended(Lane::Critical, 3);
//! // Nothing is sent before the relay's Welcome says where each lane resumes.
//! assert_eq!(sender.poll_transmit(), None);
//! ```

#[cfg(feature = "x509")]
pub mod cert;
pub mod event;
pub mod ids;
pub mod inventory;
pub mod receiver;
pub mod sender;
pub mod wire;

pub use event::{Event, Kind, Record};
pub use ids::{Epoch, EventId, Lane, Location, NodeId, NodeIdentity, ParseError, PerLane, Region, Seq, Sku};
pub use receiver::{Accepted, Receiver, ReceiverConfig};
pub use sender::{Sender, SenderConfig, SenderEvent, Transmit};
pub use wire::{Batch, DecodeError, InventoryUpdate, Message, Refuse, RefuseReason, Repaired};

/// A well-formed message that breaks the protocol's rules. The connection is closed with
/// [`wire::close::PROTOCOL_VIOLATION`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// A message arrived where it has no meaning.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// A batch with no events.
    #[error("empty batch on lane {lane}")]
    EmptyBatch {
        /// The lane.
        lane: Lane,
    },
    /// A batch with more events than the relay's limit.
    #[error("batch of {events} events on lane {lane} is over the maximum of {max}")]
    BatchTooLarge {
        /// The lane.
        lane: Lane,
        /// Events in the batch.
        events: usize,
        /// The limit.
        max: u32,
    },
    /// A batch that reaches further past the durable watermark than the window allows:
    /// the node ignores `batches_in_flight_max`, and the relay will not buffer for it.
    #[error("batch on lane {lane} reaches seq {last}, beyond the window ending at {window_end}")]
    BeyondWindow {
        /// The lane.
        lane: Lane,
        /// The batch's last seq.
        last: u64,
        /// The durable watermark plus the window in events.
        window_end: u64,
    },
    /// A batch on a lane stream that carries another lane.
    #[error("batch for lane {got} on the stream of lane {stream}")]
    WrongLane {
        /// The stream's lane.
        stream: Lane,
        /// The batch's lane.
        got: Lane,
    },
    /// The relay acknowledged a seq that was never sent.
    #[error("ack through {through} on lane {lane}, but only {sent} were sent")]
    AckBeyondSent {
        /// The lane.
        lane: Lane,
        /// The acked seq.
        through: u64,
        /// Highest seq sent.
        sent: u64,
    },
    /// The relay asked to resend from past what was sent.
    #[error("resync from {from} on lane {lane}, but only {sent} were sent")]
    ResyncBeyondSent {
        /// The lane.
        lane: Lane,
        /// The requested seq.
        from: u64,
        /// Highest seq sent.
        sent: u64,
    },
    /// The relay's watermark is past the node's head: the node lost acknowledged events or
    /// the relay confused two stores.
    #[error("relay watermark {watermark} on lane {lane} is past this node's head {head}")]
    WatermarkAhead {
        /// The lane.
        lane: Lane,
        /// The relay's watermark.
        watermark: u64,
        /// The node's head.
        head: u64,
    },
}
