//! `connections`: N authenticated idle sockets (K per user, users spread over the URLs; the
//! first socket of a user logs in with its password, the others with the resume token it got).
//! Figures: connect + login rate and latency, and the server's resident memory per connection
//! (from `/proc/<pid>/status` with `--server-pid`, else `process_resident_memory_bytes` of
//! `/metrics` when the server exports it).
//!
//! With `--unread N`, a sender user first leaves N messages of `--unread-size` bytes for every
//! new user, so that each login reply carries them (the tokens file keeps those users, and
//! their messages stay unread, for the token-only run).
//!
//! One process can hold at most ~19,900 sockets on these machines (20,000 open files), so
//! `--processes P` splits the sockets between P copies of this program: each registers and
//! connects its share, prints `READY <json>`, and holds its sockets until its stdin closes.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::cli::ConnectionsArgs;
use crate::client::{Client, now_us};
use crate::histogram::{Histogram, Latency};
use crate::net::{self, Ws};
use crate::procfs;
use crate::progress::Progress;
use crate::report::{Outcome, Report, thousands};
use crate::scenario::{Ctx, per_sec};
use crate::setup;
use tokio::io::Lines;
use tokio::process::ChildStdout;

/// Figures of a connections run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectionsResult {
    /// Sockets asked for.
    pub requested: usize,
    /// Sockets connected and logged in.
    pub connected: usize,
    /// Sockets that failed to connect or log in.
    pub failed: usize,
    /// Sockets still open at the end of the hold.
    pub open_at_end: usize,
    /// Connect + login per second while opening.
    pub connects_per_sec: f64,
    /// Connect + WebSocket handshake + login, per socket.
    pub connect_login: Latency,
    /// Server RSS before opening, in KiB (None: not measurable).
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every socket open (after the hold), in KiB.
    pub rss_after_kib: Option<u64>,
    /// Server RSS once the first socket of every user is logged in with its password, in KiB.
    pub rss_after_password_logins_kib: Option<u64>,
    /// Growth of server RSS per socket logged in by resume token (after − after password
    /// logins) / token sockets, in bytes: the memory of an idle connection, without the
    /// allocator growth that password hashing causes. Overall figure when no token was used.
    pub rss_per_connection_bytes: Option<u64>,
    /// (after − before) / connected, in bytes: includes what argon2 left behind.
    pub rss_per_connection_overall_bytes: Option<u64>,
    /// Sockets logged in by resume token.
    pub token_logins: usize,
    /// Where RSS came from: `proc` or `metrics`.
    pub rss_source: Option<String>,
    /// This generator's RSS per socket, in bytes.
    pub generator_rss_per_connection_bytes: Option<u64>,
    /// Generator processes.
    pub processes: usize,
    /// Size of the largest login reply seen on the first user's sockets, in bytes.
    pub login_reply_bytes: usize,
    /// A few errors.
    pub errors: Vec<String>,
}

/// The `connections` scenario.
pub async fn run(ctx: &Ctx, args: &ConnectionsArgs) -> anyhow::Result<Outcome> {
    let r = if args.processes > 1 && !args.child {
        run_parent(ctx, args).await?
    } else {
        run_here(ctx, args).await?
    };
    let mut rows = vec![
        (
            "sockets connected / asked".into(),
            format!(
                "{} / {} ({} failed, {} open at the end)",
                thousands(r.connected as f64),
                thousands(r.requested as f64),
                r.failed,
                r.open_at_end
            ),
        ),
        (
            "connect + login".into(),
            per_sec(r.connects_per_sec, "sockets"),
        ),
        (
            "connect + login p50/p99/p999/max".into(),
            r.connect_login.cell(),
        ),
    ];
    rows.push((
        "login reply".into(),
        format!(
            "{} bytes ({} unread per new user)",
            thousands(r.login_reply_bytes as f64),
            args.unread
        ),
    ));
    rows.push((
        "server RSS before / after".into(),
        match (r.rss_before_kib, r.rss_after_kib) {
            (Some(b), Some(a)) => format!(
                "{} MiB / {} MiB ({})",
                b / 1024,
                a / 1024,
                r.rss_source.clone().unwrap_or_default()
            ),
            _ => "n/a (pass --server-pid, or export process_resident_memory_bytes)".into(),
        },
    ));
    let kib = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
    if let Some(mid) = r.rss_after_password_logins_kib {
        rows.push((
            "server RSS after password logins".into(),
            format!(
                "{} MiB ({} users; argon2 runs once per user)",
                mid / 1024,
                r.connected - r.token_logins
            ),
        ));
    }
    rows.push((
        "server RSS per idle connection".into(),
        if r.rss_after_password_logins_kib.is_some() {
            format!(
                "{} (growth over the {} token-login sockets)",
                kib(r.rss_per_connection_bytes),
                r.token_logins
            )
        } else {
            format!(
                "{} ({} of {} sockets by token)",
                kib(r.rss_per_connection_bytes),
                r.token_logins,
                r.connected
            )
        },
    ));
    rows.push((
        "server RSS per connection, overall".into(),
        kib(r.rss_per_connection_overall_bytes),
    ));
    rows.push((
        "generator RSS per connection".into(),
        r.generator_rss_per_connection_bytes
            .map_or("n/a".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0)),
    ));
    Ok(Outcome {
        params: json!({
            "count": args.count, "per_user": args.per_user, "hold": args.hold,
            "concurrency": args.concurrency, "processes": args.processes,
            "unread": args.unread, "unread_size": args.unread_size,
        }),
        result: json!(r),
        rows,
        cpu: None,
    })
}

