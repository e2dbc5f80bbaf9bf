//! `login`: users with F friends, G groups and O unread 1:1 messages log in and out in a loop,
//! one connection each (LOGIN_MSG by id and password, then LOGINOUT_MSG on the same socket), or
//! with `--token` by resume token on a fresh connection each time (then closed).
//! Figures: logins/s and login latency (request → LOGIN_MSG_ACK with its friends, groups and
//! unread backlog), and whether every reply carried the O unread messages.

use std::sync::Arc;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::LoginArgs;
use crate::client::{Client, PASSWORD, instant_at, now_us};
use crate::histogram::{Histogram, Latency};
use crate::net::{self, Ws};
use crate::procfs::CpuSplit;
use crate::progress::Progress;
use crate::report::Outcome;
use crate::scenario::{Ctx, Timeline, coordinate, per_sec};
use crate::setup::{self, LoggedIn};

/// Figures of a login run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LoginResult {
    /// Successful logins per second (window).
    pub logins_per_sec: f64,
    /// Successful logins in the whole run.
    pub logins: u64,
    /// Logins refused (errno ≠ 0: 429 rate limit, …).
    pub rejected: u64,
    /// Login replies whose `offlinemsg`, `friends` or `groups` had not the expected size.
    pub incomplete: u64,
    /// Request → LOGIN_MSG_ACK.
    pub latency: Latency,
    /// Average size of a login reply in bytes.
    pub reply_bytes: u64,
    /// Failed connections.
    pub disconnected: u64,
    /// A few errors.
    pub errors: Vec<String>,
    /// CPU split during the window.
    pub cpu: CpuSplit,
}

/// Progress counters.
const LOGINS: usize = 0;
const REJECTED: usize = 1;

