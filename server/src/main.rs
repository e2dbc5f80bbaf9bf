//! `chat-server`: parse the configuration, set up logging, run the application.

use chat_server::{Application, Config};
use clap::Parser;

/// mimalloc instead of glibc's malloc: per-thread heaps without arena locks (the login path
/// alone spent a quarter of its CPU in glibc's malloc and free).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
