//! A simulated disk with crash semantics: a write is durable only once a sync has covered
//! it, and a crash loses every write since the last sync.
//!
//! Stores write *operations* (an append, a recorded watermark, a whole transaction) and
//! rebuild their in-memory view from the synced operations when they restart, as a real
//! store recovers from its file. That is how a crash between a write and its fsync loses
//! exactly what it should, and nothing else.

/// A log of writes, split into the synced prefix and the unsynced tail.
#[derive(Debug, Clone)]
pub struct SimDisk<W> {
    synced: Vec<W>,
    unsynced: Vec<W>,
    syncs: u64,
}

impl<W> Default for SimDisk<W> {
    fn default() -> Self {
        SimDisk { synced: Vec::new(), unsynced: Vec::new(), syncs: 0 }
    }
}

impl<W> SimDisk<W> {
    /// Writes `op`; it is lost on a crash until the next [`SimDisk::sync`].
    pub fn write(&mut self, op: W) {
        self.unsynced.push(op);
    }

    /// Makes every write so far durable (an fsync).
    pub fn sync(&mut self) {
        self.synced.append(&mut self.unsynced);
        self.syncs += 1;
    }

    /// A power cut: unsynced writes are gone. Returns how many were lost.
    pub fn crash(&mut self) -> usize {
        let lost = self.unsynced.len();
        self.unsynced.clear();
        lost
    }

    /// What a restart reads back.
    pub fn synced(&self) -> &[W] {
        &self.synced
    }

    /// Writes not yet synced.
    pub fn unsynced(&self) -> &[W] {
        &self.unsynced
    }

    /// Syncs done so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }
}

#[cfg(test)]
mod tests;
