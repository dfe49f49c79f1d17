//! Finding the `outpost-node` and `outpost-relay` executables the harness runs.
//!
//! The harness runs the binaries Cargo built, never a copy on `PATH`: a test must exercise
//! the code of the same checkout. The search order is `OUTPOST_BIN_DIR` when set, then the
//! directory of the running executable, then its parent (integration tests run from
//! `target/<profile>/deps`, while the binaries live in `target/<profile>`).

use std::path::{Path, PathBuf};

/// The node daemon's executable name.
pub const NODE_BIN: &str = "outpost-node";
/// The relay daemon's executable name.
pub const RELAY_BIN: &str = "outpost-relay";
/// The environment variable naming the directory that holds both executables.
pub const BIN_DIR_ENV: &str = "OUTPOST_BIN_DIR";

/// A binary could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    /// None of the searched directories holds the executable.
    #[error(
        "cannot find {name} in {searched}; build it with `cargo build --workspace --bins` \
         or point {BIN_DIR_ENV} at the directory that holds it"
    )]
    NotFound {
        /// The executable's name.
        name: &'static str,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// The running executable's own path is unknown, so there is nowhere to look.
    #[error("cannot tell where the running executable lives ({0}); set {BIN_DIR_ENV}")]
    CurrentExe(#[source] std::io::Error),
}

/// The paths of both daemons.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `outpost-node`.
    pub node: PathBuf,
    /// `outpost-relay`.
    pub relay: PathBuf,
}

impl Bins {
    /// Locates both daemons (see the module doc for the search order).
    pub fn locate() -> Result<Bins, BinError> {
        let dirs = search_dirs()?;
        Ok(Bins { node: find(NODE_BIN, &dirs)?, relay: find(RELAY_BIN, &dirs)? })
    }
}

/// The directories searched, in order.
fn search_dirs() -> Result<Vec<PathBuf>, BinError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(vec![PathBuf::from(dir)]);
    }
    let exe = std::env::current_exe().map_err(BinError::CurrentExe)?;
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    Ok(dirs)
}

fn find(name: &'static str, dirs: &[PathBuf]) -> Result<PathBuf, BinError> {
    dirs.iter().map(|dir| dir.join(name)).find(|path| is_executable(path)).ok_or_else(|| BinError::NotFound {
        name,
        searched: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