/// Server RSS in KiB: the `--server-pid`s summed, else `/metrics` of every URL.
async fn server_rss(ctx: &Ctx) -> Option<(u64, String)> {
    if !ctx.common.server_pids.is_empty() {
        let total = ctx
            .common
            .server_pids
            .iter()
            .map(|&p| procfs::rss_kib(p))
            .sum::<Option<u64>>()?;
        return Some((total, "proc".into()));
    }
    let mut total = 0;
    for t in &ctx.targets {
        let body = net::http_get(&t.http_base(), "/metrics").await.ok()?;
        let bytes: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())?;
        total += (bytes / 1024.0) as u64;
    }
    Some((total, "metrics".into()))
}

async fn run_here(ctx: &Ctx, args: &ConnectionsArgs) -> anyhow::Result<ConnectionsResult> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let per_user = args.per_user.max(1);
    let progress = Progress::new(&["registered", "connected", "failed"]);
    progress.spawn("connections", ctx.common.quiet);
    let saved = match &args.tokens {
        Some(path) if path.exists() => Some(load_tokens(path)?),
        _ => None,
    };
    let (ids, mut tokens) = match saved {
        Some(list) => {
            anyhow::ensure!(
                list.len() * per_user >= args.count,
                "{} users in the tokens file cannot hold {} sockets at {per_user} per user",
                list.len(),
                args.count
            );
            list.into_iter().map(|(id, t)| (id, Some(t))).unzip()
        }
        None => {
            let users = args.count.div_ceil(per_user);
            let names: Vec<String> = (0..users).map(|i| format!("{}k{i}", ctx.prefix)).collect();
            let ids = setup::register(ctx, &names, &progress, 0).await?;
            if args.unread > 0 {
                leave_unread(ctx, &ids, args, &progress).await?;
            }
            (ids, vec![None; users])
        }
    };
    let preloaded = tokens.iter().all(Option::is_some);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server_rss(ctx).await;
    let me_before = procfs::rss_kib(std::process::id());

    progress.phase("connect");
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut latency = Histogram::default();
    let mut holders = Vec::with_capacity(args.count);
    let mut errors = Vec::new();
    // The first socket of each user logs in with the password (argon2); the others with the
    // resume token of that login when the server offers one, as a reconnecting client would.
    let mut mid = None;
    let mut token_logins = 0;
    let mut login_reply_bytes = 0;
    for phase in 0..2 {
        if phase == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            mid = server_rss(ctx).await;
        }
        let sockets: Vec<usize> = (0..args.count)
            .filter(|i| (i % per_user == 0) == (phase == 0))
            .collect();
        let tokens_now = &tokens;
        let mut opened = stream::iter(sockets)
            .map(|i| {
                let u = i / per_user;
                let (id, token) = (ids[u], tokens_now[u].clone());
                async move {
                    let t = now_us();
                    let mut client = Client::open(ctx.target_of(u), &ctx.sources).await?;
                    let reply = match &token {
                        Some(tok) => client.login_token(tok).await?,
                        None => client.login(id).await?,
                    };
                    let fresh = reply["token"].as_str().map(str::to_owned);
                    let by_token = token.is_some();
                    let size = if u == 0 { reply.to_string().len() } else { 0 };
                    anyhow::Ok((u, client.into_ws(), now_us() - t, fresh, by_token, size))
                }
            })
            .buffer_unordered(args.concurrency.max(1));
        let mut learned = Vec::new();
        while let Some(next) = opened.next().await {
            match next {
                Ok((u, ws, us, fresh, by_token, size)) => {
                    latency.record(us);
                    login_reply_bytes = login_reply_bytes.max(size);
                    token_logins += usize::from(by_token);
                    holders.push(tokio::spawn(hold(ws, stop_rx.clone())));
                    progress.add(1, 1);
                    if phase == 0 && !by_token {
                        learned.push((u, fresh));
                    }
                }
                Err(e) => {
                    progress.add(2, 1);
                    if errors.len() < 5 {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
        }
        drop(opened);
        for (u, tok) in learned {
            tokens[u] = tok;
        }
        if let (0, false, Some(path)) = (phase, preloaded, &args.tokens) {
            save_tokens(path, &ids, &tokens)?;
        }
    }
    let opening = started.elapsed().as_secs_f64();
    let connected = holders.len();

    progress.phase("hold");
    if args.child {
        // The parent measures the server now; report, then wait for the parent's word.
        let partial = ConnectionsResult {
            requested: args.count,
            connected,
            failed: args.count - connected,
            connects_per_sec: connected as f64 / opening,
            connect_login: latency.summary(),
            token_logins,
            login_reply_bytes,
            errors: errors.clone(),
            ..Default::default()
        };
        println!("READY {}", serde_json::to_string(&partial)?);
        let mut line = String::new();
        let _ = BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await;
    } else {
        tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0) + 1.0)).await;
    }
    let after = server_rss(ctx).await;
    let me_after = procfs::rss_kib(std::process::id());
    let open_at_end = holders.iter().filter(|h| !h.is_finished()).count();
    progress.phase("close");
    stop_tx.send_replace(true);
    for h in holders {
        let _ = h.await;
    }
    progress.finish();

    let per_conn = |b: Option<u64>, a: Option<u64>, n: usize| match (b, a) {
        (Some(b), Some(a)) if n > 0 => Some(a.saturating_sub(b) * 1024 / n as u64),
        _ => None,
    };
    let (b, m, a) = (
        before.as_ref().map(|b| b.0),
        mid.as_ref().map(|m| m.0),
        after.as_ref().map(|a| a.0),
    );
    Ok(ConnectionsResult {
        requested: args.count,
        connected,
        failed: args.count - connected,
        open_at_end,
        connects_per_sec: connected as f64 / opening,
        connect_login: latency.summary(),
        rss_before_kib: b,
        rss_after_kib: a,
        rss_after_password_logins_kib: m.filter(|_| token_logins > 0 && !preloaded),
        rss_per_connection_bytes: if preloaded || token_logins == 0 {
            per_conn(b, a, connected)
        } else {
            per_conn(m, a, token_logins)
        },
        rss_per_connection_overall_bytes: per_conn(b, a, connected),
        token_logins,
        rss_source: after.map(|a| a.1),
        generator_rss_per_connection_bytes: per_conn(me_before, me_after, connected),
        processes: 1,
        login_reply_bytes,
        errors,
    })
}

