//! `outpost-relay inventory diff`: the relay's merged stock against a stock snapshot from
//! the ERP, as CSV lines `sku,location,qty`.
//!
//! A key missing on one side counts as zero there, so stock the ERP does not know and
//! stock Outpost never saw both show up. Differences are listed largest first.

use std::collections::BTreeMap;

use sync_protocol::inventory::StockKey;

/// Stock per key.
pub type Levels = BTreeMap<StockKey, i64>;

/// A snapshot line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct SnapshotError {
    /// The line, counting from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads a snapshot: one `sku,location,qty` per line, an optional header line
/// `sku,location,qty`, fields optionally in double quotes, blank lines and lines starting
/// with `#` ignored. A key listed twice is an error, not a sum: a snapshot lists each
/// key once.
pub fn parse_snapshot(text: &str) -> Result<Levels, SnapshotError> {
    let mut levels = Levels::new();
    let mut first_line_of: BTreeMap<StockKey, usize> = BTreeMap::new();
    let mut seen_data = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = trimmed.split(',').map(|f| unquote(f.trim())).collect();
        let bad = |reason: String| SnapshotError { line, reason };
        let [sku, location, qty] = fields.as_slice() else {
            return Err(bad(format!("expected sku,location,qty, found {} fields", fields.len())));
        };
        if !seen_data && [*sku, *location, *qty].map(str::to_ascii_lowercase) == ["sku", "location", "qty"] {
            seen_data = true;
            continue;
        }
        seen_data = true;
        let key = StockKey {
            sku: sku.parse().map_err(|e: sync_protocol::ParseError| bad(format!("sku: {}", e.reason)))?,
            location: location
                .parse()
                .map_err(|e: sync_protocol::ParseError| bad(format!("location: {}", e.reason)))?,
        };
        let qty: i64 = qty.parse().map_err(|e| bad(format!("qty {qty:?}: {e}")))?;
        if let Some(first) = first_line_of.insert(key.clone(), line) {
            return Err(bad(format!("{key} is listed twice (first on line {first})")));
        }
        levels.insert(key, qty);
    }
    Ok(levels)
}

fn unquote(field: &str) -> &str {
    field.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(field)
}

/// One key on which the relay and the snapshot disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The key.
    pub key: StockKey,
    /// The relay's merged value (0 if it never saw the key).
    pub relay: i64,
    /// The snapshot's quantity (0 if it does not list the key).
    pub snapshot: i64,
}

impl Difference {
    /// How much more the relay holds than the snapshot (negative: less).
    pub fn delta(&self) -> i128 {
        i128::from(self.relay) - i128::from(self.snapshot)
    }
}

/// Every key on which `relay` and `snapshot` differ, the largest difference first (ties
/// in key order).
pub fn differences(relay: &Levels, snapshot: &Levels) -> Vec<Difference> {
    let keys: std::collections::BTreeSet<&StockKey> = relay.keys().chain(snapshot.keys()).collect();
    let mut out: Vec<Difference> = keys
        .into_iter()
        .map(|key| Difference {
            key: key.clone(),
            relay: relay.get(key).copied().unwrap_or(0),
            snapshot: snapshot.get(key).copied().unwrap_or(0),
        })
        .filter(|d| d.relay != d.snapshot)
        .collect();
    out.sort_by(|a, b| {
        b.delta().unsigned_abs().cmp(&a.delta().unsigned_abs()).then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// The differences as a table, with a summary line.
pub fn render(diffs: &[Difference], relay_keys: usize, snapshot_keys: usize) -> String {
    let mut out = String::new();
    if !diffs.is_empty() {
        let width = |f: fn(&Difference) -> usize, title: &str| {
            diffs.iter().map(f).max().unwrap_or(0).max(title.len())
        };
        let sku_w = width(|d| d.key.sku.as_str().len(), "sku");
        let loc_w = width(|d| d.key.location.as_str().len(), "location");
        out.push_str(&format!(
            "{:sku_w$}  {:loc_w$}  {:>12}  {:>12}  {:>12}\n",
            "sku", "location", "relay", "snapshot", "difference"
        ));
        for d in diffs {
            out.push_str(&format!(
                "{:sku_w$}  {:loc_w$}  {:>12}  {:>12}  {:>+12}\n",
                d.key.sku.as_str(),
                d.key.location.as_str(),
                d.relay,
                d.snapshot,
                d.delta()
            ));
        }
    }
    let noun = if diffs.len() == 1 { "difference" } else { "differences" };
    out.push_str(&format!(
        "{} {noun} (relay: {relay_keys} keys, snapshot: {snapshot_keys} keys)\n",
        diffs.len()
    ));
    out
}

#[cfg(test)]
mod tests;
