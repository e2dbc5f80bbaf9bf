//! `chat-bench`: parses the command line, runs one scenario, prints its report.

use std::process::ExitCode;

use chat_bench::cli::{Cli, Scenario};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Relay(args) = &cli.scenario {
        return match chat_bench::relay::run_standalone(args.listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chat-bench relay: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match chat_bench::run(&cli).await {
        Ok(report) => {
            if cli.common.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("chat-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