/// Senders leaving unread messages: enough for the server to batch their writes.
const UNREAD_SENDERS: usize = 16;

/// `--unread`: a few sender users leave `args.unread` messages for each of `users`.
async fn leave_unread(
    ctx: &Ctx,
    users: &[i64],
    args: &ConnectionsArgs,
    progress: &std::sync::Arc<Progress>,
) -> anyhow::Result<()> {
    let senders = UNREAD_SENDERS.min(users.len());
    let names: Vec<String> = (0..senders)
        .map(|i| format!("{}ks{i}", ctx.prefix))
        .collect();
    let ids = setup::register(ctx, &names, progress, 0).await?;
    let mut clients = setup::login(ctx, &ids, progress, 0).await?;
    progress.phase("unread");
    let text = ".".repeat(args.unread_size.clamp(1, 4000));
    let requests = (0..senders)
        .map(|j| {
            users
                .iter()
                .skip(j)
                .step_by(senders)
                .flat_map(|&u| {
                    std::iter::repeat_n(json!({"msgid": 6, "toid": u, "msg": text}), args.unread)
                })
                .collect()
        })
        .collect();
    setup::each(ctx, &mut clients, requests, progress, 0).await?;
    Ok(())
}

/// Reads a tokens file: one `id token` per line.
fn load_tokens(path: &std::path::Path) -> anyhow::Result<Vec<(i64, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, token) = l
                .split_once(' ')
                .with_context(|| format!("{}: bad line {l:?}", path.display()))?;
            Ok((id.parse()?, token.to_owned()))
        })
        .collect()
}

