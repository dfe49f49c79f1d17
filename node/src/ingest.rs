//! The scanners' JSON, parsed at the edge into validated [`Event`]s, and the typed errors
//! of ingest with their HTTP status codes (API.md).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Map, Value};
use sync_protocol::{Event, ParseError};

/// The top-level fields an event may have; anything else is refused so that a scanner's
/// typo is found on day one.
const FIELDS: [&str; 10] = [
    "event_id",
    "kind",
    "sku",
    "location",
    "qty",
    "occurred_at",
    "device_id",
    "shipment_id",
    "order_id",
    "attrs",
];

/// Why a post (or one event of an array) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not JSON.
    #[error("body is not valid json: {0}")]
    MalformedJson(String),
    /// The body is over `body_bytes_max`.
    #[error("body is over the maximum of {max} bytes")]
    BodyTooLarge {
        /// The limit.
        max: usize,
    },
    /// A field is missing, unknown, or out of range.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field, such as `qty` or `attrs`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An array with more events than `batch_events_max`.
    #[error("{count} events is over the maximum of {max} per post; split the array")]
    TooManyEvents {
        /// Events posted.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The `event_id` was stored before with another payload.
    #[error("event_id {0} was stored before with a different payload")]
    Conflict(String),
    /// The node cannot store anything now (shutting down, or its store failed).
    #[error("node cannot store events now: {0}")]
    Unavailable(String),
    /// The body did not arrive within `request_timeout`.
    #[error("the request body did not arrive within {after_ms} ms")]
    RequestTimeout {
        /// The limit.
        after_ms: u64,
    },
    /// Not stored because the node is protecting itself; retry after `retry_after_s`.
    #[error("{message}")]
    Shed {
        /// Why.
        reason: ShedReason,
        /// Seconds the client should wait, sent as `Retry-After`.
        retry_after_s: u64,
        /// What a person should know, with the values involved.
        message: String,
    },
}

/// Why the node sheds an event instead of storing it (API.md: 429, 507, 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// Too many requests in flight for the event's lane (429).
    Overload,
    /// The store is over its lane's mark of the disk quota (507).
    DiskQuota,
    /// The filesystem under the store is full (507).
    DiskFull,
    /// The filesystem refused a write for another reason: read-only, EIO (503).
    StoreFailed,
}

impl ShedReason {
    /// Every reason, for metrics and status.
    pub const ALL: [ShedReason; 4] =
        [ShedReason::Overload, ShedReason::DiskQuota, ShedReason::DiskFull, ShedReason::StoreFailed];

