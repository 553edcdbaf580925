//! ringbench: etcd's benchmark tool (tools/benchmark) rebuilt on ringd's glommio client,
//! with the same subcommands, flags and report, plus CPU accounting, JSON/CSV output,
//! .hgrm and SVG exports, side-by-side runs against a real etcd (`compare`) and a
//! storage-only benchmark (`mvcc put`). See cli.rs for the flags.

mod bench;
mod cli;
mod compare;
mod idle_watchers;
mod lease_keepalive;
mod load;
mod mvcc_put;
mod plot;
mod report;
mod server_stages;
mod watch;
mod watch_get;
mod watch_latency;
mod workload;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(message) = cli.validate() {
        eprintln!("{message}");
        std::process::exit(1);
    }
    let result = match &cli.command {
        cli::Command::Compare(args) => compare::main(&cli, args),
        cli::Command::Mvcc { command: cli::MvccCommand::Put(args) } => mvcc_put::main(&cli, args),
        _ => bench::main(&cli),
    };
    if let Err(message) = result {
        eprintln!("ringbench: {message}");
        std::process::exit(1);
    }
}
