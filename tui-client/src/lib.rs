//! `chat-tui`: the clusterchat terminal client. It speaks the msgid JSON protocol of
//! `shared/DESIGN.md` over WebSocket, to one replica or through nginx.
//!
//! # Layout
//! - [`protocol`]: request builders and reply/push parsing (pure).
//! - [`commands`]: the original client's `cmd:arg:text` commands, parsed to requests.
//! - [`session`]: the connection's bookkeeping without I/O: reqid matching, re-login,
//!   catch-up, resends by txnid, de-duplication by message_id.
//! - [`connection`]: the WebSocket task around the session: connect, ping, reconnect with
//!   backoff.
//! - [`input`]: a one-line text editor.
//! - [`app`]: the state machine (login screen, main screen, overlays): keys and server events
//!   in, actions out.
//! - [`ui`]: rendering of the app (`impl Widget for &App`).
//! - [`tui`]: terminal setup, restore, and the panic hook.
//! - [`runner`]: the TUI event loop.
//! - [`send_once`]: `--send`, one message without a screen.

pub mod app;
pub mod commands;
pub mod connection;
pub mod input;
pub mod protocol;
pub mod runner;
pub mod send_once;
pub mod session;
pub mod tui;
pub mod ui;
