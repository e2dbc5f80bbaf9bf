//! Rendering: `impl Widget for &App` draws the login form or the three-part main screen
//! (conversations | messages, input line, status line) and the help or info popup on top, so
//! that a `TestBackend` can check the screen. [`cursor_position`] places the terminal cursor.

use chrono::{DateTime, Local, Utc};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, BorderType, Clear, List, ListItem, ListState, Paragraph, StatefulWidget, Widget, Wrap,
};
use ratatui::{Frame, symbols};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::app::{App, Conversation, LoginField, LoginMode, Notice, Overlay, Pane, Screen};
use crate::commands::USAGE;
use crate::protocol::ConvKey;
use crate::session::LinkStatus;

/// Width of the conversation list.
const LIST_WIDTH: u16 = 30;
/// Width of the login box.
const LOGIN_WIDTH: u16 = 60;
/// Height of the login box.
const LOGIN_HEIGHT: u16 = 14;

/// Draws the app on a frame and places the cursor.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    frame.render_widget(app, area);
    if let Some(p) = cursor_position(app, area) {
        frame.set_cursor_position(p);
    }
}

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        match self.screen {
            Screen::Login => render_login(self, area, buf),
            Screen::Main => render_main(self, area, buf),
        }
        match &self.overlay {
            Some(Overlay::Help) => render_help(area, buf),
            Some(Overlay::Info { title, lines }) => render_info(title, lines, area, buf),
            None => {}
        }
    }
}

/// Where the terminal cursor goes: in the focused text field, if any.
pub fn cursor_position(app: &App, area: Rect) -> Option<Position> {
    if app.overlay.is_some() {
        return None;
    }
    match app.screen {
        Screen::Login => {
            let l = login_areas(area);
            let (field, input) = match app.login.field {
                LoginField::User => (l.user, &app.login.user),
                LoginField::Password => (l.password, &app.login.password),
                LoginField::Mode => return None,
            };
            let x = if app.login.field == LoginField::Password {
                input.cursor()
            } else {
                input.width_before_cursor()
            };
            let x = (x as u16).min(field.width.saturating_sub(1));
            Some(Position::new(field.x + x, field.y))
        }
        Screen::Main if app.focus == Pane::Input => {
            let m = main_areas(area);
            let inner = m.input.inner(ratatui::layout::Margin::new(1, 1));
            let (offset, _) = input_view(app, inner.width);
            let x = app.input.width_before_cursor().saturating_sub(offset) as u16;
            Some(Position::new(inner.x + PROMPT.width() as u16 + x, inner.y))
        }
        Screen::Main => None,
    }
}

/// The rectangles of the main screen.
struct MainAreas {
    /// Conversation list.
    list: Rect,
    /// Messages of the open conversation.
    messages: Rect,
    /// Input line (with its border).
    input: Rect,
    /// Status line.
    status: Rect,
}

/// Splits the main screen.
fn main_areas(area: Rect) -> MainAreas {
    let [body, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let [list, messages] =
        Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(10)]).areas(body);
    MainAreas {
        list,
        messages,
        input,
        status,
    }
}

/// The rectangles of the login screen.
struct LoginAreas {
    /// The whole box.
    frame: Rect,
    /// The name-or-id text.
    user: Rect,
    /// The password text.
    password: Rect,
    /// The log in / register choice.
    mode: Rect,
    /// Feedback line.
    notice: Rect,
    /// Key hints.
    hints: Rect,
    /// Status line at the bottom of the screen.
    status: Rect,
}

/// Label width in the login form.
const LABEL: u16 = 14;

/// Splits the login screen.
fn login_areas(area: Rect) -> LoginAreas {
    let [body, status] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    let frame = body.centered(
        Constraint::Length(LOGIN_WIDTH.min(body.width)),
        Constraint::Length(LOGIN_HEIGHT.min(body.height)),
    );
    let inner = frame.inner(ratatui::layout::Margin::new(2, 1));
    let row = |i: u16| Rect {
        x: inner.x,
        y: (inner.y + i).min(inner.bottom().saturating_sub(1)),
        width: inner.width,
        height: 1,
    };
    let field = |r: Rect| Rect {
        x: r.x + LABEL,
        width: r.width.saturating_sub(LABEL),
        ..r
    };
    LoginAreas {
        frame,
        user: field(row(1)),
        password: field(row(3)),
        mode: row(5),
        notice: row(8),
        hints: row(10),
        status,
    }
}

