//! The event a scanner posts, its validation, and the record the node stores and sends.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{EventId, Lane, Location, ParseError, Sku, check_printable};
use crate::inventory::Delta;

/// Most entries in an event's `attrs` map (API.md).
pub const ATTRS_MAX: usize = 16;
/// Longest `attrs` key (API.md).
pub const ATTR_KEY_BYTES_MAX: usize = 32;
/// Longest `attrs` value (API.md).
pub const ATTR_VALUE_BYTES_MAX: usize = 256;
/// Longest optional text field (`device_id`, `shipment_id`, `order_id`, `occurred_at`).
///
/// API.md does not name a limit; 128 matches `event_id`, which the same devices produce.
pub const TEXT_BYTES_MAX: usize = 128;
/// Largest `|qty|`. A billion units of one SKU at one location is far past any real site,
/// and keeps every sum of deltas far from `i64` overflow.
pub const QTY_ABS_MAX: i64 = 1_000_000_000;

/// What happened to the stock. Each kind has a default lane and an inventory meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A telemetry scan: no stock change.
    Scan,
    /// Goods in: `+qty`.
    Receive,
    /// Taken from a location for an order: `-qty`.
    Pick,
    /// Shipped to a customer: `-qty`.
    Ship,
    /// Handed to a carrier: `-qty`.
    Dispatch,
    /// A correction by `qty`, which may be negative.
    Adjust,
    /// A stock count of `qty` units at the location.
    Count,
    /// Moved to another location.
    Transfer,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 8] = [
        Kind::Scan,
        Kind::Receive,
        Kind::Pick,
        Kind::Ship,
        Kind::Dispatch,
        Kind::Adjust,
        Kind::Count,
        Kind::Transfer,
    ];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Scan => "scan",
            Kind::Receive => "receive",
            Kind::Pick => "pick",
            Kind::Ship => "ship",
            Kind::Dispatch => "dispatch",
            Kind::Adjust => "adjust",
            Kind::Count => "count",
            Kind::Transfer => "transfer",
        }
    }

    /// The lane of this kind when the configuration does not say otherwise (PROTOCOL.md).
    pub fn default_lane(self) -> Lane {
        match self {
            Kind::Ship | Kind::Dispatch => Lane::Critical,
            Kind::Receive | Kind::Pick | Kind::Adjust | Kind::Count | Kind::Transfer => Lane::Standard,
            Kind::Scan => Lane::Bulk,
        }
    }

    /// Whether `qty` may be negative for this kind: only a correction can be.
    pub fn allows_negative_qty(self) -> bool {
        self == Kind::Adjust
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            ParseError::new(
                "kind",
                format!("{s:?} is not one of scan, receive, pick, ship, dispatch, adjust, count, transfer"),
            )
        })
    }
}

/// A validated scanner event: every field is within its limits.
///
/// Two posts of one `event_id` are the same event when their `Event`s are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The scanner's idempotency key.
    pub event_id: EventId,
    /// What happened.
    pub kind: Kind,
    /// Which article.
    pub sku: Sku,
    /// Where.
    pub location: Location,
    /// How many; its meaning depends on `kind`.
    pub qty: i64,
    /// When the scanner says it happened (RFC 3339), if it says.
    pub occurred_at: Option<String>,
    /// The device that posted it.
    pub device_id: Option<String>,
    /// The shipment it belongs to.
    pub shipment_id: Option<String>,
    /// The order it belongs to.
    pub order_id: Option<String>,
    /// Small free-form annotations.
    pub attrs: BTreeMap<String, String>,
}

impl Event {
    /// Checks the limits that the types alone do not carry (`qty`, optional text, `attrs`).
    ///
    /// Decoding from the wire runs this too, so a peer cannot smuggle in what a scanner
    /// could not post.
    pub fn validate(&self) -> Result<(), ParseError> {
        // `unsigned_abs`, because `i64::MIN.abs()` overflows: a peer must not be able to
        // panic the decoder with it.
        if self.qty.unsigned_abs() > QTY_ABS_MAX.unsigned_abs() {
            return Err(ParseError::new("qty", format!("{} is beyond ±{QTY_ABS_MAX}", self.qty)));
        }
        if self.qty < 0 && !self.kind.allows_negative_qty() {
            return Err(ParseError::new(
                "qty",
                format!("{} is negative; only adjust takes a negative qty", self.qty),
            ));
        }
        for (what, value) in [
            ("occurred_at", &self.occurred_at),
            ("device_id", &self.device_id),
            ("shipment_id", &self.shipment_id),
            ("order_id", &self.order_id),
        ] {
            if let Some(v) = value {
                check_printable(what, v, TEXT_BYTES_MAX)?;
            }
        }
        if self.attrs.len() > ATTRS_MAX {
            return Err(ParseError::new(
                "attrs",
                format!("{} entries is over the maximum of {ATTRS_MAX}", self.attrs.len()),
            ));
        }
        for (k, v) in &self.attrs {
            if k.is_empty() || k.len() > ATTR_KEY_BYTES_MAX {
                return Err(ParseError::new(
                    "attrs",
                    format!("key {k:?} must be 1 to {ATTR_KEY_BYTES_MAX} bytes"),
                ));
            }
            if v.len() > ATTR_VALUE_BYTES_MAX {
                return Err(ParseError::new(
                    "attrs",
                    format!(
                        "value of {k:?} is {} bytes, over the maximum of {ATTR_VALUE_BYTES_MAX}",
                        v.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// An event with only the required fields; the optional ones are empty.
    pub fn new(event_id: EventId, kind: Kind, sku: Sku, location: Location, qty: i64) -> Event {
        Event {
            event_id,
            kind,
            sku,
            location,
            qty,
            occurred_at: None,
            device_id: None,
            shipment_id: None,
            order_id: None,
            attrs: BTreeMap::new(),
        }
    }

    /// The lane under the default mapping.
    pub fn default_lane(&self) -> Lane {
        self.kind.default_lane()
    }
}

/// An accepted event as the node stores it and sends it: the event plus what the node
/// added. Its `seq` is implied by its position in a [`crate::wire::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Node time of acceptance, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The event as posted.
    pub event: Event,
    /// Its inventory deltas, fixed by the node on acceptance ([`crate::inventory::deltas_of`]):
    /// none for a scan, one for most kinds, two for a transfer.
    pub deltas: Vec<Delta>,
}

/// Most deltas one event carries (a transfer: out of one location, into another).
pub const DELTAS_MAX: usize = 2;
/// Latest `received_at_ms` a peer may send: the last millisecond of the year 9999, the
/// end of what RFC 3339 can write.
pub const RECEIVED_AT_MS_MAX: u64 = 253_402_300_799_999;

#[cfg(test)]
pub(crate) mod tests;
