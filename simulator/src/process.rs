//! Relay and node daemons as child processes: start, wait until ready, kill, restart.
//!
//! Every child gets explicit flags (never a config file or an `OUTPOST_*` variable
//! inherited from the caller), writes stderr and stdout to a log file whose tail goes into
//! every error, and is stopped by PID: [`Daemon::kill`] sends SIGKILL (a power cut),
//! [`Daemon::terminate`] sends SIGTERM (a clean stop). Dropping a [`Daemon`] kills its
//! child, so no process outlives the harness that started it.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::api::Client;
use crate::pki::CertPair;

/// How long a daemon may take to answer `GET /readyz` after it is spawned. Generous
/// because a debug build on a 2-core box that is also compiling can be slow to start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Daemon::terminate`] waits for a graceful exit before sending SIGKILL.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the log quoted in an error.
pub const LOG_TAIL_LINES: usize = 25;

/// Starting, stopping or reaching a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A free port could not be found.
    #[error("cannot find a free {proto} port on 127.0.0.1: {source}")]
    Port {
        /// `tcp` or `udp`.
        proto: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be created or written.
    #[error("cannot write the log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The executable could not be started.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// The daemon's name in the harness.
        name: String,
        /// The executable.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before it was ready.
    #[error("{name} exited with {status} before it was ready; log tail ({log}):\n{tail}")]
    Exited {
        /// The daemon's name in the harness.
        name: String,
        /// Its exit status.
        status: ExitStatus,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// `GET /readyz` did not answer 200 in time.
    #[error("{name} was not ready within {timeout:?} at {url}; log tail ({log}):\n{tail}")]
    NotReady {
        /// The daemon's name in the harness.
        name: String,
        /// The readiness URL.
        url: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// Signalling or reaping the child failed.
    #[error("cannot {what} {name} (pid {pid}): {source}")]
    Signal {
        /// What the harness was doing.
        what: &'static str,
        /// The daemon's name in the harness.
        name: String,
        /// Its PID.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A data directory could not be removed.
    #[error("cannot wipe the data directory {path}: {source}")]
    Wipe {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A free TCP port on 127.0.0.1, for an HTTP listener.
pub fn free_tcp_addr() -> Result<SocketAddr, ProcessError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|source| ProcessError::Port { proto: "tcp", source })
}

/// A free UDP port on 127.0.0.1, for a QUIC endpoint.
pub fn free_udp_addr() -> Result<SocketAddr, ProcessError> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|source| ProcessError::Port { proto: "udp", source })
}

/// One daemon process: how to start it, and the running child if any.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    data_dir: PathBuf,
    log: PathBuf,
    http: SocketAddr,
    /// A command the daemon runs under (it ends by exec'ing the daemon, so the PID stays).
    launcher: Vec<OsString>,
    child: Option<Child>,
    starts: u32,
}

impl Daemon {
    fn new(
        name: String,
        program: &Path,
        args: Vec<OsString>,
        data_dir: PathBuf,
        log: PathBuf,
        http: SocketAddr,
    ) -> Daemon {
        let program = program.to_path_buf();
        Daemon { name, program, args, data_dir, log, http, launcher: Vec::new(), child: None, starts: 0 }
    }

    /// Runs the daemon as the last arguments of `launcher` from the next start on, such
    /// as `unshare --mount ...` to give it a mount namespace of its own. The launcher must
    /// exec the daemon, so that its PID is the daemon's.
    pub fn launch_via(&mut self, launcher: Vec<OsString>) {
        self.launcher = launcher;
    }

    /// The daemon's name in the harness, such as `relay` or `node store-0042`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// A client of the HTTP API.
    pub fn client(&self) -> Client {
        Client::new(self.http)
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file (all starts, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The PID of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a child was started and has not been seen to exit.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns the child and waits until `GET /readyz` answers 200.
    pub async fn start(&mut self) -> Result<(), ProcessError> {
        self.spawn()?;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// SIGKILL (like a power cut) and reap. Does nothing when no child runs.
    pub fn kill(&mut self) -> Result<(), ProcessError> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let pid = child.id();
        self.signal(pid, Signal::SIGKILL)?;
        child.wait().map_err(|source| ProcessError::Signal {
            what: "reap",
            name: self.name.clone(),
            pid,
            source,
        })?;
        Ok(())
    }

    /// SIGTERM and wait for the exit; SIGKILL after `timeout`. Returns the exit status of
    /// the graceful stop, or `None` when it had to be killed or no child ran.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let Some(child) = self.child.as_mut() else { return Ok(None) };
        let pid = child.id();
        if matches!(child.try_wait(), Ok(Some(_))) {
            self.child = None;
            return Ok(None);
        }
        self.signal(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else { return Ok(None) };
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(Some(status));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(source) => {
                    return Err(ProcessError::Signal { what: "reap", name: self.name.clone(), pid, source });
                }
            }
        }
        self.kill()?;
        Ok(None)
    }

    /// SIGSTOP: the child stays alive but runs no code, like a frozen VM or a process
    /// stuck on a dead disk; its sockets keep receiving into their buffers. Does nothing
    /// when no child runs. A frozen child can still be killed.
    pub fn freeze(&self) -> Result<(), ProcessError> {
        match self.pid() {
            Some(pid) => self.signal(pid, Signal::SIGSTOP),
            None => Ok(()),
        }
    }

