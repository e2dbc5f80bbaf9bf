//! clusterchat server: the msgid JSON chat protocol of the C++ "cluster chat server", over
//! WebSocket, with durable history and cross-replica delivery.
//!
//! # Layout
//! - [`config`]: command-line / environment configuration.
//! - [`app`]: [`Application`] (build, bind, run, shut down) and the shared [`AppState`].
//! - [`http`]: the router: `/ws`, `/healthz`, `/metrics`, the web page.
//! - [`upgrade`]: the WebSocket handshake.
//! - [`socket`]: a connection's bytes (gathered writes, fragments, no lasting buffers).
//! - [`reframe`]: large client frames cut into fragments on their way in.
//! - [`ws`]: the per-connection socket loop (ordered replies, bounded push queue).
//! - [`legacy`]: the original course's TCP protocol (NUL-terminated JSON) for its C++ client.
//! - [`protocol`]: msgids, request parsing and validation, reply shapes (pure).
//! - [`service`]: one handler per request, given the session; business rules.
//! - [`delivery`]: the chat pipeline: batched writes (group commit), then publish, then ack.
//! - [`store`]: sea-orm entities and queries (SQLite, MySQL/MariaDB, PostgreSQL).
//! - [`priority`]: scheduling priority of SQLite's connection threads.
//! - [`hub`]: this replica's live connections by user and group; local delivery.
//! - [`bus`]: channels between replicas (in-process for a single node).
//! - [`presence`]: who is online; PRESENCE_MSG announcements.
//! - [`auth`]: argon2 password hashing, resume tokens.
//! - [`limits`]: request rates and login throttling.
//! - [`error`]: typed errors and their errno.
//! - [`telemetry`]: logging and Prometheus metrics.

pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod delivery;
pub mod error;
pub mod http;
pub mod hub;
pub mod legacy;
pub mod limits;
pub mod presence;
pub mod priority;
pub mod protocol;
pub mod reframe;
pub mod replies;
pub mod service;
pub mod socket;
pub mod store;
pub mod telemetry;
pub mod upgrade;
pub mod ws;

pub use app::{AppState, Application, ShutdownHandle};
pub use config::Config;
