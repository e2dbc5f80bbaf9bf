//! Command line: the options every scenario shares, and one subcommand per scenario.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// chat-bench: a load generator for clusterchat speaking the msgid JSON protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-bench", version, about, long_about = None)]
pub struct Cli {
    /// Options of every scenario.
    #[command(flatten)]
    pub common: Common,
    /// What to measure.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket URL of a server; repeat it to spread users over replicas (round-robin).
    /// Only loopback addresses are accepted.
    #[arg(
        long = "url",
        global = true,
        env = "CHAT_BENCH_URL",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub urls: Vec<String>,

    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds of measurement (after the warm-up).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of load before measuring starts (not counted in the figures).
    #[arg(long, global = true, default_value_t = 1.0)]
    pub warmup: f64,

    /// Longest wait, in seconds, for outstanding acks and deliveries after sending stops.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub drain: f64,

    /// Loopback source addresses to spread sockets over (127.0.0.2, .3, …): each has its own
    /// ~28k ephemeral ports. 0 lets the kernel pick (127.0.0.1).
    #[arg(long, global = true, default_value_t = 8)]
    pub sources: usize,

    /// Internal: skip this many source addresses (each generator process of `connections
    /// --processes` gets its own).
    #[arg(long, global = true, default_value_t = 0, hide = true)]
    pub source_offset: usize,

    /// PID of a server process (repeatable): its RSS and CPU time are reported.
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,

    /// Prefix of every user and group name this run creates (default: unique per run).
    #[arg(long, global = true)]
    pub prefix: Option<String>,

    /// Setup connections working in parallel (register, log in, befriend, join).
    #[arg(long, global = true, default_value_t = 16)]
    pub setup_concurrency: usize,

    /// No progress line on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N authenticated idle sockets: connect rate, login latency, server RSS per connection.
    Connections(ConnectionsArgs),
    /// P pairs sending 1:1 messages: delivered msgs/s, ack and delivery latency, lost count.
    Chat(ChatArgs),
    /// One group of M members: fan-out delivery latency to every member.
    Group(GroupArgs),
    /// Users with F friends, G groups and O unread messages logging in: logins/s and latency.
    Login(LoginArgs),
    /// A realistic mix of 1:1 chat, group chat, history and read cursors across replicas.
    Mixed(MixedArgs),
    /// The baseline relay alone: a minimal WebSocket router (no storage) for `chat --baseline`.
    Relay(RelayArgs),
}

/// `connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Sockets to open and log in.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Sockets per user (the server allows 16 logged-in connections per user by default).
    #[arg(long, default_value_t = 8)]
    pub per_user: usize,
    /// Seconds to hold the sockets open, idle, once all are logged in.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Unread 1:1 messages waiting for each new user before its sockets log in, so that every
    /// login reply carries them: what a connection keeps after one large reply.
    #[arg(long, default_value_t = 0)]
    pub unread: usize,
    /// Bytes of each unread message text (at most 4,000).
    #[arg(long, default_value_t = 1000)]
    pub unread_size: usize,
    /// Generator processes (one process holds at most ~19,900 sockets on these machines):
    /// the sockets are split between copies of this program.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// File of resume tokens: when it exists, its users log in by token only (no registration,
    /// no argon2 in the server: restart the server between the two runs to measure idle
    /// connections alone); when it does not, this run's users and tokens are written to it.
    /// With `--processes`, process `k` uses `<FILE>.<k>`.
    #[arg(long)]
    pub tokens: Option<std::path::PathBuf>,
    /// Internal: run as one of `--processes` (reports READY, waits for a line on stdin).
    #[arg(long, hide = true)]
    pub child: bool,
}

/// `chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Pairs of users; each user sends to its partner.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Bytes of each message text.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Total messages per second to send (open loop); 0 = closed loop, as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unacked messages one user may have in flight.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Also run the same scenario against the built-in relay (no storage): the ceiling of this
    /// machine; the report gives the server's throughput as a ratio of it.
    #[arg(long)]
    pub baseline: bool,
    /// A relay already running (`chat-bench relay`) to use for `--baseline`, instead of
    /// starting one.
    #[arg(long)]
    pub baseline_url: Option<String>,
    /// With a baseline: runs the server and the relay alternately this many times each and
    /// gives the ratio of their medians (one pair of runs follows the machine's swings).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// `group`.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Members of the group (all logged in).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Members that send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Group messages per second, all senders together (each reaches every other member).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Bytes of each message text.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

/// `login`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Users that log in and out in a loop (one connection each).
    #[arg(long, default_value_t = 32)]
    pub users: usize,
    /// Friends of each user.
    #[arg(long, default_value_t = 100)]
    pub friends: usize,
    /// Groups of each user.
    #[arg(long, default_value_t = 20)]
    pub groups: usize,
    /// Unread 1:1 messages of each user (from its friends), returned in every login reply.
    #[arg(long, default_value_t = 200)]
    pub unread: usize,
    /// Log in with the resume token of an earlier login (no argon2), each time on a fresh
    /// connection that is then closed, as a reconnecting client does; default: password login
    /// then LOGINOUT_MSG on one connection.
    #[arg(long)]
    pub token: bool,
}

/// `mixed`.
#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    /// Users, all logged in, spread over the URLs.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Friends of each user (1:1 chat goes to a random friend).
    #[arg(long, default_value_t = 6)]
    pub friends: usize,
    /// Members per group (each user is in one group).
    #[arg(long, default_value_t = 20)]
    pub group_size: usize,
    /// Requests per second, all users together.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Bytes of each message text.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

/// `relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}