    /// SIGCONT: a frozen child runs again. Does nothing when no child runs.
    pub fn thaw(&self) -> Result<(), ProcessError> {
        match self.pid() {
            Some(pid) => self.signal(pid, Signal::SIGCONT),
            None => Ok(()),
        }
    }

    /// Kills the running child (SIGKILL) and starts it again on the same data directory
    /// and ports.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        self.kill()?;
        self.start().await
    }

    /// Removes the data directory, so the next start begins with an empty store. Kills the
    /// child first.
    pub fn wipe_data(&mut self) -> Result<(), ProcessError> {
        self.kill()?;
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ProcessError::Wipe { path: self.data_dir.clone(), source }),
        }
    }

    /// The last `lines` lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Spawns the child without waiting for it to be ready (a SIGKILL first if one runs).
    pub fn spawn(&mut self) -> Result<(), ProcessError> {
        self.kill()?;
        self.starts += 1;
        let log_err = |source| ProcessError::Log { path: self.log.clone(), source };
        let mut log = File::options().create(true).append(true).open(&self.log).map_err(log_err)?;
        writeln!(log, "--- harness: start #{} of {}", self.starts, self.name).map_err(log_err)?;
        let stdout = log.try_clone().map_err(log_err)?;
        let mut cmd = match self.launcher.split_first() {
            Some((launcher, launcher_args)) => {
                let mut cmd = Command::new(launcher);
                cmd.args(launcher_args).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(stdout).stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OUTPOST_") {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: self.name.clone(),
            program: self.program.clone(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), ProcessError> {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log.clone(),
                    tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            if client.is_ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    url: format!("{}/readyz", client.base()),
                    timeout,
                    log: self.log.clone(),
                    tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, pid: u32, sig: Signal) -> Result<(), ProcessError> {
        let raw = i32::try_from(pid).map_err(|_| ProcessError::Signal {
            what: "signal",
            name: self.name.clone(),
            pid,
            source: std::io::Error::other("pid out of range"),
        })?;
        match signal::kill(Pid::from_raw(raw), sig) {
            // ESRCH: the child already exited (and is a zombie until reaped), which is fine.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(ProcessError::Signal {
                what: "signal",
                name: self.name.clone(),
                pid,
                source: std::io::Error::from(errno),
            }),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Best effort: a child that already exited only needs reaping.
        if let Err(e) = self.kill() {
            tracing::warn!(name = %self.name, error = %e, "cannot kill child on drop");
        }
    }
}

/// The relay daemon.
#[derive(Debug)]
pub struct Relay {
    daemon: Daemon,
    quic: SocketAddr,
}

/// Where and how to run a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The name used in logs and errors.
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The relay's certificate and key.
    pub cert: CertPair,
}

impl Relay {
    /// Prepares a relay on fresh ports; call [`Daemon::start`] to run it.
    pub fn new(bin: &Path, config: RelayConfig) -> Result<Relay, ProcessError> {
        let quic = free_udp_addr()?;
        let http = free_tcp_addr()?;
        let mut args: Vec<OsString> = vec!["run".into(), "--data-dir".into(), config.data_dir.clone().into()];
        push_flag(&mut args, "--quic", quic.to_string());
        push_flag(&mut args, "--http", http.to_string());
        push_flag(&mut args, "--ca", &config.ca);
        push_flag(&mut args, "--cert", &config.cert.cert);
        push_flag(&mut args, "--key", &config.cert.key);
        let daemon = Daemon::new(config.name, bin, args, config.data_dir, config.log, http);
        Ok(Relay { daemon, quic })
    }

    /// The QUIC address nodes connect to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic
    }
}

impl std::ops::Deref for Relay {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// Where and how to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node id, as in its certificate.
    pub node_id: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The relays to replicate to, in order.
    pub relays: Vec<SocketAddr>,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The node's certificate and key.
    pub cert: CertPair,
    /// More flags, appended as given.
    pub extra_args: Vec<String>,
}

/// The node daemon.
#[derive(Debug)]
pub struct Node {
    daemon: Daemon,
    node_id: String,
}

impl Node {
    /// Prepares a node on a fresh HTTP port; call [`Daemon::start`] to run it.
    pub fn new(bin: &Path, config: NodeConfig) -> Result<Node, ProcessError> {
        let http = free_tcp_addr()?;
        let mut args: Vec<OsString> = vec!["run".into(), "--data-dir".into(), config.data_dir.clone().into()];
        push_flag(&mut args, "--http", http.to_string());
        for relay in &config.relays {
            push_flag(&mut args, "--relay", relay.to_string());
        }
        push_flag(&mut args, "--ca", &config.ca);
        push_flag(&mut args, "--cert", &config.cert.cert);
        push_flag(&mut args, "--key", &config.cert.key);
        args.extend(config.extra_args.iter().map(OsString::from));
        let name = format!("node {}", config.node_id);
        let daemon = Daemon::new(name, bin, args, config.data_dir, config.log, http);
        Ok(Node { daemon, node_id: config.node_id })
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The URL scanners post to.
    pub fn events_url(&self) -> String {
        format!("http://{}/v1/events", self.daemon.http_addr())
    }
}

impl std::ops::Deref for Node {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

fn push_flag(args: &mut Vec<OsString>, flag: &str, value: impl Into<OsString>) {
    args.push(flag.into());
    args.push(value.into());
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