    /// The error code of the answer, and the label in metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Overload => "overloaded",
            ShedReason::DiskQuota => "disk_quota",
            ShedReason::DiskFull => "disk_full",
            ShedReason::StoreFailed => "store_failed",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            ShedReason::Overload => StatusCode::TOO_MANY_REQUESTS,
            ShedReason::DiskQuota | ShedReason::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ShedReason::StoreFailed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IngestError {
    /// The HTTP status of this error (API.md).
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            IngestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::InvalidField { .. } | IngestError::TooManyEvents { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            IngestError::Conflict(_) => StatusCode::CONFLICT,
            IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngestError::Shed { reason, .. } => reason.status(),
        }
    }

    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::MalformedJson(_) => "malformed_json",
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::InvalidField { .. } => "invalid_field",
            IngestError::TooManyEvents { .. } => "too_many_events",
            IngestError::Conflict(_) => "event_id_conflict",
            IngestError::Unavailable(_) => "unavailable",
            IngestError::RequestTimeout { .. } => "request_timeout",
            IngestError::Shed { reason, .. } => reason.as_str(),
        }
    }

    /// The field at fault, for 422 bodies.
    pub fn field(&self) -> Option<&str> {
        match self {
            IngestError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Seconds to send as `Retry-After`, for errors that carry one.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            IngestError::Shed { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        IngestError::InvalidField { field: field.to_owned(), reason: reason.into() }
    }
}

impl From<ParseError> for IngestError {
    fn from(e: ParseError) -> Self {
        IngestError::invalid(e.what, e.reason)
    }
}

/// A post: one event or an array of them.
#[derive(Debug)]
pub enum Posted {
    /// One event object.
    Single(Result<Event, IngestError>),
    /// An array; each entry judged on its own. A refused entry keeps the `event_id` it
    /// was posted with, if it had one as a string, for its answer.
    Many(Vec<(Option<String>, Result<Event, IngestError>)>),
}

/// Parses a request body. Whole-body problems are errors; per-event problems are kept
/// per entry so that an array answers for each of its events.
pub fn parse_body(body: &[u8], batch_events_max: usize) -> Result<Posted, IngestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| IngestError::MalformedJson(e.to_string()))?;
    match value {
        Value::Array(items) => {
            if items.len() > batch_events_max {
                return Err(IngestError::TooManyEvents { count: items.len(), max: batch_events_max });
            }
            if items.is_empty() {
                return Err(IngestError::invalid("body", "an array must hold at least one event"));
            }
            Ok(Posted::Many(
                items
                    .into_iter()
                    .map(|item| {
                        let id = item.get("event_id").and_then(Value::as_str).map(str::to_owned);
                        match parse_event(item) {
                            Ok(event) => (None, Ok(event)),
                            Err(e) => (id, Err(e)),
                        }
                    })
                    .collect(),
            ))
        }
        other => Ok(Posted::Single(parse_event(other))),
    }
}

/// Parses and validates one event object.
pub fn parse_event(value: Value) -> Result<Event, IngestError> {
    let Value::Object(mut map) = value else {
        return Err(IngestError::invalid("body", "an event must be a json object"));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(IngestError::invalid(unknown, "unknown field"));
    }
    let event = Event {
        event_id: required_str(&mut map, "event_id")?.parse()?,
        kind: required_str(&mut map, "kind")?.parse()?,
        sku: required_str(&mut map, "sku")?.parse()?,
        location: required_str(&mut map, "location")?.parse()?,
        qty: match map.remove("qty") {
            None | Some(Value::Null) => return Err(IngestError::invalid("qty", "missing")),
            Some(v) => {
                v.as_i64().ok_or_else(|| IngestError::invalid("qty", format!("{v} is not an integer")))?
            }
        },
        occurred_at: optional_str(&mut map, "occurred_at")?,
        device_id: optional_str(&mut map, "device_id")?,
        shipment_id: optional_str(&mut map, "shipment_id")?,
        order_id: optional_str(&mut map, "order_id")?,
        attrs: attrs(map.remove("attrs"))?,
    };
    if let Some(at) = &event.occurred_at
        && !is_rfc3339(at)
    {
        return Err(IngestError::invalid("occurred_at", format!("{at:?} is not an RFC 3339 timestamp")));
    }
    event.validate()?;
    Ok(event)
}

fn required_str(map: &mut Map<String, Value>, field: &str) -> Result<String, IngestError> {
    match map.remove(field) {
        None | Some(Value::Null) => Err(IngestError::invalid(field, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(IngestError::invalid(field, format!("{v} is not a string"))),
    }
}

fn optional_str(map: &mut Map<String, Value>, field: &str) -> Result<Option<String>, IngestError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(IngestError::invalid(field, format!("{v} is not a string"))),
    }
}

fn attrs(value: Option<Value>) -> Result<BTreeMap<String, String>, IngestError> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => {
                    Err(IngestError::invalid("attrs", format!("value of {k:?} is {other}, not a string")))
                }
            })
            .collect(),
        Some(v) => Err(IngestError::invalid("attrs", format!("{v} is not an object"))),
    }
}

/// Checks the shape `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` of RFC 3339.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let head_ok = digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19);
    if !head_ok {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3) && at(i + 3, b':') && digits(i + 4..i + 6) && i + 6 == b.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
