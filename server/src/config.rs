//! Runtime configuration: one clap struct, every field also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Everything `chat-server` can be told at start-up (flags or `CHAT_*` environment variables).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "clusterchat: the msgid JSON chat protocol over WebSocket"
)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket (`/ws`); port 0 picks a free port.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://FILE?mode=rwc`, `mysql://user:pass@host/db` or
    /// `postgres://user@host/db`. The schema is created or migrated on start.
    #[arg(
        long,
        env = "CHAT_DATABASE_URL",
        default_value = "sqlite://chat.db?mode=rwc"
    )]
    pub database_url: String,

    /// Redis URL (`redis://host:port`) for cross-replica delivery and presence. Absent: single
    /// node with the in-process bus.
    #[arg(long, env = "CHAT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Name of this replica, reported to clients in the login reply (`node`). Default:
    /// `<hostname>:<port>`.
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,

    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `chat_server=debug`.
    #[arg(long, env = "CHAT_LOG", default_value = "info")]
    pub log: String,

    /// Folder served at `/` (the web page). Default: `web/` of the working directory, else the
    /// `web/` folder of the source tree the binary was built from.
    #[arg(long, env = "CHAT_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Largest client message accepted, in bytes; larger ones get ERROR_MSG 413.
    #[arg(long, env = "CHAT_MAX_FRAME", default_value_t = 65_536)]
    pub max_frame: usize,

    /// Pushes that may wait for one connection before it is closed as too slow (code 1008).
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE", default_value_t = 4096)]
    pub outbound_queue: usize,

    /// Most chat messages written to the database in one transaction (group commit).
    #[arg(long, env = "CHAT_WRITE_BATCH", default_value_t = 2048)]
    pub write_batch: usize,

    /// Milliseconds the message writer may wait for a batch to fill while sends keep coming
    /// (group commit's delay; never for a lone message); 0 never waits.
    #[arg(long, env = "CHAT_WRITE_LINGER_MS", default_value_t = 2)]
    pub write_linger_ms: u64,

    /// Maximum database connections in the pool.
    #[arg(long, env = "CHAT_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    /// Requests per second one connection may make (token bucket holding ten seconds' worth).
    /// Over it: errno 429. 0 disables the limit.
    #[arg(long, env = "CHAT_RATE_PER_CONNECTION", default_value_t = 1000)]
    pub rate_per_connection: u32,

    /// Requests per second one user may make over all their connections on this replica
    /// (token bucket holding ten seconds' worth). Over it: errno 429. 0 disables the limit.
    #[arg(long, env = "CHAT_RATE_PER_USER", default_value_t = 2000)]
    pub rate_per_user: u32,

    /// Consecutive rate-limited requests after which the connection is closed (1008).
    #[arg(long, env = "CHAT_ABUSE_CLOSE_AFTER", default_value_t = 200)]
    pub abuse_close_after: u32,

    /// Failed logins per account name or id per minute before further attempts get 429.
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 10)]
    pub login_failures_per_account: u32,

    /// Login attempts per client address per minute before further attempts get 429.
    #[arg(long, env = "CHAT_LOGIN_ATTEMPTS_PER_ADDRESS", default_value_t = 300)]
    pub login_attempts_per_address: u32,

    /// Open WebSocket connections this replica accepts; more are refused with HTTP 503.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,

    /// Logged-in connections one user may have on this replica; one more login gets 429.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,

    /// Seconds without any frame from a client (pongs count) before it is disconnected; the
    /// server pings at a third of it. 0 disables.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// SQLite only: `full` fsyncs every commit (a batch survives a power loss); `normal` leaves
    /// the fsync to WAL checkpoints (a batch survives a crash or SIGKILL of the server, not a
    /// power loss or OS crash) for lower latency under load.
    #[arg(long, env = "CHAT_SQLITE_SYNC", default_value = "full", value_parser = ["full", "normal"])]
    pub sqlite_sync: String,

    /// SQLite only: nice value of the database's connection threads, which run the chat
    /// pipeline's batches (the path every send waits on). Negative values need CAP_SYS_NICE
    /// or root; without it they keep the default priority. 0 leaves them as they are.
    #[arg(long, env = "CHAT_SQLITE_THREAD_NICE", default_value_t = -10, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub sqlite_thread_nice: i32,

    /// Seconds a request may take (database, Redis) before it is answered 503.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT", default_value_t = 5)]
    pub request_timeout: u64,

    /// Milliseconds a user whose last connection dropped (no LOGINOUT_MSG) still counts as
    /// online; reconnecting within it announces nothing to friends and co-members. 0: announce
    /// every drop at once.
    #[arg(long, env = "CHAT_PRESENCE_GRACE_MS", default_value_t = 2000)]
    pub presence_grace_ms: u64,

    /// Lifetime of a resume token (LOGIN_MSG with `token`), in seconds.
    #[arg(long, env = "CHAT_RESUME_TOKEN_TTL", default_value_t = 7 * 24 * 3600)]
    pub resume_token_ttl: u64,

    /// Address of a raw TCP listener speaking the original course protocol (NUL-terminated
    /// JSON) for its C++ client, e.g. `127.0.0.1:6000` (see `docs/legacy.md`). Absent: off.
    #[arg(long, env = "CHAT_LEGACY_LISTEN")]
    pub legacy_listen: Option<SocketAddr>,
}

impl Config {
    /// How long a request may take before it is answered 503 (`--request-timeout`, at least
    /// a second).
    pub fn request_time_limit(&self) -> Duration {
        Duration::from_secs(self.request_timeout.max(1))
    }

    /// A configuration for tests and embedding: the given database, port 0, defaults elsewhere.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        let mut config = Config::parse_from(["chat-server"]);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url.into();
        config
    }

    /// The web folder to serve: the configured one, `./web`, or the source tree's `web/`.
    pub fn resolve_web_dir(&self) -> PathBuf {
        if let Some(dir) = &self.web_dir {
            return dir.clone();
        }
        let cwd = PathBuf::from("web");
        if cwd.join("index.html").is_file() {
            return cwd;
        }
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web"))
    }

    /// The replica name: the configured one, or `<hostname>:<port>` of the bound address.
    pub fn resolve_node_id(&self, port: u16) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{port}")
    }
}
