//! Tests of the simulated disk: what a crash keeps and what it loses.

use super::SimDisk;

#[test]
fn a_crash_loses_only_unsynced_writes() {
    let mut disk = SimDisk::default();
    disk.write(1);
    disk.write(2);
    disk.sync();
    disk.write(3);
    assert_eq!(disk.unsynced(), &[3]);
    assert_eq!(disk.crash(), 1);
    assert_eq!(disk.synced(), &[1, 2]);
    assert!(disk.unsynced().is_empty());
    assert_eq!(disk.syncs(), 1);
}

#[test]
fn a_sync_covers_every_write_before_it() {
    let mut disk = SimDisk::default();
    disk.write("a");
    disk.sync();
    disk.write("b");
    disk.sync();
    assert_eq!(disk.crash(), 0);
    assert_eq!(disk.synced(), &["a", "b"]);
}
