//! A throwaway deployment PKI made with `outpost-relay pki`.
//!
//! The harness uses the product's own certificate commands rather than generating
//! certificates itself, so every run also checks that what `pki` writes is what the
//! daemons accept.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `pki` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The command could not be started.
    #[error("cannot run {program} pki {what}: {source}")]
    Spawn {
        /// The relay executable.
        program: String,
        /// The subcommand.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("{program} pki {what} exited with {status}: {stderr}")]
    Failed {
        /// The relay executable.
        program: String,
        /// The subcommand.
        what: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// The command succeeded but a file it should have written is missing.
    #[error("{program} pki {what} did not write {path}")]
    Missing {
        /// The relay executable.
        program: String,
        /// The subcommand.
        what: &'static str,
        /// The missing file.
        path: PathBuf,
    },
}

/// A certificate and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate chain file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// A CA and the relay's certificate in one directory; node certificates are added with
/// [`Pki::node`].
#[derive(Debug, Clone)]
pub struct Pki {
    relay_bin: PathBuf,
    dir: PathBuf,
    /// The region of the relay certificate.
    pub region: String,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The relay's certificate, valid for `localhost` and `127.0.0.1`.
    pub relay: CertPair,
}

impl Pki {
    /// Creates a CA and a relay certificate named `relay_name` for `region` in `dir`.
    pub fn init(relay_bin: &Path, dir: &Path, region: &str, relay_name: &str) -> Result<Pki, PkiError> {
        let pki = Pki {
            relay_bin: relay_bin.to_path_buf(),
            dir: dir.to_path_buf(),
            region: region.to_owned(),
            ca: dir.join("ca.pem"),
            relay: pair(dir, relay_name),
        };
        pki.run("init", &[], &[&pki.ca])?;
        let args = ["--name", relay_name, "--region", region, "--san", "localhost,127.0.0.1"];
        pki.run("relay", &args, &[&pki.relay.cert, &pki.relay.key])?;
        Ok(pki)
    }

    /// Issues a node certificate for `node_id` in `region` (which may differ from the
    /// relay's, to test residency).
    pub fn node(&self, node_id: &str, region: &str) -> Result<CertPair, PkiError> {
        let files = pair(&self.dir, node_id);
        self.run("node", &["--node", node_id, "--region", region], &[&files.cert, &files.key])?;
        Ok(files)
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn run(&self, what: &'static str, args: &[&str], expect: &[&Path]) -> Result<(), PkiError> {
        let program = self.relay_bin.display().to_string();
        let out = Command::new(&self.relay_bin)
            .args(["pki", what, "--dir"])
            .arg(&self.dir)
            .args(args)
            .output()
            .map_err(|source| PkiError::Spawn { program: program.clone(), what, source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(PkiError::Failed { program, what, status: out.status, stderr });
        }
        if let Some(path) = expect.iter().find(|p| !p.exists()) {
            return Err(PkiError::Missing { program, what, path: path.to_path_buf() });
        }
        Ok(())
    }
}

fn pair(dir: &Path, name: &str) -> CertPair {
    CertPair { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}
