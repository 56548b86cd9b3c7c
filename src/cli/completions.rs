//! `genalytics completions <shell>`, and the completion scripts and man
//! pages committed in `completions/` and `man/` — all generated from the
//! clap definition, so they cannot drift from the real flags (a test fails
//! when the committed files are stale).

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;
use crate::error::Exit;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Shell to print the completion script for
    #[arg(value_enum)]
    pub shell: Shell,
}

const EXAMPLES: &str = "Examples:
  genalytics completions bash > /etc/bash_completion.d/genalytics
  genalytics completions zsh > ~/.zfunc/_genalytics
  genalytics completions fish > ~/.config/fish/completions/genalytics.fish";

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    let mut out = std::io::stdout().lock();
    out.write_all(&completion_script(args.shell))?;
    Ok(Exit::Success)
}

fn completion_script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "genalytics", &mut script);
    script
}

/// Every generated file, as (path relative to the repository, contents).
pub fn generated_files() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for shell in [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::PowerShell,
    ] {
        let name = match shell {
            Shell::Bash => "genalytics.bash".to_string(),
            Shell::Zsh => "_genalytics".to_string(),
            Shell::Fish => "genalytics.fish".to_string(),
            Shell::Elvish => "genalytics.elv".to_string(),
            _ => "_genalytics.ps1".to_string(),
        };
        files.push((format!("completions/{name}"), completion_script(shell)));
    }
    for (name, page) in super::manpages::pages()? {
        files.push((format!("man/{name}"), page));
    }
    Ok(files)
}
