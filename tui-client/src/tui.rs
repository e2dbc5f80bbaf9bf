//! Terminal setup and restore: raw mode and the alternate screen on start, and a panic hook and
//! a drop guard that always give the terminal back in a usable state.

use std::io::{self, Stdout, stdout};

use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

/// The terminal the app draws on.
pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// Why the terminal could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// Standard output is not a terminal, or the terminal refused a setting.
    #[error("cannot use the terminal: {0}")]
    Io(#[from] io::Error),
}

/// Owns the terminal while the TUI runs; restores it when dropped (also on early returns).
pub struct TerminalGuard {
    /// The terminal.
    pub terminal: Term,
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        restore();
    }
}

/// Enters raw mode and the alternate screen, after installing the panic hook.
pub fn init() -> Result<TerminalGuard, TuiError> {
    install_panic_hook();
    enable_raw_mode()?;
    if let Err(e) = execute!(stdout(), EnterAlternateScreen) {
        restore();
        return Err(e.into());
    }
    let mut terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    terminal.clear()?;
    Ok(TerminalGuard { terminal })
}

/// Leaves raw mode and the alternate screen (harmless when not in them).
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

/// A panic hook that restores the terminal before the default hook prints the panic, so the
/// message is readable and the shell usable.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        tracing::error!("panic: {info}");
        previous(info);
    }));
}
