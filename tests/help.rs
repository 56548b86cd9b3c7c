//! Help for people: `genalytics help COMMAND`, a paragraph on what each
//! command does, when to run it and what it changes, and the global
//! options listed once — in `genalytics --help` and each man page's GLOBAL
//! OPTIONS — not again on every command's page.

use crate::harness::Cmd;

const COMMANDS: &[&str] = &[
    "demo",
    "migrate",
    "simulate",
    "transfer",
    "aggregate",
    "report",
    "status",
    "check",
    "prune",
    "rejected",
    "config",
    "completions",
];

#[test]
fn every_command_says_what_it_does_in_a_paragraph_and_lists_globals_once() {
    let top = Cmd::new().arg("--help").ok().stdout;
    assert!(
        top.contains("--database-url") && top.contains("--config"),
        "{top}"
    );
    for command in COMMANDS {
        let page = Cmd::new().args([command, "--help"]).ok().stdout;
        let description = page.split("Usage:").next().unwrap();
        assert!(
            description.split_whitespace().count() >= 30,
            "{command}: a line, not a paragraph:\n{description}"
        );
        assert!(
            !page.contains("--database-url <URL>") && !page.contains("--log-format <FORMAT>"),
            "{command}: global options again:\n{page}"
        );
        assert!(page.contains("genalytics --help"), "{command}:\n{page}");
        // `help COMMAND` is the same page.
        let help = Cmd::new().args(["help", command]).ok().stdout;
        assert_eq!(help, page, "{command}");
        // The man page: the paragraph, and the global options.
        let man = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("man")
                .join(format!("genalytics-{command}.1")),
        )
        .unwrap()
        .replace("\\*(Aq", "'")
        .replace("\\-", "-");
        let first_words: Vec<&str> = description
            .lines()
            .nth(2)
            .unwrap_or("")
            .split_whitespace()
            .take(3)
            .collect();
        assert!(
            man.contains(&first_words.join(" ")),
            "{command}: the man page lacks the paragraph ({first_words:?})"
        );
        assert!(man.contains("GLOBAL OPTIONS"), "{command}");
    }
    // Still accepted before or after a command's name.
    Cmd::new()
        .args(["config", "--redis-ns", "x", "--log-format", "json"])
        .ok();
    Cmd::new().args(["--redis-ns", "x", "config"]).ok();
    // A subcommand's page too.
    let page = Cmd::new().args(["help", "report", "overview"]).ok().stdout;
    assert!(
        page.contains("--compare") && !page.contains("--redis-url <URL>"),
        "{page}"
    );
}
