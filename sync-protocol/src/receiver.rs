//! The relay side of replication for one node connection: refuse or welcome, skip what is
//! already stored, refuse gaps, and acknowledge only what is committed.
//!
//! Two watermarks per lane: `durable` is committed in the relay's store; `pending` also
//! counts batches handed to the shell for commit. A batch is judged against `pending`, so
//! pipelined batches are accepted back to back, but an [`Ack`] never runs ahead of
//! `durable`: the shell calls [`Receiver::handle_committed`] after its commit, and only then
//! is the ack queued.
//!
//! Drive contract: after any `handle_*` call, drain [`Receiver::poll_transmit`] until it
//! returns `None`.

use std::collections::VecDeque;

use crate::ProtocolViolation;
use crate::event::Record;
use crate::ids::{Epoch, Lane, NodeIdentity, PerLane, Region, Seq};
use crate::wire::{
    Ack, Batch, Hello, Limits, Message, PROTOCOL_VERSION, Refuse, RefuseReason, Resync, Welcome,
};

/// What the relay tells every node.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The relay's name.
    pub relay_id: String,
    /// The one region this relay serves.
    pub region: Region,
    /// What nodes must keep to.
    pub limits: Limits,
}

/// Events that the shell must make durable before calling [`Receiver::handle_committed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The lane.
    pub lane: Lane,
    /// The seq of `records[0]`: exactly one past what the relay had.
    pub first_seq: Seq,
    /// New events only; the prefix the relay already had is gone.
    pub records: Vec<Record>,
}

impl Accepted {
    /// The seq of the last record.
    pub fn last_seq(&self) -> Seq {
        let n = self.records.len().saturating_sub(1) as u64;
        Seq::new(self.first_seq.get() + n).unwrap_or(self.first_seq)
    }
}

#[derive(Debug, Clone)]
struct Session {
    epoch: Epoch,
    /// The inventory version the node reported in its Hello.
    inventory_version: u64,
    durable: PerLane<u64>,
    pending: PerLane<u64>,
    /// The `from_seq` of the last Resync sent per lane, so that the batches already in
    /// flight behind a gap do not each draw another one.
    resync_sent: PerLane<Option<u64>>,
}

/// The relay-side state machine for one connection.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    identity: NodeIdentity,
    session: Option<Session>,
    transmits: VecDeque<Message>,
}

impl Receiver {
    /// A receiver for a connection whose certificate names `identity`.
    pub fn new(config: ReceiverConfig, identity: NodeIdentity) -> Self {
        Receiver { config, identity, session: None, transmits: VecDeque::new() }
    }

    /// The node's Hello, with the watermarks the store holds for `(node_id, hello.epoch)`.
    /// Queues a Welcome, or a Refuse and returns it: the shell closes the connection after
    /// sending it.
    pub fn handle_hello(&mut self, hello: Hello, stored: PerLane<u64>) -> Result<Epoch, Refuse> {
        if let Err(refuse) = self.check_hello(&hello) {
            self.transmits.push_back(Message::Refuse(refuse.clone()));
            return Err(refuse);
        }
        self.session = Some(Session {
            epoch: hello.epoch,
            inventory_version: hello.inventory_version,
            durable: stored,
            pending: stored,
            resync_sent: PerLane::default(),
        });
        self.transmits.push_back(Message::Welcome(Welcome {
            relay_id: self.config.relay_id.clone(),
            region: self.config.region.clone(),
            watermarks: stored,
            limits: self.config.limits,
        }));
        Ok(hello.epoch)
    }

    /// The relay is over its connection limit: instead of judging the Hello, refuse the
    /// node with [`RefuseReason::Busy`] and the shell's `retry_after_ms` hint. Queues the
    /// Refuse and returns it; the shell closes the connection after sending it.
    pub fn refuse_busy(&mut self, retry_after_ms: u32) -> Refuse {
        let refuse = Refuse {
            reason: RefuseReason::Busy { retry_after_ms },
            message: format!(
                "relay {} is at its connection limit; retry after {retry_after_ms} ms",
                self.config.relay_id
            ),
        };
        self.transmits.push_back(Message::Refuse(refuse.clone()));
        refuse
    }