/// Writes the users and tokens of this run (users without a token are left out).
fn save_tokens(
    path: &std::path::Path,
    ids: &[i64],
    tokens: &[Option<String>],
) -> anyhow::Result<()> {
    let text: String = ids
        .iter()
        .zip(tokens)
        .filter_map(|(id, t)| t.as_ref().map(|t| format!("{id} {t}\n")))
        .collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The tokens file of generator process `k` of `--processes`: `<path>.<k>`.
fn child_tokens(path: &std::path::Path, k: usize) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    name.into()
}

/// Keeps a socket open, reading (so pings are answered) until told to stop.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Splits the sockets over `--processes` children of this program.
async fn run_parent(ctx: &Ctx, args: &ConnectionsArgs) -> anyhow::Result<ConnectionsResult> {
    let exe = std::env::current_exe().context("finding this program")?;
    let share = args.count.div_ceil(args.processes);
    let before = server_rss(ctx).await;
    let started = Instant::now();
    let mut children = Vec::new();
    for k in 0..args.processes {
        let count = share.min(args.count.saturating_sub(k * share));
        if count == 0 {
            break;
        }
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("--quiet").arg("--json");
        for url in &ctx.common.urls {
            cmd.arg("--url").arg(url);
        }
        cmd.arg("--sources")
            .arg(ctx.common.sources.to_string())
            .arg("--source-offset")
            .arg((ctx.common.source_offset + k * ctx.common.sources).to_string())
            .arg("--prefix")
            .arg(format!("{}p{k}-", ctx.prefix))
            .arg("--setup-concurrency")
            .arg(ctx.common.setup_concurrency.to_string())
            .arg("connections")
            .arg("--child")
            .arg("--count")
            .arg(count.to_string())
            .arg("--per-user")
            .arg(args.per_user.to_string())
            .arg("--concurrency")
            .arg(args.concurrency.to_string())
            .arg("--unread")
            .arg(args.unread.to_string())
            .arg("--unread-size")
            .arg(args.unread_size.to_string());
        if let Some(path) = &args.tokens {
            cmd.arg("--tokens").arg(child_tokens(path, k));
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        children.push(cmd.spawn().context("starting a generator process")?);
    }
    let mut parts = Vec::new();
    let mut outputs: Vec<Lines<BufReader<ChildStdout>>> = Vec::new();
    for child in &mut children {
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let part = loop {
            match lines.next_line().await? {
                Some(l) if l.starts_with("READY ") => {
                    break serde_json::from_str::<ConnectionsResult>(&l[6..])?;
                }
                Some(_) => continue,
                None => anyhow::bail!("a generator process ended before it was ready"),
            }
        };
        parts.push(part);
        outputs.push(lines);
        if !ctx.common.quiet {
            eprintln!("[connections] process {} ready", parts.len());
        }
    }
    let opening = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0) + 1.0)).await;
    let after = server_rss(ctx).await;
    for child in &mut children {
        drop(child.stdin.take());
    }
    // Each child prints its final report (with the sockets still open at its end) and exits.
    let mut open_at_end = 0;
    for lines in &mut outputs {
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await
        {
            if let Ok(report) = serde_json::from_str::<Report>(&line) {
                open_at_end += report.result["open_at_end"].as_u64().unwrap_or(0) as usize;
            }
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    let connected: usize = parts.iter().map(|p| p.connected).sum();
    // Percentiles cannot be merged from summaries: keep the worst process's.
    let worst = parts
        .iter()
        .map(|p| p.connect_login)
        .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
        .unwrap_or_default();
    let per_conn = match (&before, &after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(a.0.saturating_sub(b.0) * 1024 / connected as u64)
        }
        _ => None,
    };
    Ok(ConnectionsResult {
        requested: args.count,
        connected,
        failed: parts.iter().map(|p| p.failed).sum(),
        open_at_end,
        connects_per_sec: connected as f64 / opening,
        connect_login: worst,
        rss_before_kib: before.as_ref().map(|b| b.0),
        rss_after_kib: after.as_ref().map(|a| a.0),
        rss_after_password_logins_kib: None,
        rss_per_connection_bytes: per_conn,
        rss_per_connection_overall_bytes: per_conn,
        token_logins: parts.iter().map(|p| p.token_logins).sum(),
        rss_source: after.map(|a| a.1),
        generator_rss_per_connection_bytes: None,
        processes: parts.len(),
        login_reply_bytes: parts.iter().map(|p| p.login_reply_bytes).max().unwrap_or(0),
        errors: parts.into_iter().flat_map(|p| p.errors).take(5).collect(),
    })
}