/// The login screen.
fn render_login(app: &App, area: Rect, buf: &mut Buffer) {
    let l = login_areas(area);
    let form = &app.login;
    Clear.render(l.frame, buf);
    Block::bordered()
        .border_type(BorderType::Rounded)
        .title(" clusterchat ".bold())
        .title_bottom(Line::from(" Enter: submit · Tab: next · Ctrl+C: quit ").centered())
        .render(l.frame, buf);
    let title = match form.mode {
        LoginMode::Login => "Log in",
        LoginMode::Register => "Register a new account",
    };
    let heading = Rect {
        y: l.user.y.saturating_sub(1),
        x: l.mode.x,
        width: l.mode.width,
        height: 1,
    };
    Line::from(title.bold()).render(heading, buf);
    let focus = |f: LoginField| {
        if form.field == f {
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        }
    };
    let mut label = |r: Rect, text: &str, f: LoginField| {
        let lr = Rect {
            x: r.x - LABEL,
            width: LABEL,
            ..r
        };
        Line::styled(text.to_owned(), focus(f)).render(lr, buf);
    };
    let user_label = match form.mode {
        LoginMode::Login => "Name or id",
        LoginMode::Register => "Name",
    };
    label(l.user, user_label, LoginField::User);
    label(l.password, "Password", LoginField::Password);
    let field_style = Style::new().bg(Color::DarkGray);
    Line::styled(pad(form.user.text(), l.user.width), field_style).render(l.user, buf);
    let masked = "•".repeat(form.password.text().chars().count());
    Line::styled(pad(&masked, l.password.width), field_style).render(l.password, buf);
    let choice = |m: LoginMode, text: &str| {
        let chosen = form.mode == m;
        let mut style = if chosen {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        };
        if chosen && form.field == LoginField::Mode {
            style = style.fg(Color::Yellow);
        }
        Span::styled(format!(" {text} "), style)
    };
    Line::from(vec![
        choice(LoginMode::Login, "Log in"),
        Span::raw("   "),
        choice(LoginMode::Register, "Register"),
        Span::raw("   (Ctrl+R switches)").dim(),
    ])
    .centered()
    .render(l.mode, buf);
    if let Some(n) = &form.notice {
        notice_line(n).render(l.notice, buf);
    }
    let hint = if form.busy {
        "waiting for the server…"
    } else {
        "Enter: log in or register · F1: help"
    };
    Line::from(hint.dim()).centered().render(l.hints, buf);
    status_line(app, l.status, buf);
}

/// The main screen.
fn render_main(app: &App, area: Rect, buf: &mut Buffer) {
    let m = main_areas(area);
    render_list(app, m.list, buf);
    render_messages(app, m.messages, buf);
    render_input(app, m.input, buf);
    status_line(app, m.status, buf);
}

/// A bordered block, highlighted when its pane has the focus.
fn pane_block(title: Line<'_>, focused: bool) -> Block<'_> {
    let block = Block::bordered().title(title);
    if focused {
        block
            .border_type(BorderType::Thick)
            .border_style(Style::new().fg(Color::Yellow))
    } else {
        block.border_style(Style::new().fg(Color::DarkGray))
    }
}

/// The conversation list.
fn render_list(app: &App, area: Rect, buf: &mut Buffer) {
    let focused = app.focus == Pane::Conversations;
    let block = pane_block(Line::from(" Conversations ".bold()), focused);
    let items: Vec<ListItem> = app
        .conversations
        .iter()
        .map(|c| ListItem::new(list_line(c, app.open == Some(c.key))))
        .collect();
    if items.is_empty() {
        Paragraph::new(vec![
            Line::from("No conversations yet.".dim()),
            Line::from("addfriend:ID adds a friend,".dim()),
            Line::from("addgroup:ID joins a group.".dim()),
        ])
        .wrap(Wrap { trim: true })
        .block(block)
        .render(area, buf);
        return;
    }
    let list = List::new(items)
        .block(block)
        .highlight_symbol("▶ ")
        .highlight_spacing(ratatui::widgets::HighlightSpacing::Always)
        .highlight_style(if focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        });
    let mut state = ListState::default().with_selected(Some(app.selected));
    StatefulWidget::render(list, area, buf, &mut state);
}

