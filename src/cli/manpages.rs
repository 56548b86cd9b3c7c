//! Man pages, one per command and subcommand (`genalytics-report-trends(1)`
//! and all), generated from the clap definition: `clap_mangen` writes NAME,
//! SYNOPSIS, DESCRIPTION, OPTIONS and the list of subcommands; this adds
//! GLOBAL OPTIONS (below the top page, the options every command takes), EXAMPLES (the ones `--help` shows), EXIT
//! STATUS, ENVIRONMENT and a SEE ALSO naming only pages that are generated.

use clap::{Command, CommandFactory};
use roff::{Roff, bold, roman};

use super::Cli;

/// Every page, as (file name, contents), the top-level page first.
pub fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    // The long version names the commit: a page would change with every
    // commit. Pages show the release alone.
    // `help COMMAND` is for the terminal; a page per command says the same.
    let mut root = without_help_subcommand(Cli::command().long_version(None::<&str>));
    root.build();
    let mut pages = Vec::new();
    walk(&root, &[], &[], &mut pages)?;
    Ok(pages)
}

fn without_help_subcommand(cmd: Command) -> Command {
    cmd.disable_help_subcommand(true)
        .mut_subcommands(without_help_subcommand)
}

/// The name a command's page has: `genalytics-report-trends`.
fn page_name(cmd: &Command) -> String {
    cmd.get_display_name().unwrap_or(cmd.get_name()).to_string()
}

/// Renders `cmd`'s page and its subcommands' pages. `ancestors` are the
/// page names above it; `inherited` the examples of the nearest ancestor
/// that has some.
fn walk(
    cmd: &Command,
    ancestors: &[String],
    inherited: &[String],
    pages: &mut Vec<(String, Vec<u8>)>,
) -> std::io::Result<()> {
    let name = page_name(cmd);
    let own = examples(cmd);
    // A subcommand without examples of its own shows its parent's that use it.
    let path = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
    let shown: Vec<String> = if own.is_empty() {
        inherited
            .iter()
            .filter(|line| line.starts_with(&format!("{path} ")) || **line == path)
            .cloned()
            .collect()
    } else {
        own.clone()
    };
    // Below the top page, the command's own options, then the global ones
    // in a section of their own.
    let globals: Vec<clap::Arg> = if ancestors.is_empty() {
        Vec::new()
    } else {
        cmd.get_arguments()
            .filter(|arg| arg.is_global_set() && !arg.is_hide_set())
            .cloned()
            .collect()
    };
    let own_options = globals.iter().fold(cmd.clone(), |own, global| {
        own.mut_arg(global.get_id(), |arg| arg.hide(true))
    });
    let man = clap_mangen::Man::new(own_options.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if own_options.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if !globals.is_empty() {
        let only_globals = globals
            .iter()
            .fold(Command::new(name.clone()), |only, global| {
                only.arg(global.clone().global(false))
            })
            .disable_help_flag(true)
            .disable_version_flag(true);
        let mut section = Vec::new();
        clap_mangen::Man::new(only_globals).render_options_section(&mut section)?;
        let section =
            String::from_utf8_lossy(&section).replacen(".SH OPTIONS", ".SH \"GLOBAL OPTIONS\"", 1);
        page.extend_from_slice(section.as_bytes());
    }
    let children: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !children.is_empty() {
        man.render_subcommands_section(&mut page)?;
    }
    let mut roff = Roff::default();
    if !shown.is_empty() {
        roff.control("SH", ["EXAMPLES"]);
        for line in &shown {
            roff.control("TP", []);
            roff.text([bold(line.as_str())]);
        }
    }
    exit_status(&mut roff, &name);
    environment(&mut roff, cmd, &name);
    let mut see_also: Vec<String> = ancestors.iter().rev().cloned().collect();
    see_also.extend(children.iter().map(|c| page_name(c)));
    if !see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"]);
        let refs: Vec<String> = see_also.iter().map(|page| format!("{page}(1)")).collect();
        roff.text([roman(refs.join(", "))]);
    }
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    pages.push((format!("{name}.1"), page));

    let mut above = ancestors.to_vec();
    above.push(name);
    let passed = if own.is_empty() { inherited } else { &own[..] };
    for child in children {
        walk(child, &above, passed, pages)?;
    }
    Ok(())
}

/// The example command lines of `--help` (`after_help`, after `Examples:`).
fn examples(cmd: &Command) -> Vec<String> {
    let Some(text) = cmd.get_after_help() else {
        return Vec::new();
    };
    text.to_string()
        .lines()
        .skip_while(|line| line.trim() != "Examples:")
        .skip(1)
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
        .collect()
}

fn exit_status(roff: &mut Roff, page: &str) {
    roff.control("SH", ["EXIT STATUS"]);
    let mut codes = vec![
        (
            "0",
            "Success (for completions, also when stdout was closed early).",
        ),
        (
            "1",
            "It could not be done: a server unreachable or refusing, a query failed, a stream that transfer will \
             not read alone. The message on stderr says why and what to do.",
        ),
        ("2", "The command line was wrong (a usage error)."),
    ];
    if page == "genalytics-check" {
        codes.push((
            "3",
            "A threshold was breached (one line per breach on stdout).",
        ));
    }
    for (code, meaning) in codes {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }
    if page == "genalytics-check" {
        roff.text([roman(
            "With --nagios, the Monitoring Plugins' codes instead: 0 OK, 1 WARNING, 2 CRITICAL, \
             3 UNKNOWN (whatever stopped the check, a wrong flag included).",
        )]);
    }
}

/// The variables the command line reads (from clap: name, help, default)
/// and the few read elsewhere.
fn environment(roff: &mut Roff, cmd: &Command, page: &str) {
    roff.control("SH", ["ENVIRONMENT"]);
    let mut vars: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|default| format!("; {} by default", default.to_string_lossy()))
                .unwrap_or_default();
            let meaning = format!(
                "{} (as --{}){default}.",
                arg.get_help().map(ToString::to_string).unwrap_or_default(),
                arg.get_long().unwrap_or_default()
            );
            Some((var, meaning))
        })
        .collect();
    vars.push((
        "RUST_LOG".into(),
        "Filters the log on stderr in tracing's syntax (e.g. genalytics=debug); overrides -v and -q.".into(),
    ));
    vars.push((
        "NO_COLOR".into(),
        "When set, no colours in tables or logs.".into(),
    ));
    if page.starts_with("genalytics-report") {
        vars.push((
            "GENALYTICS_USER_EXACT_MAX".into(),
            format!(
                "report user: most successful completions whose durations are read one by one for exact \
                 percentiles ({} by default); above it they come from merged histograms.",
                crate::report::user::EXACT_MAX
            ),
        ));
    }
    for (var, meaning) in vars {
        roff.control("TP", []);
        roff.text([bold(var)]);
        roff.text([roman(meaning)]);
    }
}
