//! The message writer's store path alone, without sockets: batches of 1:1 messages spread over
//! the conversations of 100 pairs (or `PAIRS`) written with `Store::write_batch` into a fresh SQLite file (WAL,
//! `synchronous=FULL`, as the server runs it), one after the other. Prints the wall time per
//! row, the first 20 batches (warm-up) not counted. A tool for comparing changes of the store
//! path in isolation; the project's figures come from `chat-bench`.
//!
//! `cargo run --release -p chat-server --example write_batch -- [FILE] [BATCHES] [ROWS] [PAIRS]`
//! (defaults: a file in the temporary directory, 300 batches of 1,800 rows, 100 pairs).
//! `ROWS` may be a range, `LOW-HIGH`: batch sizes then vary within it from one batch to the
//! next, as the server's do under an open-loop load.

use std::time::{Duration, Instant};

use chat_server::store::messages::NewMessage;
use chat_server::store::{SqliteTuning, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map_or_else(
        || std::env::temp_dir().join(format!("write-batch-{}.db", std::process::id())),
        Into::into,
    );
    let batches: usize = args.next().map_or(Ok(300), |s| s.parse())?;
    let rows = args.next().unwrap_or_else(|| "1800".into());
    let (low, high): (usize, usize) = match rows.split_once('-') {
        Some((low, high)) => (low.parse()?, high.parse()?),
        None => (rows.parse()?, rows.parse()?),
    };
    anyhow::ensure!(
        0 < low && low <= high,
        "ROWS must be N or LOW-HIGH with 0 < LOW <= HIGH"
    );
    let pair_count: i64 = args.next().map_or(Ok(100), |s| s.parse())?;
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    };
    remove();
    let tuning = SqliteTuning {
        fsync_every_commit: true,
        thread_nice: -10,
    };
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Store::connect(&url, 16, tuning).await?;
    let mut pairs = Vec::new();
    for p in 0..pair_count {
        let (a, b) = (2 * p + 1, 2 * p + 2);
        let conv = store.pair_conversation(a, b, true).await?;
        pairs.push((a, b, conv.expect("a conversation is created")));
    }
    let text = "x".repeat(64);
    let (mut measured, mut written) = (Duration::ZERO, 0usize);
    for batch in 0..batches {
        // Sizes spread over the range in a fixed order (a multiplicative step), alike each run.
        let size = low + (batch * 7919) % (high - low + 1);
        let items: Vec<NewMessage> = (0..size)
            .map(|k| {
                let (a, b, conv) = pairs[(k + batch) % pairs.len()];
                let (sender, to) = if k % 2 == 0 { (a, b) } else { (b, a) };
                NewMessage {
                    sender,
                    conv,
                    toid: Some(to),
                    groupid: None,
                    msg: &text,
                    txnid: None,
                }
            })
            .collect();
        let started = Instant::now();
        let stored = store
            .write_batch(&items, 1_795_000_000_000 + batch as i64)
            .await?;
        if batch >= 20 {
            measured += started.elapsed();
            written += stored.len();
        }
    }
    store.close().await;
    remove();
    println!(
        "{:.3} µs a row over {written} rows ({} batches of {rows} rows)",
        measured.as_secs_f64() * 1e6 / written.max(1) as f64,
        batches.saturating_sub(20)
    );
    Ok(())
}
