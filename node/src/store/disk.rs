//! Disk pressure: the quota, the marks at which each lane is shed, how much of the disk
//! the store occupies, and what a write error from the operating system means.
//!
//! # Shedding by lane
//! | store on disk | bulk | standard | critical |
//! |---|---|---|---|
//! | below 80% of the quota | accepted | accepted | accepted |
//! | 80% to 90% | 507 | accepted | accepted |
//! | 90% to 100% | 507 | 507 | accepted |
//! | at or over the quota | 507 | 507 | 507 |
//!
//! The writer checks the marks once per group commit, before the group's first event, so
//! the store passes the quota by at most one commit. Above the bulk mark it also prunes
//! acknowledged events past retention at once, and compacts the file; unacknowledged
//! events are never pruned, nor events within retention (their `event_id`s must still be
//! recognised when a scanner retries).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;
use sync_protocol::Lane;

/// Percent of the quota above which `bulk` events are shed.
pub const SHED_BULK_PERCENT: u64 = 80;
/// Percent of the quota above which `standard` events are shed too.
pub const SHED_STANDARD_PERCENT: u64 = 90;
/// Share of the filesystem's free space the default quota adds to what the store holds at
/// start-up: half, so that the rest of the box (logs, updates) keeps room.
pub const DEFAULT_QUOTA_PERCENT_OF_FREE: u64 = 50;

/// How many bytes the store may occupy on disk, and the marks derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The hard limit: `critical` events are accepted until the store reaches it.
    pub bytes: u64,
}

impl Quota {
    /// The size at and above which `lane` is shed.
    pub fn mark(self, lane: Lane) -> u64 {
        match lane {
            Lane::Critical => self.bytes,
            Lane::Standard => self.bytes / 100 * SHED_STANDARD_PERCENT,
            Lane::Bulk => self.bytes / 100 * SHED_BULK_PERCENT,
        }
    }

    /// Whether a store occupying `used_bytes` takes new events of `lane`.
    pub fn admits(self, lane: Lane, used_bytes: u64) -> bool {
        used_bytes < self.mark(lane)
    }

    /// Which lanes a store occupying `used_bytes` sheds.
    pub fn pressure(self, used_bytes: u64) -> Pressure {
        if self.admits(Lane::Bulk, used_bytes) {
            Pressure::Normal
        } else if self.admits(Lane::Standard, used_bytes) {
            Pressure::SheddingBulk
        } else if self.admits(Lane::Critical, used_bytes) {
            Pressure::SheddingStandard
        } else {
            Pressure::Full
        }
    }
}

/// What the store sheds because of its quota, as `/v1/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pressure {
    /// Below every mark.
    Normal,
    /// `bulk` is shed.
    SheddingBulk,
    /// `bulk` and `standard` are shed.
    SheddingStandard,
    /// At the quota: nothing new is stored.
    Full,
}

/// Bytes `path` occupies on disk: its allocated blocks, so that the holes redb leaves when
/// it extends the file ahead of use do not count. 0 for a missing file.
pub fn used_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// The default quota for a store in `dir` that occupies `used_bytes` now: that plus
/// [`DEFAULT_QUOTA_PERCENT_OF_FREE`] of the space its filesystem has free.
pub fn default_quota(dir: &Path, used_bytes: u64) -> io::Result<Quota> {
    let fs = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let free = fs.blocks_available().saturating_mul(fs.fragment_size());
    Ok(Quota { bytes: used_bytes.saturating_add(free / 100 * DEFAULT_QUOTA_PERCENT_OF_FREE) })
}

/// Why the store cannot write now: the operating system refused a write. The writer
/// reopens the store by itself once a test write to its directory succeeds again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The filesystem is full (ENOSPC, EDQUOT). Answered 507.
    #[error("the disk under the store is full: {0}; free space on it, nothing already stored is lost")]
    DiskFull(String),
    /// Any other write error: a read-only filesystem, EIO. Answered 503.
    #[error("the store cannot write: {0}; it retries by itself, nothing already stored is lost")]
    Io(String),
}

impl Failure {
    /// The failure a redb error stands for, or `None` for an error that is not the
    /// filesystem's (a bug or corruption, which reopening would not fix).
    pub fn of(e: &redb::Error) -> Option<Failure> {
        match e {
            redb::Error::Io(io) => Some(Failure::of_io(io)),
            redb::Error::PreviousIo => Some(Failure::Io("a previous write failed".into())),
            _ => None,
        }
    }

    /// The failure an OS error stands for.
    pub fn of_io(e: &io::Error) -> Failure {
        let full = e.kind() == io::ErrorKind::StorageFull
            || e.kind() == io::ErrorKind::QuotaExceeded
            || e.raw_os_error() == Some(nix::libc::ENOSPC);
        if full { Failure::DiskFull(e.to_string()) } else { Failure::Io(e.to_string()) }
    }

    /// The name used in status, metric labels and error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::DiskFull(_) => "disk_full",
            Failure::Io(_) => "store_failed",
        }
    }
}

/// Bytes a recovery probe writes and syncs before the store is reopened after a failure:
/// enough that a disk with only a few pages free does not pass.
pub const PROBE_BYTES: usize = 256 * 1024;

/// Whether `dir` takes a write again: writes, syncs and removes a probe file.
pub fn probe(dir: &Path) -> Result<(), Failure> {
    use std::io::Write as _;
    let path = dir.join(".outpost-write-probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| Failure::of_io(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_shed_bulk_then_standard_then_critical() {
        let quota = Quota { bytes: 1_000 };
        assert_eq!(quota.pressure(799), Pressure::Normal);
        assert_eq!(quota.pressure(800), Pressure::SheddingBulk);
        assert!(!quota.admits(Lane::Bulk, 800) && quota.admits(Lane::Standard, 800));
        assert_eq!(quota.pressure(900), Pressure::SheddingStandard);
        assert!(!quota.admits(Lane::Standard, 900) && quota.admits(Lane::Critical, 999));
        assert_eq!(quota.pressure(1_000), Pressure::Full);
        assert!(!quota.admits(Lane::Critical, 1_000));
    }

    #[test]
    fn enospc_is_disk_full_and_erofs_is_a_write_failure() {
        let full = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(Failure::of_io(&full).code(), "disk_full");
        let read_only = io::Error::from_raw_os_error(nix::libc::EROFS);
        assert_eq!(Failure::of_io(&read_only).code(), "store_failed");
        assert_eq!(Failure::of(&redb::Error::PreviousIo).map(|f| f.code()), Some("store_failed"));
    }

    #[test]
    fn default_quota_adds_half_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let quota = default_quota(dir.path(), 1_000).unwrap();
        assert!(quota.bytes > 1_000, "{quota:?}");
    }
}
