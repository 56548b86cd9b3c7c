//! What `contrib/` ships: systemd units that systemd itself accepts, and a
//! follower that speaks systemd's notify protocol (READY, WATCHDOG,
//! STOPPING) to the socket it is given.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::TestEnv;

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd");

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(UNITS).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        if name.ends_with(".service") {
            assert!(text.contains("ExecStart=/usr/bin/genalytics "), "{name}");
            assert!(
                text.contains("TimeoutStartSec="),
                "{name}: a hung run must time out"
            );
            assert!(
                text.contains("DynamicUser=yes"),
                "{name}: nothing to create by hand"
            );
            assert!(text.contains("ProtectSystem=strict"), "{name}");
            assert!(text.contains("NoNewPrivileges=yes"), "{name}");
        }
        if let Some(stem) = name.strip_suffix(".timer") {
            assert!(
                Path::new(UNITS).join(format!("{stem}.service")).exists(),
                "{name} has no service"
            );
        }
        // The package puts the binary in /usr/bin; here it is the one built.
        let text = text.replace("/usr/bin/genalytics", env!("CARGO_BIN_EXE_genalytics"));
        let target = dir.path().join(&name);
        std::fs::write(&target, text).unwrap();
        copied.push(target);
    }
    assert!(copied.len() >= 7, "{copied:?}");
    assert!(
        copied
            .iter()
            .any(|p| p.ends_with("genalytics-transfer-follow.service"))
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copied)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze complained:\n{stderr}"
    );
}

/// Messages on a notify socket until `want` arrives or time runs out.
fn wait_message(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let found = message.lines().any(|line| line == want);
            seen.push(message);
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_follower_tells_systemd_it_is_ready_alive_and_stopping() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut follower = env
        .genalytics()
        .args(["transfer", "--follow", "-q"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000")
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(wait_message(&socket, "READY=1", &mut seen), "{seen:?}");
    assert!(wait_message(&socket, "WATCHDOG=1", &mut seen), "{seen:?}");
    // Still fed a second later: the ping is periodic, not once.
    let pings = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(wait_message(&socket, "WATCHDOG=1", &mut seen), "{seen:?}");
    assert!(seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() > pings);
    crate::harness::sigterm(&follower);
    assert!(wait_message(&socket, "STOPPING=1", &mut seen), "{seen:?}");
    assert!(follower.wait().unwrap().success());
}

#[test]
fn the_debian_package_ships_what_exists() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deb = &metadata["packages"][0]["metadata"]["deb"];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut destinations = Vec::new();
    for asset in deb["assets"].as_array().unwrap() {
        let source = asset[0].as_str().unwrap();
        let target = asset[1].as_str().unwrap();
        destinations.push(target.to_string());
        if source.starts_with("target/") {
            continue;
        }
        // A glob's directory holds at least one file; a plain path exists.
        match source
            .strip_suffix("/*")
            .or_else(|| source.strip_suffix("/*.1"))
        {
            Some(dir) => assert!(
                std::fs::read_dir(root.join(dir)).unwrap().next().is_some(),
                "{source}"
            ),
            None => assert!(root.join(source).is_file(), "{source} is missing"),
        }
    }
    for wanted in [
        "usr/bin/",
        "usr/share/man/man1/",
        "usr/lib/systemd/system/",
        "usr/share/bash-completion/completions/genalytics",
        "usr/share/zsh/vendor-completions/",
        "usr/share/fish/vendor_completions.d/",
        "etc/genalytics/genalytics.toml",
    ] {
        assert!(
            destinations.iter().any(|d| d == wanted),
            "{wanted} is not shipped"
        );
    }
    // The settings file is the package's conffile, private; every service
    // reads it through a credential.
    assert_eq!(
        deb["conf-files"],
        serde_json::json!(["/etc/genalytics/genalytics.toml"])
    );
    for unit in std::fs::read_dir(UNITS).unwrap() {
        let path = unit.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if path.extension().is_some_and(|e| e == "service") {
            assert!(
                text.contains("LoadCredential=genalytics.toml:/etc/genalytics/genalytics.toml")
                    && text.contains("Environment=GENALYTICS_CONFIG=%d/genalytics.toml"),
                "{}",
                path.display()
            );
        }
    }
}