/// One row of the conversation list: state mark, name, unread count.
fn list_line(c: &Conversation, open: bool) -> Line<'static> {
    let mark = match (c.key, c.online) {
        (ConvKey::Group(_), _) => Span::styled("# ", Style::new().fg(Color::Cyan)),
        (ConvKey::User(_), Some(true)) => Span::styled("● ", Style::new().fg(Color::Green)),
        (ConvKey::User(_), _) => Span::styled("○ ", Style::new().fg(Color::DarkGray)),
    };
    let mut name = Span::raw(c.title.clone());
    if open {
        name = name.bold();
    }
    let mut spans = vec![mark, name];
    if c.unread > 0 {
        spans.push(Span::styled(
            format!(" ({})", c.unread),
            Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        ));
    }
    Line::from(spans)
}

/// The open conversation, bottom-anchored, scrolled by `app.scroll` messages.
fn render_messages(app: &App, area: Rect, buf: &mut Buffer) {
    let focused = app.focus == Pane::Messages;
    let Some(conv) = app.open_conversation() else {
        let block = pane_block(Line::from(" Messages ".bold()), focused);
        Paragraph::new(vec![
            Line::default(),
            Line::from("Choose a conversation on the left (Tab, ↑/↓ or j/k) and press Enter,"),
            Line::from("or type chat:ID:message in the input line below."),
            Line::default(),
            Line::from("Press ? for help.".dim()),
        ])
        .centered()
        .wrap(Wrap { trim: true })
        .block(block)
        .render(area, buf);
        return;
    };
    let title = conversation_title(conv);
    let block = pane_block(title, focused);
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let me = app.me.as_ref().map(|m| m.0);
    let mut entries: Vec<Vec<Line<'static>>> = conv
        .messages
        .values()
        .map(|m| {
            let mine = Some(m.id) == me;
            message_lines(
                &short_time(&m.time),
                &m.name,
                mine,
                &m.msg,
                None,
                inner.width,
            )
        })
        .collect();
    let my_name = app.me.as_ref().map_or("me", |m| m.1.as_str());
    for p in &conv.pending {
        let state = match &p.error {
            Some(e) => format!("not sent: {e}"),
            None => "sending…".to_owned(),
        };
        entries.push(message_lines(
            "  …  ",
            my_name,
            true,
            &p.text,
            Some((state, p.error.is_some())),
            inner.width,
        ));
    }
    let visible_end = entries.len().saturating_sub(app.scroll);
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut start = visible_end;
    let height = inner.height as usize;
    while start > 0 {
        let n = entries[start - 1].len();
        if lines.len() + n > height && !lines.is_empty() {
            break;
        }
        start -= 1;
        let mut block_lines = entries[start].clone();
        block_lines.append(&mut lines);
        lines = block_lines;
    }
    if start == 0 && lines.len() < height {
        let top = if conv.loading {
            Some(Line::from("loading…".dim()).centered())
        } else if conv.more_before && conv.history_loaded {
            Some(Line::from("— PageUp for older messages —".dim()).centered())
        } else if entries.is_empty() {
            Some(Line::from("No messages yet.".dim()).centered())
        } else {
            None
        };
        if let Some(t) = top {
            lines.insert(0, t);
        }
    }
    if lines.len() > height {
        lines.drain(..lines.len() - height);
    }
    let y = inner.y + (height - lines.len()) as u16;
    for (i, line) in lines.into_iter().enumerate() {
        line.render(
            Rect {
                x: inner.x,
                y: y + i as u16,
                width: inner.width,
                height: 1,
            },
            buf,
        );
    }
    if app.scroll > 0 {
        let hint = format!(" ↓ {} newer (End) ", app.scroll);
        let w = hint.width() as u16;
        if area.width > w + 2 {
            Line::from(hint.reversed()).render(
                Rect {
                    x: area.right() - w - 2,
                    y: area.bottom() - 1,
                    width: w,
                    height: 1,
                },
                buf,
            );
        }
    }
}

