//! Newtypes for everything with meaning: identities, epochs, lanes and sequence numbers.
//!
//! Each type is parsed once at the edge (HTTP, config, certificate, wire) and is valid from
//! then on. String newtypes deserialize through their parser, so a frame carrying a bad
//! `NodeId` is a decode error, never a value that slips through.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string or number could not become one of the domain types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseError {
    /// The type or field that was being parsed, such as `node_id`.
    pub what: &'static str,
    /// What was wrong, for a person.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self { what, reason: reason.into() }
    }
}

/// Checks a string of 1..=`max` printable ASCII characters (0x21..=0x7e, plus space inside).
pub(crate) fn check_printable(what: &'static str, s: &str, max: usize) -> Result<(), ParseError> {
    if s.is_empty() {
        return Err(ParseError::new(what, "must not be empty"));
    }
    if s.len() > max {
        return Err(ParseError::new(what, format!("{} bytes is over the maximum of {max}", s.len())));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(ParseError::new(what, format!("character {c:?} is not printable ascii")));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                let check: fn(&str) -> Result<(), ParseError> = $check;
                check(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                let check: fn(&str) -> Result<(), ParseError> = $check;
                check(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Longest `node_id` and `region`, from PROTOCOL.md.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest `event_id`, from API.md.
pub const EVENT_ID_BYTES_MAX: usize = 128;
/// Longest `sku` and `location`, from API.md.
pub const ITEM_BYTES_MAX: usize = 64;

fn check_name(what: &'static str, s: &str) -> Result<(), ParseError> {
    if s.is_empty() || s.len() > NAME_BYTES_MAX {
        return Err(ParseError::new(what, format!("must be 1 to {NAME_BYTES_MAX} characters")));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(ParseError::new(what, format!("character {c:?} is not one of [a-z0-9-]")));
    }
    Ok(())
}

string_newtype!(
    /// A node's name, `[a-z0-9-]{1,64}`, such as `store-0042`.
    NodeId, "node_id", |s| check_name("node_id", s)
);
string_newtype!(
    /// A residency region, `[a-z0-9-]{1,64}`, such as `eu-west`.
    Region, "region", |s| check_name("region", s)
);
string_newtype!(
    /// The scanner's idempotency key: 1–128 printable ASCII.
    EventId, "event_id", |s| check_printable("event_id", s, EVENT_ID_BYTES_MAX)
);
string_newtype!(
    /// A stock-keeping unit: 1–64 printable ASCII.
    Sku, "sku", |s| check_printable("sku", s, ITEM_BYTES_MAX)
);
string_newtype!(
    /// A place on the site (bin, dock, shelf): 1–64 printable ASCII.
    Location, "location", |s| check_printable("location", s, ITEM_BYTES_MAX)
);

/// The scheme of the SAN URI that names a node in its certificate.
pub const NODE_URI_SCHEME: &str = "outpost://";

/// Who a node is, as its certificate says: `outpost://<region>/<node_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The region the node belongs to.
    pub region: Region,
    /// The node's name.
    pub node_id: NodeId,
}

impl NodeIdentity {
    /// The SAN URI form, `outpost://<region>/<node_id>`.
    pub fn to_uri(&self) -> String {
        format!("{NODE_URI_SCHEME}{}/{}", self.region, self.node_id)
    }

    /// Parses `outpost://<region>/<node_id>`.
    pub fn from_uri(uri: &str) -> Result<Self, ParseError> {
        let rest = uri.strip_prefix(NODE_URI_SCHEME).ok_or_else(|| {
            ParseError::new("node uri", format!("{uri:?} does not start with {NODE_URI_SCHEME}"))
        })?;
        let (region, node_id) = rest.split_once('/').ok_or_else(|| {
            ParseError::new("node uri", format!("{uri:?} is not {NODE_URI_SCHEME}<region>/<node_id>"))
        })?;
        Ok(Self { region: region.parse()?, node_id: node_id.parse()? })
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.region, self.node_id)
    }
}

/// A store's incarnation: a random `u64` drawn when the store is created.
///
/// A wiped or replaced store gets a new epoch, so its sequence numbers start again at 1
/// without being mistaken for the old store's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|e| ParseError::new("epoch", format!("{s:?} is not a hex u64: {e}")))
    }
}

/// A position in one `(node, epoch, lane)` sequence. Sequences start at 1 and have no gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub NonZeroU64);

impl Seq {
    /// The first sequence number of every lane.
    pub const FIRST: Seq = Seq(NonZeroU64::MIN);

    /// `Some(Seq)` for a non-zero value.
    pub fn new(n: u64) -> Option<Seq> {
        NonZeroU64::new(n).map(Seq)
    }

    /// The plain number.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The next sequence number; `None` only at `u64::MAX`, which no lane reaches.
    pub fn next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }

    /// The sequence number after a watermark (`0` meaning nothing yet).
    pub fn after(watermark: u64) -> Option<Seq> {
        watermark.checked_add(1).and_then(Seq::new)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A priority class with its own sequence space and its own QUIC stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// Shipments and dispatches: what a customer or carrier waits for.
    Critical,
    /// Stock movements: receive, pick, adjust, count, transfer.
    Standard,
    /// Scan telemetry.
    Bulk,
}

impl Lane {
    /// Every lane, highest priority first.
    pub const ALL: [Lane; 3] = [Lane::Critical, Lane::Standard, Lane::Bulk];

    /// The name used in JSON, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Critical => "critical",
            Lane::Standard => "standard",
            Lane::Bulk => "bulk",
        }
    }

    /// A dense index, for tables and arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lane of a dense index.
    pub fn from_index(i: usize) -> Option<Lane> {
        Lane::ALL.get(i).copied()
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Lane::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| ParseError::new("lane", format!("{s:?} is not one of critical, standard, bulk")))
    }
}

/// One value per lane, indexed by [`Lane`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerLane<T>(pub [T; 3]);

impl<T> PerLane<T> {
    /// The value of `lane`.
    pub fn get(&self, lane: Lane) -> &T {
        &self.0[lane.index()]
    }

    /// The value of `lane`, mutably.
    pub fn get_mut(&mut self, lane: Lane) -> &mut T {
        &mut self.0[lane.index()]
    }

    /// Lanes and values, highest priority first.
    pub fn iter(&self) -> impl Iterator<Item = (Lane, &T)> {
        Lane::ALL.into_iter().zip(self.0.iter())
    }

    /// One value per lane from a function of the lane.
    pub fn from_fn(mut f: impl FnMut(Lane) -> T) -> Self {
        PerLane([f(Lane::Critical), f(Lane::Standard), f(Lane::Bulk)])
    }
}

#[cfg(test)]
mod tests;
