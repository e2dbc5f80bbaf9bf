//! The TUI event loop: terminal keys and connection events go into the [`App`], its actions
//! go to the [`Connection`], and the screen is redrawn after every change.

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt;

use crate::app::{Action, App};
use crate::connection::{Connection, ConnectionConfig};
use crate::tui::{self, TuiError};
use crate::ui;

/// How the TUI starts.
#[derive(Debug, Clone)]
pub struct TuiOptions {
    /// The server's WebSocket URL.
    pub url: String,
    /// Name or id to log in as (prefilled, or used at once with `password`).
    pub user: Option<String>,
    /// The password: with `user`, logs in without the form.
    pub password: Option<String>,
}

/// Why the TUI stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The terminal could not be set up or drawn on.
    #[error(transparent)]
    Tui(#[from] TuiError),
    /// Drawing or reading the terminal failed.
    #[error("terminal error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the TUI until the user quits.
pub async fn run_tui(options: TuiOptions) -> Result<(), RunError> {
    let (connection, mut events) = Connection::spawn(ConnectionConfig::new(options.url.clone()));
    let mut app = App::new(format!("tui-{:012x}", rand::random::<u64>() >> 16));
    let mut actions = match (&options.user, &options.password) {
        (Some(user), Some(password)) => app.auto_login(user, password),
        (Some(user), None) => {
            app.prefill_user(user);
            Vec::new()
        }
        _ => Vec::new(),
    };
    let mut guard = tui::init()?;
    let mut keys = EventStream::new();
    let result = loop {
        for action in actions.drain(..) {
            match action {
                Action::Send(request) => connection.send(request),
                Action::Quit => {}
            }
        }
        if app.should_quit() {
            break Ok(());
        }
        if let Err(e) = guard.terminal.draw(|f| ui::draw(f, &app)) {
            break Err(RunError::Io(e));
        }
        tokio::select! {
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    actions = app.handle_key(key);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(RunError::Io(e)),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Some(event) => {
                    tracing::debug!(?event, "connection event");
                    actions = app.handle_server(event);
                }
                None => break Ok(()),
            },
        }
    };
    connection.close().await;
    drop(guard);
    result
}
