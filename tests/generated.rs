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
    for (path, contents) in genalytics::testing::generated_files().unwrap() {
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

#[test]
fn man_pages_cover_every_command_with_examples_that_parse() {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let generated: std::collections::BTreeSet<String> = genalytics::testing::generated_files()
        .unwrap()
        .into_iter()
        .filter_map(|(path, _)| path.strip_prefix("man/").map(str::to_string))
        .collect();
    let committed: std::collections::BTreeSet<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        committed, generated,
        "man/ holds exactly the generated pages"
    );
    for page in [
        "genalytics-report-trends.1",
        "genalytics-report-peak-hours.1",
        "genalytics-rejected-replay.1",
    ] {
        assert!(generated.contains(page), "{page}");
    }
    for name in &generated {
        let text = std::fs::read_to_string(man.join(name)).unwrap();
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
        ] {
            assert!(text.contains(section), "{name} lacks {section}");
        }
        assert!(
            text.contains("DATABASE_URL") && text.contains("GENALYTICS_REDIS_NS"),
            "{name}"
        );
        // Global options are on every page.
        assert!(
            text.contains("\\-\\-database\\-url"),
            "{name} lacks the global options"
        );
        // Every page it refers to exists.
        let plain = text.replace("\\-", "-");
        for (at, _) in plain.match_indices("(1)") {
            let start = plain[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(0, |i| i + 1);
            let referred = format!("{}.1", &plain[start..at]);
            assert!(
                generated.contains(&referred),
                "{name} refers to {referred}, which does not exist"
            );
        }
        // Pages of commands that run (not groups) show examples, and every
        // example is a command line genalytics accepts.
        if text.contains(".SH EXAMPLES") {
            let examples = &plain[plain.find(".SH EXAMPLES").unwrap()..];
            let examples = &examples[..examples[4..].find(".SH").map_or(examples.len(), |i| i + 4)];
            for line in examples.lines().filter_map(|l| l.strip_prefix("\\fB")) {
                let line = line.trim_end_matches("\\fR").replace("\\(ti", "~");
                for command in line.split("&&") {
                    let words: Vec<&str> = command
                        .split_whitespace()
                        .take_while(|w| !matches!(*w, ">" | "|"))
                        .collect();
                    assert_eq!(words.first(), Some(&"genalytics"), "{name}: {line}");
                    if let Err(err) = <genalytics::Cli as clap::Parser>::try_parse_from(&words) {
                        panic!("{name}: example `{line}` does not parse: {err}");
                    }
                }
            }
        } else {
            assert!(
                name == "genalytics-rejected.1" || name == "genalytics-report.1",
                "{name} has no examples"
            );
        }
    }
}

/// Every command line the README and docs/ show — in `sh` and `console`
/// blocks, `$ genalytics …` or `genalytics …`, split at `&&`, `;`, `|` and
/// redirections — is one genalytics accepts, so the pages cannot drift
/// from the flags.
#[test]
fn every_command_line_in_the_readme_and_docs_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for page in [
        "README.md",
        "docs/commands.md",
        "docs/configuration.md",
        "docs/operations.md",
    ] {
        let text = std::fs::read_to_string(root.join(page)).unwrap();
        let mut in_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if !in_block {
                continue;
            }
            let line = line.trim().trim_start_matches("$ ");
            for command in line.split("&&").flat_map(|c| c.split(';')) {
                let words: Vec<String> = command
                    .split_whitespace()
                    .take_while(|w| !matches!(*w, ">" | "|" | "2>&1" | ">>" | "#"))
                    .map(|w| w.trim_matches('\'').to_string())
                    .collect();
                if words.first().map(String::as_str) != Some("genalytics") {
                    continue;
                }
                // Placeholders stand for a value the reader supplies.
                if words.iter().any(|w| w.contains('…') || w.starts_with('<')) {
                    continue;
                }
                if let Err(err) = <genalytics::Cli as clap::Parser>::try_parse_from(&words) {
                    panic!("{page}: `{line}` does not parse: {err}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} command lines found");
}