    /// A batch from the node. `Ok(Some)` holds the new events to commit; `Ok(None)` means
    /// nothing new (a retransmission, or a gap answered with Resync).
    pub fn handle_batch(&mut self, batch: Batch) -> Result<Option<Accepted>, ProtocolViolation> {
        let limits = self.config.limits;
        let session = self.session.as_mut().ok_or(ProtocolViolation::Unexpected("batch before hello"))?;
        let lane = batch.lane;
        let Some(last) = batch.last_seq() else {
            return Err(ProtocolViolation::EmptyBatch { lane });
        };
        if batch.events.len() > limits.batch_events_max as usize {
            return Err(ProtocolViolation::BatchTooLarge {
                lane,
                events: batch.events.len(),
                max: limits.batch_events_max,
            });
        }
        let first = batch.first_seq.get();
        let pending = *session.pending.get(lane);
        let durable = *session.durable.get(lane);
        // A sender keeps at most `batches_in_flight_max` batches of `batch_events_max`
        // beyond what it saw acknowledged, which is at most the durable watermark.
        let window = u64::from(limits.batches_in_flight_max) * u64::from(limits.batch_events_max);
        let window_end = durable.saturating_add(window);
        if last.get() > window_end {
            return Err(ProtocolViolation::BeyondWindow { lane, last: last.get(), window_end });
        }
        if first > pending + 1 {
            let from = pending + 1;
            if *session.resync_sent.get(lane) != Some(from) {
                *session.resync_sent.get_mut(lane) = Some(from);
                if let Some(from_seq) = Seq::new(from) {
                    self.transmits.push_back(Message::Resync(Resync { lane, from_seq }));
                }
            }
            return Ok(None);
        }
        if last.get() <= pending {
            // A retransmission. Whatever of it is durable can be acknowledged again at
            // once; the rest is acknowledged when its commit completes.
            if last.get() <= durable
                && let Some(through_seq) = Seq::new(durable)
            {
                self.transmits.push_back(Message::Ack(Ack { lane, through_seq }));
            }
            return Ok(None);
        }
        let skip = (pending + 1 - first) as usize;
        let mut records = batch.events;
        records.drain(..skip);
        *session.pending.get_mut(lane) = last.get();
        *session.resync_sent.get_mut(lane) = None;
        let first_seq = Seq::after(pending).ok_or(ProtocolViolation::Unexpected("seq overflow"))?;
        Ok(Some(Accepted { lane, first_seq, records }))
    }

    /// The shell committed `lane` through `through`: acknowledge it.
    pub fn handle_committed(&mut self, lane: Lane, through: Seq) {
        let Some(session) = self.session.as_mut() else { return };
        let durable = session.durable.get_mut(lane);
        // Paired with the store's own check: a commit never moves a watermark backwards
        // nor past what this receiver handed out.
        assert!(
            through.get() > *durable,
            "lane {lane} watermark would move backwards: {durable} to {through}"
        );
        assert!(through.get() <= *session.pending.get(lane), "lane {lane} committed past pending");
        *durable = through.get();
        self.transmits.push_back(Message::Ack(Ack { lane, through_seq: through }));
    }

    /// The next message to send: Welcome and Refuse go on the control stream, Ack and
    /// Resync on their lane's stream.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmits.pop_front()
    }

    /// Who is connected.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The epoch of the welcomed session.
    pub fn epoch(&self) -> Option<Epoch> {
        self.session.as_ref().map(|s| s.epoch)
    }

    /// The relay inventory version the node has merged, as its Hello said (0 before).
    pub fn node_inventory_version(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| s.inventory_version)
    }

    /// The durable watermark of `lane` on this connection.
    pub fn durable(&self, lane: Lane) -> u64 {
        self.session.as_ref().map_or(0, |s| *s.durable.get(lane))
    }

    fn check_hello(&self, hello: &Hello) -> Result<(), Refuse> {
        if hello.version != PROTOCOL_VERSION {
            return Err(Refuse {
                reason: RefuseReason::UnsupportedVersion,
                message: format!(
                    "protocol version {} is not supported; this relay speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
            });
        }
        if hello.node_id != self.identity.node_id || hello.region != self.identity.region {
            return Err(Refuse {
                reason: RefuseReason::IdentityMismatch,
                message: format!(
                    "hello claims {}/{} but the certificate says {}",
                    hello.region, hello.node_id, self.identity
                ),
            });
        }
        if self.identity.region != self.config.region {
            return Err(Refuse {
                reason: RefuseReason::WrongRegion,
                message: format!(
                    "node {} belongs to region {}; relay {} serves {}",
                    self.identity.node_id, self.identity.region, self.config.relay_id, self.config.region
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
