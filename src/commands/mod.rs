//! One module per command: its flags (`Args`) and its `run`.

pub mod aggregate;
pub mod check;
pub mod completions;
pub mod demo;
pub mod migrate;
pub mod prune;
pub mod rejected;
pub mod report;
pub mod simulate;
pub mod status;
pub mod transfer;

use crate::cli::Command;
use crate::config::Settings;
use crate::error::Exit;
use crate::error::UsageError;

pub fn run(command: Command, settings: &Settings) -> anyhow::Result<Exit> {
    if settings.several_streams()
        && !matches!(command, Command::Transfer(_) | Command::Completions(_))
    {
        return Err(UsageError(
            "--stream more than once, or --stream-pattern, is for transfer; give this command one stream key"
                .into(),
        )
        .into());
    }
    match command {
        Command::Aggregate(args) => aggregate::run(&args, settings),
        Command::Check(args) => check::run(&args, settings),
        Command::Completions(args) => completions::run(&args),
        Command::Demo(args) => demo::run(&args, settings),
        Command::Migrate(args) => migrate::run(&args, settings),
        Command::Prune(args) => prune::run(&args, settings),
        Command::Rejected(args) => rejected::run(&args, settings),
        Command::Report(args) => report::run(&args, settings),
        Command::Simulate(args) => simulate::run(&args, settings),
        Command::Status(args) => status::run(&args, settings),
        Command::Transfer(args) => transfer::run(&args, settings),
    }
}