/// `bob · #2 · online` / `rustaceans · group #5 · 3 members`.
fn conversation_title(conv: &Conversation) -> Line<'static> {
    let mut spans = vec![Span::raw(" "), Span::raw(conv.title.clone()).bold()];
    match conv.key {
        ConvKey::User(id) => {
            spans.push(Span::raw(format!(" · #{id}")));
            match conv.online {
                Some(true) => spans.push(Span::styled(" · online", Style::new().fg(Color::Green))),
                Some(false) => spans.push(Span::raw(" · offline").dim()),
                None => {}
            }
        }
        ConvKey::Group(id) => {
            spans.push(Span::raw(format!(" · group #{id}")));
            if !conv.members.is_empty() {
                spans.push(Span::raw(format!(" · {} members", conv.members.len())));
            }
        }
    }
    spans.push(Span::raw(" "));
    Line::from(spans)
}

/// One message as lines wrapped to `width`: `05:10 bob: text`.
fn message_lines(
    time: &str,
    name: &str,
    mine: bool,
    text: &str,
    state: Option<(String, bool)>,
    width: u16,
) -> Vec<Line<'static>> {
    let name_style = if mine {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
    };
    let head = format!("{time} ");
    let who = format!("{name}: ");
    let indent = head.width() + who.width();
    let width = (width as usize).max(indent + 8);
    let mut rows = wrap(text, width - indent);
    if rows.is_empty() {
        rows.push(String::new());
    }
    let text_style = match &state {
        Some((_, true)) => Style::new().fg(Color::Red),
        Some((_, false)) => Style::new().add_modifier(Modifier::DIM),
        None => Style::new(),
    };
    let mut lines = Vec::with_capacity(rows.len() + 1);
    for (i, row) in rows.into_iter().enumerate() {
        if i == 0 {
            lines.push(Line::from(vec![
                Span::raw(head.clone()).dim(),
                Span::styled(who.clone(), name_style),
                Span::styled(row, text_style),
            ]));
        } else {
            lines.push(Line::from(vec![
                Span::raw(" ".repeat(indent)),
                Span::styled(row, text_style),
            ]));
        }
    }
    if let Some((words, failed)) = state {
        let style = if failed {
            Style::new().fg(Color::Red)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        };
        lines.push(Line::from(vec![
            Span::raw(" ".repeat(indent)),
            Span::styled(format!("({words})"), style),
        ]));
    }
    lines
}

/// Breaks text into rows of at most `width` columns (on spaces when possible; newlines kept).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for paragraph in text.split('\n') {
        let mut row = String::new();
        let mut row_width = 0;
        for word in paragraph.split_inclusive(' ') {
            let w = word.width();
            if row_width + word.trim_end().width() > width && !row.is_empty() {
                rows.push(std::mem::take(&mut row).trim_end().to_owned());
                row_width = 0;
            }
            if w > width {
                for c in word.chars() {
                    let cw = c.width().unwrap_or(0);
                    if row_width + cw > width {
                        rows.push(std::mem::take(&mut row));
                        row_width = 0;
                    }
                    row.push(c);
                    row_width += cw;
                }
            } else {
                row.push_str(word);
                row_width += w;
            }
        }
        rows.push(row.trim_end().to_owned());
    }
    rows
}

/// `HH:MM` in local time (with the date when not today); the raw text when unparsable.
fn short_time(time: &str) -> String {
    match DateTime::parse_from_rfc3339(time) {
        Ok(t) => {
            let local = t.with_timezone(&Local);
            if local.date_naive() == Utc::now().with_timezone(&Local).date_naive() {
                local.format("%H:%M").to_string()
            } else {
                local.format("%m-%d %H:%M").to_string()
            }
        }
        Err(_) if time.is_empty() => "--:--".to_owned(),
        Err(_) => time.to_owned(),
    }
}

/// The input prompt.
const PROMPT: &str = "> ";

