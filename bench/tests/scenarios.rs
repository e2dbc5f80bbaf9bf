//! Every scenario of chat-bench, briefly and at small scale, against a real server started in
//! this process on a fresh SQLite database, so that the tool cannot rot. Nothing here is timed:
//! the assertions are that each report is well-formed and that nothing was lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_bench::cli::Cli;
use chat_bench::report::Report;
use chat_server::{Application, Config, ShutdownHandle};
use clap::Parser;
use serde_json::Value;
use tokio::task::JoinHandle;

/// A server on port 0 with its own database file, stopped and removed on drop.
struct TestServer {
    url: String,
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    db: PathBuf,
}

impl TestServer {
    async fn start() -> TestServer {
        static N: AtomicU64 = AtomicU64::new(0);
        let db = std::env::temp_dir().join(format!(
            "chat-bench-test-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let config = Config::for_database(format!("sqlite://{}?mode=rwc", db.display()));
        let app = Application::build(config).await.expect("server builds");
        let url = format!("ws://127.0.0.1:{}/ws", app.port());
        let shutdown = app.shutdown_handle();
        let task = Some(tokio::spawn(app.run_until_stopped()));
        TestServer {
            url,
            shutdown,
            task,
            db,
        }
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
    }
}

/// Runs `chat-bench --url URL <args>` briefly and returns its report, checked for shape.
async fn bench(url: &str, args: &[&str]) -> Report {
    let mut argv = vec![
        "chat-bench",
        "--quiet",
        "--url",
        url,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--drain",
        "20",
        "--sources",
        "16",
    ];
    argv.extend_from_slice(args);
    let cli = Cli::parse_from(argv);
    let report = chat_bench::run(&cli).await.expect("the scenario runs");
    // Well-formed: a JSON round trip keeps it, the table has every row.
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.scenario, report.scenario);
    let table = report.table();
    for (k, _) in &report.rows {
        assert!(table.contains(k.as_str()), "table misses {k}:\n{table}");
    }
    assert!(report.prefix.starts_with('b'));
    report
}

fn n(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// Chat results: something was measured, everything acked was delivered exactly once.
fn assert_chat_clean(r: &Value) {
    assert!(n(r, "sent") > 0.0, "nothing sent: {r:#}");
    assert!(n(r, "acked") > 0.0, "nothing acked: {r:#}");
    assert_eq!(n(r, "lost"), 0.0, "lost messages: {r:#}");
    assert_eq!(n(r, "duplicates"), 0.0, "{r:#}");
    assert_eq!(n(r, "unacked"), 0.0, "{r:#}");
    assert_eq!(n(r, "disconnected"), 0.0, "{r:#}");
    assert_eq!(n(r, "acked"), n(r, "delivered"), "{r:#}");
    assert!(r["drained"].as_bool().unwrap());
    assert!(n(r, "delivered_per_sec") > 0.0);
    assert!(n(r, "ack.count") > 0.0 && n(r, "ack.p99_ms") >= n(r, "ack.p50_ms"));
    assert!(n(r, "delivery.count") > 0.0);
    // The only refusal a brief burst may meet is the server's rate limit.
    for e in r["errors"].as_array().unwrap() {
        assert!(e.as_str().unwrap().contains("429"), "unexpected error {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_closed_loop_loses_nothing() {
    let server = TestServer::start().await;
    let report = bench(&server.url, &["chat", "--pairs", "4", "--window", "2"]).await;
    assert_eq!(report.scenario, "chat");
    assert_eq!(report.params["mode"], "closed-loop");
    assert_chat_clean(&report.result["server"]);
    assert!(report.result.get("ratio").is_none());
    server.stop().await;
}

/// The baseline relay in this process on a free port: its task and its URL.
async fn start_relay() -> (JoinHandle<()>, String) {
    let (listener, url) = chat_bench::relay::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (tokio::spawn(chat_bench::relay::serve(listener)), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_open_loop_reports_a_ratio_to_the_baseline_relay() {
    let server = TestServer::start().await;
    let (relay, relay_url) = start_relay().await;
    let report = bench(
        &server.url,
        &[
            "chat",
            "--pairs",
            "3",
            "--rate",
            "300",
            "--baseline-url",
            &relay_url,
        ],
    )
    .await;
    assert_eq!(report.params["mode"], "open-loop");
    assert_chat_clean(&report.result["server"]);
    assert_eq!(n(&report.result, "server.rejected"), 0.0);
    assert_chat_clean(&report.result["baseline"]);
    assert!(n(&report.result, "ratio") > 0.0);
    assert!(report.rows.iter().any(|(k, _)| k == "server / baseline"));
    relay.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_rounds_alternate_and_compare_the_medians() {
    let server = TestServer::start().await;
    let (relay, relay_url) = start_relay().await;
    let report = bench(
        &server.url,
        &[
            "chat",
            "--pairs",
            "2",
            "--rate",
            "200",
            "--baseline-url",
            &relay_url,
            "--rounds",
            "3",
        ],
    )
    .await;
    assert_eq!(report.params["rounds"], 3);
    let rounds = report.result["rounds"]
        .as_array()
        .expect("one entry per round");
    assert_eq!(rounds.len(), 3);
    for round in rounds {
        assert_chat_clean(&round["server"]);
        assert_chat_clean(&round["baseline"]);
        assert!(n(round, "ratio") > 0.0);
    }
    // The figures shown are those of the median runs, and the ratio is of the medians.
    let mut servers: Vec<f64> = rounds
        .iter()
        .map(|r| n(r, "server.delivered_per_sec"))
        .collect();
    let mut relays: Vec<f64> = rounds
        .iter()
        .map(|r| n(r, "baseline.delivered_per_sec"))
        .collect();
    servers.sort_by(f64::total_cmp);
    relays.sort_by(f64::total_cmp);
    assert_eq!(n(&report.result, "server.delivered_per_sec"), servers[1]);
    assert_eq!(n(&report.result, "baseline.delivered_per_sec"), relays[1]);
    assert!((n(&report.result, "ratio") - servers[1] / relays[1]).abs() < 1e-9);
    assert!(
        report
            .rows
            .iter()
            .any(|(k, _)| k == "server / baseline (medians)")
    );
    relay.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_need_a_baseline() {
    let server = TestServer::start().await;
    let cli = Cli::parse_from([
        "chat-bench",
        "--quiet",
        "--url",
        &server.url,
        "chat",
        "--pairs",
        "1",
        "--rounds",
        "2",
    ]);
    let err = chat_bench::run(&cli)
        .await
        .expect_err("rounds without a relay to alternate with");
    assert!(format!("{err:#}").contains("--baseline"), "{err:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fan_out_reaches_every_member() {
    let server = TestServer::start().await;
    let report = bench(
        &server.url,
        &["group", "--members", "6", "--senders", "2", "--rate", "40"],
    )
    .await;
    let r = &report.result;
    assert!(n(r, "acked") > 0.0, "{r:#}");
    assert_eq!(n(r, "lost"), 0.0, "{r:#}");
    assert_eq!(n(r, "rejected"), 0.0, "{r:#}");
    assert_eq!(n(r, "delivered"), n(r, "acked") * 5.0, "{r:#}");
    assert!(n(r, "last_member.count") > 0.0);
    assert!(n(r, "last_member.p50_ms") >= n(r, "delivery.p50_ms"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_replies_carry_friends_groups_and_unread() {
    let server = TestServer::start().await;
    let report = bench(
        &server.url,
        &[
            "login",
            "--users",
            "2",
            "--friends",
            "3",
            "--groups",
            "2",
            "--unread",
            "5",
        ],
    )
    .await;
    let r = &report.result;
    assert!(n(r, "logins") > 0.0, "{r:#}");
    assert_eq!(n(r, "incomplete"), 0.0, "{r:#}");
    assert_eq!(n(r, "rejected"), 0.0, "{r:#}");
    assert_eq!(n(r, "disconnected"), 0.0, "{r:#}");
    assert!(n(r, "reply_bytes") > 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_logins_reconnect_and_get_the_same_backlog() {
    let server = TestServer::start().await;
    let report = bench(
        &server.url,
        &[
            "login",
            "--token",
            "--users",
            "2",
            "--friends",
            "2",
            "--groups",
            "1",
            "--unread",
            "3",
        ],
    )
    .await;
    let r = &report.result;
    assert_eq!(report.params["token"], true);
    assert!(n(r, "logins") > 0.0, "{r:#}");
    assert_eq!(n(r, "incomplete"), 0.0, "{r:#}");
    assert_eq!(n(r, "rejected"), 0.0, "{r:#}");
    assert_eq!(n(r, "disconnected"), 0.0, "{r:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_loses_nothing() {
    let server = TestServer::start().await;
    let report = bench(
        &server.url,
        &[
            "mixed",
            "--users",
            "8",
            "--friends",
            "2",
            "--group-size",
            "4",
            "--rate",
            "200",
        ],
    )
    .await;
    let r = &report.result;
    assert!(n(r, "acked_messages") > 0.0, "{r:#}");
    assert_eq!(n(r, "lost"), 0.0, "{r:#}");
    assert_eq!(n(r, "duplicates"), 0.0, "{r:#}");
    assert_eq!(n(r, "unanswered"), 0.0, "{r:#}");
    let kinds = r["kinds"].as_array().unwrap();
    assert_eq!(kinds.len(), 4);
    for k in kinds {
        assert_eq!(n(k, "errors"), 0.0, "{r:#}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_held_and_memory_is_reported() {
    let server = TestServer::start().await;
    let pid = std::process::id().to_string();
    let report = bench(
        &server.url,
        &[
            "--server-pid",
            &pid,
            "connections",
            "--count",
            "20",
            "--per-user",
            "4",
            "--hold",
            "0",
            "--unread",
            "3",
            "--unread-size",
            "500",
        ],
    )
    .await;
    let r = &report.result;
    assert_eq!(n(r, "connected"), 20.0, "{r:#}");
    // Every login reply carried the user's three unread 500-byte messages.
    assert!(n(r, "login_reply_bytes") > 1500.0, "{r:#}");
    assert_eq!(n(r, "failed"), 0.0, "{r:#}");
    assert_eq!(n(r, "open_at_end"), 20.0, "{r:#}");
    assert_eq!(r["rss_source"], "proc");
    assert!(n(r, "rss_after_kib") > 0.0);
    assert!(n(r, "connect_login.count") == 20.0);
    // The first socket of each of the 5 users used its password, the others its token.
    assert_eq!(n(r, "token_logins"), 15.0, "{r:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_file_lets_a_second_run_log_in_without_passwords() {
    let server = TestServer::start().await;
    let file = std::env::temp_dir().join(format!("chat-bench-tokens-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().unwrap();
    let args = [
        "connections",
        "--count",
        "6",
        "--per-user",
        "3",
        "--hold",
        "0",
        "--tokens",
        path,
    ];
    let first = bench(&server.url, &args).await;
    assert_eq!(n(&first.result, "connected"), 6.0);
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    let second = bench(&server.url, &args).await;
    let r = &second.result;
    assert_eq!(n(r, "connected"), 6.0, "{r:#}");
    assert_eq!(n(r, "token_logins"), 6.0, "{r:#}");
    let _ = std::fs::remove_file(&file);
    server.stop().await;
}

/// A second chat run given the first one's `--prefix` finds its names taken and logs those
/// users in by name instead of failing at registration: the same users and conversations,
/// e.g. to measure a restarted server's first batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_chat_run_with_the_same_prefix_reuses_its_users() {
    let server = TestServer::start().await;
    let prefix = chat_bench::setup::unique_prefix();
    let args = ["--prefix", &prefix, "chat", "--pairs", "2", "--window", "2"];
    let first = bench(&server.url, &args).await;
    assert_chat_clean(&first.result["server"]);
    let second = bench(&server.url, &args).await;
    assert_eq!(second.prefix, prefix);
    assert_chat_clean(&second.result["server"]);
    server.stop().await;
}

/// `connections --processes` runs copies of the real binary: each gets its share of the
/// sockets and its own tokens file, so that a second run logs in by token only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_processes_split_sockets_and_keep_their_own_tokens() {
    let server = TestServer::start().await;
    let file = std::env::temp_dir().join(format!("chat-bench-ptokens-{}", std::process::id()));
    let path = file.to_str().unwrap().to_owned();
    let pid = std::process::id().to_string();
    let run = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args(["--quiet", "--json", "--url", &server.url, "--sources", "4"])
            .args(["--server-pid", &pid, "connections", "--count", "8"])
            .args(["--per-user", "2", "--hold", "0", "--processes", "2"])
            .args(["--tokens", &path])
            .output()
            .await
            .expect("chat-bench runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Report = serde_json::from_slice(&out.stdout).expect("one JSON report");
        report.result
    };
    let first = run().await;
    assert_eq!(n(&first, "connected"), 8.0, "{first:#}");
    assert_eq!(n(&first, "processes"), 2.0, "{first:#}");
    for k in 0..2 {
        let text = std::fs::read_to_string(format!("{path}.{k}")).unwrap();
        assert_eq!(text.lines().count(), 2, "process {k}: {text}");
    }
    let second = run().await;
    assert_eq!(n(&second, "connected"), 8.0, "{second:#}");
    assert_eq!(n(&second, "token_logins"), 8.0, "{second:#}");
    assert_eq!(n(&second, "open_at_end"), 8.0, "{second:#}");
    assert!(n(&second, "rss_after_kib") > 0.0, "{second:#}");
    for k in 0..2 {
        let _ = std::fs::remove_file(format!("{path}.{k}"));
    }
    server.stop().await;
}