/// The `login` scenario.
pub async fn run(ctx: &Ctx, args: &LoginArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        args.unread == 0 || args.friends > 0,
        "unread messages come from friends: --friends must be at least 1"
    );
    let progress = Progress::new(&["registered", "logged in", "set up"]);
    progress.spawn("login setup", ctx.common.quiet);
    let names: Vec<String> = (0..args.users)
        .map(|i| format!("{}l{i}", ctx.prefix))
        .chain((0..args.friends).map(|j| format!("{}f{j}", ctx.prefix)))
        .collect();
    let ids = setup::register(ctx, &names, &progress, 0).await?;
    let (user_ids, friend_ids) = ids.split_at(args.users);
    let mut logged = setup::login(ctx, &ids, &progress, 1).await?;
    let (users, friends) = logged.split_at_mut(args.users);

    progress.phase("groups");
    let mut gids = Vec::with_capacity(args.groups);
    for g in 0..args.groups {
        let creator = &mut friends[g % friends.len().max(1)].client;
        gids.push(setup::create_group(creator, &format!("{}gr{g}", ctx.prefix)).await?);
    }
    progress.phase("friends + groups");
    let requests = (0..args.users)
        .map(|_| {
            friend_ids
                .iter()
                .map(|&f| setup::add_friend(f))
                .chain(gids.iter().map(|&g| setup::join_group(g)))
                .collect()
        })
        .collect();
    setup::each(ctx, users, requests, &progress, 2).await?;
    progress.phase("unread");
    send_unread(ctx, friends, user_ids, args.unread, &progress).await?;
    let tokens: Vec<Option<String>> = logged[..args.users]
        .iter()
        .map(|l| l.reply["token"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(
        !args.token || tokens.iter().all(Option::is_some),
        "--token: the server gives no resume token in its login reply"
    );
    drop(logged);
    progress.finish();

    let progress = Progress::new(&["logins", "rejected"]);
    progress.spawn("login", ctx.common.quiet);
    let timeline = Timeline::new(&ctx.common);
    let expect = Expect {
        friends: args.friends,
        groups: args.groups,
        unread: args.unread,
    };
    let mut tasks = Vec::new();
    for (i, &id) in user_ids.iter().enumerate() {
        let how = match (&tokens[i], args.token) {
            (Some(token), true) => How::Token(token.clone(), ctx.clone(), i),
            _ => How::Password(Client::open(ctx.target_of(i), &ctx.sources).await?),
        };
        tasks.push(tokio::spawn(worker(
            how,
            id,
            expect,
            timeline,
            progress.clone(),
        )));
    }
    let (stop_tx, _stop_rx) = tokio::sync::watch::channel(false);
    let (cpu, _) = coordinate(timeline, &ctx.common, &[], &progress, stop_tx, || true).await;
    let mut latency = Histogram::default();
    let mut r = LoginResult {
        cpu: cpu.clone(),
        ..LoginResult::default()
    };
    let (mut in_window, mut bytes) = (0u64, 0u64);
    for t in tasks {
        let w = t.await.context("a login worker panicked")?;
        latency.merge(&w.latency);
        r.logins += w.logins;
        r.rejected += w.rejected;
        r.incomplete += w.incomplete;
        in_window += w.in_window;
        bytes += w.bytes;
        if let Some(e) = w.failed {
            r.disconnected += 1;
            if r.errors.len() < 5 {
                r.errors.push(e);
            }
        }
        if r.errors.len() < 5 {
            r.errors.extend(w.errors);
        }
    }
    progress.finish();
    r.latency = latency.summary();
    r.logins_per_sec = in_window as f64 / timeline.seconds();
    r.reply_bytes = bytes.checked_div(r.logins).unwrap_or(0);
    let rows = vec![
        (
            "users × (friends, groups, unread)".into(),
            format!(
                "{} × ({}, {}, {})",
                args.users, args.friends, args.groups, args.unread
            ),
        ),
        (
            "login by".into(),
            if args.token {
                "resume token, fresh connection each time (connect + login)".into()
            } else {
                "password (argon2), then LOGINOUT on the same connection".into()
            },
        ),
        ("logins".into(), per_sec(r.logins_per_sec, "logins")),
        ("login p50/p99/p999/max".into(), r.latency.cell()),
        (
            "login reply size".into(),
            format!("{} bytes", r.reply_bytes),
        ),
        (
            "logins / rejected / incomplete / failed".into(),
            format!(
                "{} / {} / {} / {}",
                r.logins, r.rejected, r.incomplete, r.disconnected
            ),
        ),
    ];
    Ok(Outcome {
        params: json!({
            "users": args.users, "friends": args.friends, "groups": args.groups,
            "unread": args.unread, "token": args.token, "duration": ctx.common.duration, "warmup": ctx.common.warmup,
        }),
        result: json!(r),
        rows,
        cpu: Some(cpu),
    })
}

/// Friend `j` sends user `u` the unread messages `k` with `k mod friends = j`.
async fn send_unread(
    ctx: &Ctx,
    friends: &mut [LoggedIn],
    users: &[i64],
    unread: usize,
    progress: &Arc<Progress>,
) -> anyhow::Result<()> {
    let n = friends.len();
    let requests = (0..n)
        .map(|j| {
            users
                .iter()
                .flat_map(|&u| {
                    (j..unread)
                        .step_by(n)
                        .map(move |k| json!({"msgid": 6, "toid": u, "msg": format!("unread {k}")}))
                })
                .collect()
        })
        .collect();
    setup::each(ctx, friends, requests, progress, 2).await?;
    Ok(())
}

#[derive(Clone, Copy)]
struct Expect {
    friends: usize,
    groups: usize,
    unread: usize,
}

#[derive(Default)]
struct Worker {
    latency: Histogram,
    logins: u64,
    in_window: u64,
    rejected: u64,
    incomplete: u64,
    bytes: u64,
    errors: Vec<String>,
    failed: Option<String>,
}

/// How a worker logs in.
enum How {
    /// Password on this connection, LOGINOUT after each login.
    Password(Client),
    /// This resume token, on a fresh connection to target `i` of the context each time.
    Token(String, Ctx, usize),
}

/// What the generator checks in a login reply: the errno and how many entries each list has
/// (counted without building them: the reply is tens of kilobytes).
#[derive(Debug, Default, serde::Deserialize)]
struct LoginReply {
    #[serde(default)]
    errno: Option<i64>,
    #[serde(default)]
    offlinemsg: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    friends: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    groups: Vec<serde::de::IgnoredAny>,
}

/// Logs user `id` in and out until the window ends.
async fn worker(
    how: How,
    id: i64,
    expect: Expect,
    timeline: Timeline,
    progress: Arc<Progress>,
) -> Worker {
    let mut w = Worker::default();
    let (mut reqid, mut shared, token) = match how {
        How::Password(client) => (client.next_reqid(), Some(client.into_ws()), None),
        How::Token(token, ctx, i) => (1, None, Some((token, ctx, i))),
    };
    tokio::time::sleep_until(instant_at(timeline.start)).await;
    while now_us() < timeline.send_end {
        let started = now_us();
        let (socket, login) = match (&token, shared.as_mut()) {
            (Some((token, ctx, i)), _) => {
                let socket = match net::connect(ctx.target_of(*i), &ctx.sources).await {
                    Ok(s) => s,
                    Err(e) => {
                        w.failed = Some(format!("{e:#}"));
                        break;
                    }
                };
                (
                    Fresh::Own(Box::new(socket)),
                    json!({"msgid": 1, "reqid": reqid, "token": token}),
                )
            }
            (None, Some(socket)) => (
                Fresh::Shared(socket),
                json!({"msgid": 1, "reqid": reqid, "id": id, "password": PASSWORD}),
            ),
            (None, None) => break,
        };
        let mut socket = socket;
        let reply = match roundtrip(socket.ws(), login.to_string(), reqid).await {
            Ok(r) => r,
            Err(e) => {
                w.failed = Some(format!("{e:#}"));
                break;
            }
        };
        reqid += 1;
        let done = now_us();
        let parsed: LoginReply = serde_json::from_str(&reply).unwrap_or_default();
        if parsed.errno != Some(0) {
            w.rejected += 1;
            progress.add(REJECTED, 1);
            if w.errors.len() < 3 {
                w.errors.push(reply);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        let (unread, friends, groups) = (
            parsed.offlinemsg.len(),
            parsed.friends.len(),
            parsed.groups.len(),
        );
        if unread != expect.unread || friends != expect.friends || groups != expect.groups {
            w.incomplete += 1;
            if w.errors.len() < 3 {
                w.errors.push(format!(
                    "login reply with {unread} unread, {friends} friends, {groups} groups"
                ));
            }
        }
        w.logins += 1;
        w.bytes += reply.len() as u64;
        progress.add(LOGINS, 1);
        if timeline.measured(started) {
            w.latency.record(done - started);
        }
        if timeline.measured(done) {
            w.in_window += 1;
        }
        match socket {
            Fresh::Own(mut s) => {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), (*s).close(None)).await;
            }
            Fresh::Shared(s) => {
                let logout = format!(r#"{{"msgid":3,"reqid":{reqid}}}"#);
                if let Err(e) = roundtrip(s, logout, reqid).await {
                    w.failed = Some(format!("{e:#}"));
                    break;
                }
                reqid += 1;
            }
        }
    }
    if let Some(mut s) = shared {
        let _ = s.close(None).await;
    }
    w
}

/// The socket of one login: a fresh one (token mode) or the worker's own.
enum Fresh<'a> {
    Own(Box<Ws>),
    Shared(&'a mut Ws),
}

impl Fresh<'_> {
    fn ws(&mut self) -> &mut Ws {
        match self {
            Fresh::Own(ws) => ws,
            Fresh::Shared(ws) => ws,
        }
    }
}

/// Sends `frame` and returns the text of the reply carrying `reqid` (pushes skipped).
async fn roundtrip(ws: &mut Ws, frame: String, reqid: i64) -> anyhow::Result<String> {
    ws.send(Message::Text(frame.into())).await?;
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
            .await
            .context("no reply within 60 s")?;
        match next {
            Some(Ok(Message::Text(t))) => {
                let is_reply = crate::client::Frame::parse(&t)
                    .is_some_and(|f| f.reqid == Some(reqid) && matches!(f.msgid, 2 | 11 | 20));
                if is_reply {
                    return Ok(t.as_str().to_owned());
                }
            }
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed by the server: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed"),
        }
    }
}
