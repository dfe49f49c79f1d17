//! Same-run limits: what this machine's disk, redb and loopback do on their own, measured
//! in the bench's own process right before the figure they are compared with.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use redb::{Database, Durability, TableDefinition};

/// The table of [`redb_group_commit`]: one table of records keyed by `(lane, seq)`, with
/// no id index (PERFORMANCE.md's reference layout).
const EVENTS: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("events");
/// The size of a postcard record of a typical scan (PERFORMANCE.md's reference figure).
pub const RECORD_BYTES: usize = 61;

/// Overwrites of 4 KiB followed by `fdatasync`, per second, in `dir`.
pub fn fsync_rate(dir: &Path, writes: usize) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let page = [0x5au8; 4096];
    file.write_all(&page)?;
    file.sync_all()?;
    let started = Instant::now();
    for _ in 0..writes {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&page)?;
        file.sync_data()?;
    }
    let rate = writes as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// What raw redb does with the node's event layout.
#[derive(Debug, Clone, Copy)]
pub struct RedbFigures {
    /// Events per second in durable commits of `group` events.
    pub events_per_sec: f64,
    /// File bytes per event afterwards.
    pub bytes_per_event: f64,
}

/// Appends `events` records of [`RECORD_BYTES`] in durable (fsync'd) commits of `group`
/// events to a fresh redb file in `dir`: the ceiling of any store built on redb here.
pub fn redb_group_commit(dir: &Path, events: u64, group: u64) -> anyhow::Result<RedbFigures> {
    let path = dir.join("redb-probe.redb");
    let db = Database::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut record = [0u8; RECORD_BYTES];
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < events {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut table = tx.open_table(EVENTS)?;
            for _ in 0..group.min(events - seq) {
                seq += 1;
                // Varying bytes, as records vary.
                record[..8].copy_from_slice(&seq.to_le_bytes());
                table.insert((2u8, seq), record.as_slice())?;
            }
        }
        tx.commit()?;
    }
    let events_per_sec = events as f64 / started.elapsed().as_secs_f64();
    drop(db);
    // What the file occupies (its allocated blocks), as the node's `disk_bytes` is measured.
    let bytes = std::fs::metadata(&path)?.blocks() * 512;
    std::fs::remove_file(&path)?;
    Ok(RedbFigures { events_per_sec, bytes_per_event: bytes as f64 / events as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_measure_something() {
        let dir = tempfile::tempdir().unwrap();
        assert!(fsync_rate(dir.path(), 5).unwrap() > 0.0);
        let redb = redb_group_commit(dir.path(), 2_000, 500).unwrap();
        assert!(redb.events_per_sec > 0.0);
        // Every record is stored: at least its own bytes per event.
        assert!(redb.bytes_per_event >= RECORD_BYTES as f64, "{redb:?}");
        assert!(!dir.path().join("redb-probe.redb").exists(), "probe files are removed");
    }
}
