//! `chat-tui`: parses the command line, sets up logging to a file, and runs either the TUI or
//! the one-shot `--send` mode.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;

use chat_tui::protocol::{LoginBy, Password};
use chat_tui::runner::{TuiOptions, run_tui};
use chat_tui::send_once::{SendSpec, send_once};

/// The clusterchat terminal client.
#[derive(Debug, Parser)]
#[command(name = "chat-tui", version, about)]
struct Cli {
    /// The server's WebSocket URL (a replica or nginx).
    #[arg(long, env = "CHAT_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,

    /// Log in as this user: a name, or a numeric id. Alone, it fills in the login form.
    #[arg(long, value_name = "NAME_OR_ID")]
    user: Option<String>,

    /// Name of the environment variable holding the password; with --user, logs in without
    /// the form and focuses the input line.
    #[arg(long, value_name = "VAR", requires = "user")]
    password_env: Option<String>,

    /// Send one 1:1 message and exit (0 when the server acked it), without a screen.
    #[arg(long, value_name = "TOID:TEXT", requires = "password_env")]
    send: Option<SendSpec>,

    /// Seconds --send waits for the server before giving up (exit code 3).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,

    /// Log file (logs never go to the screen).
    #[arg(long, default_value = "chat-tui.log")]
    log_file: PathBuf,

    /// Log filter in `tracing` EnvFilter syntax.
    #[arg(long, env = "CHAT_TUI_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!(
            "chat-tui: cannot open the log file {}: {e}",
            cli.log_file.display()
        );
        return ExitCode::from(2);
    }
    let password = match &cli.password_env {
        Some(var) => match std::env::var(var) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                eprintln!("chat-tui: the environment variable {var} (--password-env) is not set");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if let Some(spec) = cli.send.clone() {
        let (Some(user), Some(password)) = (cli.user.as_deref(), password) else {
            eprintln!("chat-tui: --send needs --user and --password-env");
            return ExitCode::from(2);
        };
        let to = spec.toid;
        return match send_once(
            &cli.url,
            LoginBy::parse(user),
            Password(password),
            spec,
            Duration::from_secs(cli.timeout),
        )
        .await
        {
            Ok(r) => {
                println!(
                    "sent to #{to}: message_id {} seq {} at {}",
                    r.message_id, r.seq, r.time
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "--send failed");
                eprintln!("chat-tui: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let options = TuiOptions {
        url: cli.url.clone(),
        user: cli.user.clone(),
        password,
    };
    match run_tui(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the TUI stopped");
            eprintln!("chat-tui: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `tracing` output to the log file (appending), never to the terminal.
fn init_logging(cli: &Cli) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cli.log_file)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .init();
    Ok(())
}
