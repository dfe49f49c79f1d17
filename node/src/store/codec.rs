//! The stored form of a [`Record`] (store format 4).
//!
//! The wire and the block digests carry a record in postcard's encoding, which spends a
//! byte on every field a site's events mostly leave out (four optional fields and an
//! empty `attrs`) and writes each delta's key out in full, though it is nearly always the
//! event's own: about 9 of a site's 57-byte average record. This form keeps the same
//! content and puts the byte of each default where it is cheap:
//!
//! | part | encoding |
//! |---|---|
//! | head | one byte: bits 0–2 the kind (its index in [`Kind::ALL`]), bits 3–6 which of `occurred_at`, `device_id`, `shipment_id`, `order_id` follow, bit 7 whether `attrs` follows |
//! | `received_at_ms` | varint |
//! | `event_id`, `sku`, `location` | text |
//! | `qty` | zigzag varint |
//! | the optional fields present, in that order | text |
//! | `attrs`, if present | varint count, then key and value texts |
//! | deltas | varint count, then each: a key tag (0 the event's key, 1 its SKU at the location that follows as text, 2 the SKU and location that follow), and the change as a zigzag varint |
//!
//! A text is a varint length and its UTF-8 bytes; a varint is LEB128. Nothing is lost:
//! [`decode`] gives back the record [`encode`] was given, whatever its deltas are.

use std::collections::BTreeMap;

use sync_protocol::inventory::{Delta, StockKey};
use sync_protocol::{Event, Kind, Record};

/// Bits of the head byte.
const KIND_MASK: u8 = 0b111;
const OCCURRED_AT: u8 = 1 << 3;
const DEVICE_ID: u8 = 1 << 4;
const SHIPMENT_ID: u8 = 1 << 5;
const ORDER_ID: u8 = 1 << 6;
const ATTRS: u8 = 1 << 7;
/// Where a delta's key is.
const KEY_OWN: u64 = 0;
const KEY_OWN_SKU: u64 = 1;
const KEY_OTHER: u64 = 2;

/// Appends the stored form of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let event = &record.event;
    let optional = [&event.occurred_at, &event.device_id, &event.shipment_id, &event.order_id];
    let mut head = kind_index(event.kind);
    for (field, bit) in optional.iter().zip([OCCURRED_AT, DEVICE_ID, SHIPMENT_ID, ORDER_ID]) {
        if field.is_some() {
            head |= bit;
        }
    }
    if !event.attrs.is_empty() {
        head |= ATTRS;
    }
    out.push(head);
    put_varint(out, record.received_at_ms);
    put_text(out, event.event_id.as_str());
    put_text(out, event.sku.as_str());
    put_text(out, event.location.as_str());
    put_varint(out, zigzag(event.qty));
    for text in optional.into_iter().flatten() {
        put_text(out, text);
    }
    if !event.attrs.is_empty() {
        put_varint(out, event.attrs.len() as u64);
        for (key, value) in &event.attrs {
            put_text(out, key);
            put_text(out, value);
        }
    }
    put_varint(out, record.deltas.len() as u64);
    for delta in &record.deltas {
        if delta.key.sku != event.sku {
            put_varint(out, KEY_OTHER);
            put_text(out, delta.key.sku.as_str());
            put_text(out, delta.key.location.as_str());
        } else if delta.key.location != event.location {
            put_varint(out, KEY_OWN_SKU);
            put_text(out, delta.key.location.as_str());
        } else {
            put_varint(out, KEY_OWN);
        }
        put_varint(out, zigzag(delta.change));
    }
}

/// The stored form of `record`.
pub fn encode_to_vec(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode(record, &mut out);
    out
}

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored record does not decode: {0}")]
pub struct DecodeError(String);

/// The record whose stored form is `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader { bytes };
    let head = r.byte()?;
    let kind = *Kind::ALL.get(usize::from(head & KIND_MASK)).ok_or_else(|| fail("kind"))?;
    let received_at_ms = r.varint()?;
    let event_id = r.parsed("event_id")?;
    let sku = r.parsed("sku")?;
    let location = r.parsed("location")?;
    let qty = unzigzag(r.varint()?);
    let mut event = Event::new(event_id, kind, sku, location, qty);
    for (field, bit) in [
        (&mut event.occurred_at, OCCURRED_AT),
        (&mut event.device_id, DEVICE_ID),
        (&mut event.shipment_id, SHIPMENT_ID),
        (&mut event.order_id, ORDER_ID),
    ] {
        if head & bit != 0 {
            *field = Some(r.text()?.to_owned());
        }
    }
    if head & ATTRS != 0 {
        let count = r.count()?;
        let mut attrs = BTreeMap::new();
        for _ in 0..count {
            let key = r.text()?.to_owned();
            attrs.insert(key, r.text()?.to_owned());
        }
        event.attrs = attrs;
    }
    let count = r.count()?;
    let mut deltas = Vec::with_capacity(count);
    for _ in 0..count {
        let key = match r.varint()? {
            KEY_OWN => StockKey { sku: event.sku.clone(), location: event.location.clone() },
            KEY_OWN_SKU => StockKey { sku: event.sku.clone(), location: r.parsed("delta location")? },
            KEY_OTHER => StockKey { sku: r.parsed("delta sku")?, location: r.parsed("delta location")? },
            tag => return Err(fail(&format!("delta key tag {tag}"))),
        };
        deltas.push(Delta { key, change: unzigzag(r.varint()?) });
    }
    if !r.bytes.is_empty() {
        return Err(fail(&format!("{} bytes after the record", r.bytes.len())));
    }
    Ok(Record { received_at_ms, event, deltas })
}

fn kind_index(kind: Kind) -> u8 {
    // `Kind::ALL` lists every kind, so the position is always found; it is below 8.
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or_default() as u8
}

fn fail(what: &str) -> DecodeError {
    DecodeError(format!("bad {what}"))
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Appends `n` as a varint (LEB128).
pub(super) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The varint at the start of `bytes`, and the bytes after it.
pub(super) fn take_varint(bytes: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    let mut r = Reader { bytes };
    let n = r.varint()?;
    Ok((n, r.bytes))
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// The unread rest of a stored record.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or_else(|| fail("length: it ends early"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(fail("varint: longer than 10 bytes"))
    }

    /// A count of items that follow, each at least one byte long.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let count = self.varint()?;
        usize::try_from(count).ok().filter(|c| *c <= self.bytes.len()).ok_or_else(|| fail("count"))
    }

    fn text(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.count()?;
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(text).map_err(|_| fail("text: not UTF-8"))
    }

    fn parsed<T: std::str::FromStr<Err = sync_protocol::ParseError>>(
        &mut self,
        what: &str,
    ) -> Result<T, DecodeError> {
        self.text()?.parse().map_err(|e: sync_protocol::ParseError| fail(&format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests;
