//! `chat-server`: parse the configuration, set up logging, run the application.

use chat_server::{Application, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    chat_server::telemetry::init(&config.log);
    let app = Application::build(config).await?;
    let shutdown = app.shutdown_handle();
    tokio::spawn(async move {
        chat_server::app::wait_for_signal().await;
        shutdown.trigger();
    });
    app.run_until_stopped().await
}