/// The part of the input that fits: (skipped width, visible text).
fn input_view(app: &App, width: u16) -> (usize, String) {
    let avail = (width as usize).saturating_sub(PROMPT.width() + 1).max(1);
    let before = app.input.width_before_cursor();
    let skip = before.saturating_sub(avail);
    let mut skipped = 0;
    let mut visible = String::new();
    let mut used = 0;
    for c in app.input.text().chars() {
        let w = c.width().unwrap_or(0);
        if skipped < skip {
            skipped += w;
            continue;
        }
        if used + w > avail {
            break;
        }
        visible.push(c);
        used += w;
    }
    (skipped, visible)
}

/// The input line.
fn render_input(app: &App, area: Rect, buf: &mut Buffer) {
    let focused = app.focus == Pane::Input;
    let target = match app.open_conversation() {
        Some(c) => format!(" Message to {} ", c.title),
        None => " Command (help for the list) ".to_owned(),
    };
    let block = pane_block(Line::from(target.bold()), focused).title_bottom(
        Line::from(" Enter: send · Tab: panes · ?: help · Ctrl+C: quit ").right_aligned(),
    );
    let inner = block.inner(area);
    block.render(area, buf);
    let (_, visible) = input_view(app, inner.width);
    let mut spans = vec![Span::styled(PROMPT, Style::new().fg(Color::Yellow))];
    if visible.is_empty() && !focused {
        spans.push(Span::raw("type a message or a command").dim());
    } else {
        spans.push(Span::raw(visible));
    }
    Line::from(spans).render(inner, buf);
}

/// The status line: link, node and user on the left; the last error or information after.
fn status_line(app: &App, area: Rect, buf: &mut Buffer) {
    let (mark, link) = match &app.link {
        LinkStatus::Connected => (
            Span::styled("● ", Style::new().fg(Color::Green)),
            "connected".to_owned(),
        ),
        LinkStatus::Connecting { attempt: 0 } => (
            Span::styled("○ ", Style::new().fg(Color::Yellow)),
            "connecting…".to_owned(),
        ),
        LinkStatus::Connecting { attempt } => (
            Span::styled("○ ", Style::new().fg(Color::Yellow)),
            format!("reconnecting (try {})…", attempt + 1),
        ),
        LinkStatus::Reconnecting { delay, reason, .. } => (
            Span::styled("✗ ", Style::new().fg(Color::Red)),
            format!("{reason}; reconnecting in {:.1}s", delay.as_secs_f64()),
        ),
    };
    let mut spans = vec![Span::raw(" "), mark, Span::raw(link)];
    if let (Some(node), LinkStatus::Connected) = (&app.node, &app.link) {
        spans.push(Span::raw(format!(" to {node}")));
    }
    if let Some((id, name)) = &app.me {
        spans.push(Span::raw(" · "));
        spans.push(Span::raw(format!("{name} (#{id})")).bold());
    }
    if let Some(n) = &app.notice {
        spans.push(Span::raw(" · "));
        spans.extend(notice_line(n).spans);
    }
    Line::from(spans)
        .style(Style::new().bg(Color::Black))
        .render(area, buf);
}

/// An error in red, information in plain text.
fn notice_line(n: &Notice) -> Line<'static> {
    match n {
        Notice::Error(t) => Line::from(Span::styled(
            format!("error: {t}"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )),
        Notice::Info(t) => Line::from(Span::styled(t.clone(), Style::new().fg(Color::Green))),
    }
}

/// The help popup: keys and the original client's commands.
fn render_help(area: Rect, buf: &mut Buffer) {
    let mut lines = vec![
        Line::from("Keys".bold()),
        key_line("Tab / Shift+Tab", "move between panes"),
        key_line("↑ ↓ or j k", "choose a conversation / scroll"),
        key_line("Enter", "open the conversation / send the line"),
        key_line(
            "PageUp / PageDown",
            "older messages (loads history) / newer",
        ),
        key_line("End", "back to the newest message"),
        key_line("? or F1", "this help (any key closes it)"),
        key_line("Ctrl+C", "quit"),
        Line::default(),
        Line::from("Commands (type them in the input line)".bold()),
    ];
    for (usage, what) in USAGE {
        lines.push(key_line(usage, what));
    }
    lines.push(Line::default());
    lines.push(Line::from(
        "Any other text is sent to the open conversation.".dim(),
    ));
    popup(" Help ", lines, area, buf);
}

