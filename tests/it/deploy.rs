//! The shipped systemd units: hardened as the README promises, and accepted by
//! `systemd-analyze verify` with the real binaries in place of `/usr/local/bin`.

use std::path::Path;
use std::process::Command;

use simulator::bins::Bins;

/// `(unit file, installed binary path, built binary)` of both daemons.
fn units() -> Vec<(&'static str, &'static str, std::path::PathBuf)> {
    let bins = Bins::locate().unwrap();
    vec![
        ("node/deploy/outpost-node.service", "/usr/local/bin/outpost-node", bins.node),
        ("cloud-relay/deploy/outpost-relay.service", "/usr/local/bin/outpost-relay", bins.relay),
    ]
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The `key=value` lines of `section`.
fn settings<'a>(unit: &'a str, section: &str) -> Vec<(&'a str, &'a str)> {
    let header = format!("[{section}]");
    unit.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect()
}

#[test]
fn units_are_hardened() {
    for (file, _, _) in units() {
        let unit = std::fs::read_to_string(workspace().join(file)).unwrap();
        let service = settings(&unit, "Service");
        let has = |key: &str, value: &str| service.iter().any(|(k, v)| *k == key && *v == value);
        for (key, value) in [
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("NoNewPrivileges", "yes"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("CapabilityBoundingSet", ""),
        ] {
            assert!(has(key, value), "{file}: {key}={value} is missing");
        }
        assert!(service.iter().any(|(k, _)| *k == "StateDirectory"), "{file}: no StateDirectory");
        assert!(service.iter().any(|(k, _)| *k == "LoadCredential"), "{file}: the key is not a credential");
        assert_eq!(settings(&unit, "Install"), [("WantedBy", "multi-user.target")], "{file}");
    }
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let dir = tempfile::tempdir().unwrap();
    for (file, installed, built) in units() {
        let unit = std::fs::read_to_string(workspace().join(file)).unwrap();
        assert!(unit.contains(installed), "{file} runs {installed}");
        let name = Path::new(file).file_name().unwrap();
        let copy = dir.path().join(name);
        std::fs::write(&copy, unit.replace(installed, &built.display().to_string())).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap_or_else(|e| {
            panic!("systemd-analyze: {e}; install Debian's systemd package (apt-get install -y systemd)")
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: systemd-analyze verify failed:\n{stderr}");
        // Unknown keys and bad values are only warnings: none is allowed.
        assert!(stderr.trim().is_empty(), "{file}: systemd-analyze verify warned:\n{stderr}");
    }
}
