//! The committed completion scripts and man pages match the clap
//! definition. To refresh them after changing a flag:
//! `GENALYTICS_BLESS=1 cargo test --test integration generated`.

use std::path::Path;

use crate::harness::Cmd;

#[test]
fn completions_and_man_pages_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("GENALYTICS_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, contents) in genalytics::commands::completions::generated_files().unwrap() {
        let file = root.join(&path);
        if bless {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &contents).unwrap();
        } else if std::fs::read(&file).ok().as_deref() != Some(contents.as_slice()) {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}; run GENALYTICS_BLESS=1 cargo test --test integration generated"
    );
}

#[test]
fn the_bash_completion_is_valid_bash() {
    let ran = Cmd::new().args(["completions", "bash"]).ok();
    assert!(ran.stdout.contains("genalytics"), "{}", ran.stdout);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("genalytics.bash");
    std::fs::write(&script, &ran.stdout).unwrap();
    let status = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
}