/// A `key   description` row of the help.
fn key_line(key: &str, what: &str) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("  {key:<34}"), Style::new().fg(Color::Yellow)),
        Span::raw(what.to_owned()),
    ])
}

/// A command result popup.
fn render_info(title: &str, lines: &[String], area: Rect, buf: &mut Buffer) {
    let mut body: Vec<Line> = lines.iter().map(|l| Line::from(l.clone())).collect();
    body.push(Line::default());
    body.push(Line::from("press any key to close".dim()));
    popup(&format!(" {title} "), body, area, buf);
}

/// A centered bordered popup sized to its lines.
fn popup(title: &str, lines: Vec<Line<'static>>, area: Rect, buf: &mut Buffer) {
    let width = lines.iter().map(Line::width).max().unwrap_or(0) as u16 + 4;
    let height = lines.len() as u16 + 2;
    let rect = area.centered(
        Constraint::Length(width.max(title.width() as u16 + 4).min(area.width)),
        Constraint::Length(height.min(area.height)),
    );
    Clear.render(rect, buf);
    Paragraph::new(lines)
        .block(
            Block::bordered()
                .border_set(symbols::border::DOUBLE)
                .title(title.to_owned().bold())
                .style(Style::new().bg(Color::Black)),
        )
        .render(rect, buf);
}

/// Text padded with spaces to `width` columns (so the field's background shows).
fn pad(text: &str, width: u16) -> String {
    let w = text.width();
    let mut s = text.to_owned();
    if w < width as usize {
        s.push_str(&" ".repeat(width as usize - w));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Chat, Group, LoginAck, LoginBy, Password, Request, ServerMessage, User};
    use crate::session::ConnEvent;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// Renders the app on a `w`×`h` test terminal and returns the screen as lines of text.
    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buf = terminal.backend().buffer();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    fn contains(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|l| l.contains(needle))
    }

    fn chat(message_id: i64, seq: i64, from: i64, name: &str, to: i64, msg: &str) -> Chat {
        Chat {
            msgid: 6,
            message_id,
            seq,
            id: from,
            name: name.into(),
            toid: Some(to),
            groupid: None,
            msg: msg.into(),
            time: "2026-11-21T05:10:24.123Z".into(),
        }
    }

    fn logged_in_app() -> App {
        let mut app = App::new("t");
        app.handle_server(ConnEvent::Status(LinkStatus::Connected));
        app.handle_server(ConnEvent::Reply {
            request: Request::Login {
                who: LoginBy::Name("alice".into()),
                password: Password("pw".into()),
            },
            reply: ServerMessage::LoginAck(LoginAck {
                reqid: Some(1),
                errno: 0,
                errmsg: String::new(),
                id: 1,
                name: "alice".into(),
                node: Some("node-a".into()),
                friends: vec![
                    User {
                        id: 2,
                        name: "bob".into(),
                        state: "online".into(),
                    },
                    User {
                        id: 3,
                        name: "carol".into(),
                        state: "offline".into(),
                    },
                ],
                groups: vec![Group {
                    id: 5,
                    groupname: "rustaceans".into(),
                    groupdesc: String::new(),
                    users: vec![],
                }],
                offlinemsg: vec![
                    chat(10, 1, 2, "bob", 1, "hello alice"),
                    chat(11, 1, 3, "carol", 1, "ping"),
                    chat(12, 2, 3, "carol", 1, "ping again"),
                ],
            }),
        });
        app
    }

    #[test]
    fn the_login_screen_shows_the_form_and_the_connection() {
        let mut app = App::new("t");
        app.prefill_user("alice");
        app.login.password = crate::input::LineInput::with_text("secret");
        let s = screen(&app, 80, 24);
        assert!(contains(&s, "clusterchat"), "{s:#?}");
        assert!(contains(&s, "Log in"));
        assert!(contains(&s, "Name or id"));
        assert!(contains(&s, "alice"));
        assert!(contains(&s, "Password"));
        assert!(contains(&s, "••••••"));
        assert!(!contains(&s, "secret"), "the password is masked");
        assert!(contains(&s, "Register"));
        assert!(contains(&s, "connecting…"));
    }

    #[test]
    fn the_login_screen_shows_errors_in_plain_words() {
        let mut app = App::new("t");
        app.login.notice = Some(Notice::Error("wrong id or password".into()));
        app.handle_server(ConnEvent::Status(LinkStatus::Reconnecting {
            attempt: 2,
            delay: std::time::Duration::from_millis(1500),
            reason: "cannot connect: refused".into(),
        }));
        let s = screen(&app, 80, 24);
        assert!(contains(&s, "error: wrong id or password"), "{s:#?}");
        assert!(contains(
            &s,
            "cannot connect: refused; reconnecting in 1.5s"
        ));
    }

    #[test]
    fn the_main_screen_shows_conversations_unread_counts_and_the_status() {
        let app = logged_in_app();
        let s = screen(&app, 100, 20);
        assert!(contains(&s, "Conversations"), "{s:#?}");
        assert!(contains(&s, "● bob (1)"));
        assert!(contains(&s, "○ carol (2)"));
        assert!(contains(&s, "# rustaceans"));
        assert!(contains(&s, "connected to node-a · alice (#1)"));
        assert!(contains(&s, "Choose a conversation"));
        assert!(contains(&s, "Command (help for the list)"));
    }

    #[test]
    fn the_open_conversation_shows_sender_time_and_text() {
        use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let mut app = logged_in_app();
        app.handle_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        app.handle_server(ConnEvent::Chats(vec![chat(
            13,
            3,
            1,
            "alice",
            3,
            "pong: a longer answer that has to wrap around the edge of the message pane",
        )]));
        for c in "draft".chars() {
            app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
        }
        let s = screen(&app, 100, 20);
        assert!(contains(&s, "carol · #3 · offline"), "{s:#?}");
        assert!(contains(&s, "carol: ping"));
        assert!(contains(&s, "carol: ping again"));
        assert!(contains(&s, "alice: pong: a longer answer"));
        assert!(contains(&s, "of the message pane"), "{s:#?}");
        assert!(
            s.iter()
                .any(|l| l.contains(":10 carol: ping") || l.contains(":40 carol: ping")),
            "time before the sender"
        );
        assert!(contains(&s, "○ carol "), "read: no unread count any more");
        assert!(contains(&s, "Message to carol"));
        assert!(contains(&s, "> draft"));
    }

    #[test]
    fn pending_and_failed_sends_are_marked() {
        use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let mut app = logged_in_app();
        app.focus = Pane::Input;
        for c in "chat:2:are you there".chars() {
            app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
        }
        app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let s = screen(&app, 100, 20);
        assert!(contains(&s, "alice: are you there"), "{s:#?}");
        assert!(contains(&s, "(sending…)"));
    }

    #[test]
    fn the_help_overlay_lists_keys_and_every_command() {
        let mut app = logged_in_app();
        app.overlay = Some(Overlay::Help);
        let s = screen(&app, 100, 40);
        assert!(contains(&s, "Help"), "{s:#?}");
        assert!(contains(&s, "Tab / Shift+Tab"));
        assert!(contains(&s, "PageUp"));
        assert!(contains(&s, "Ctrl+C"));
        for (usage, _) in USAGE {
            assert!(contains(&s, usage), "{usage} missing");
        }
    }

    #[test]
    fn an_info_popup_shows_a_command_result() {
        let mut app = logged_in_app();
        app.overlay = Some(Overlay::Info {
            title: "Friends (1)".into(),
            lines: vec!["#2      bob    online".into()],
        });
        let s = screen(&app, 100, 20);
        assert!(contains(&s, "Friends (1)"));
        assert!(contains(&s, "#2      bob    online"));
        assert!(contains(&s, "press any key to close"));
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let app = logged_in_app();
        for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 8)] {
            screen(&app, w, h);
        }
        let app = App::new("t");
        for (w, h) in [(1, 1), (10, 3), (20, 5)] {
            screen(&app, w, h);
        }
    }

    #[test]
    fn wrapping_breaks_on_spaces_and_splits_long_words() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("a\nb", 10), vec!["a", "b"]);
    }
}
