//! The client's state machine: the login screen, the main screen (conversations, messages,
//! input line, status line), the help and info overlays. Pure and synchronous: keys go in
//! through [`App::handle_key`], connection events through [`App::handle_server`], and both
//! return the [`Action`]s to carry out (requests to send, quitting).

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::commands::{self, Command};
use crate::input::LineInput;
use crate::protocol::{
    Ack, Chat, ConvKey, GROUP_CHAT_MSG, Group, HistoryBound, LoginAck, LoginBy, MAX_NAME_CHARS,
    Member, ONE_CHAT_MSG, Password, Request, ServerMessage, User, describe,
};
use crate::session::{ConnEvent, LinkStatus};

/// Messages asked for when a conversation is opened or paged back.
pub const HISTORY_PAGE: u32 = 50;
/// Messages one PageUp / PageDown scrolls.
pub const SCROLL_PAGE: usize = 10;

/// What the app asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request to the server.
    Send(Request),
    /// Leave the program.
    Quit,
}

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Name-or-id and password, log in or register.
    Login,
    /// Conversations, messages, input line.
    Main,
}

/// The panes of the main screen that take the keyboard focus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The list of conversations on the left.
    Conversations,
    /// The open conversation's messages.
    Messages,
    /// The input line.
    Input,
}

impl Pane {
    /// The next pane for Tab.
    fn next(self) -> Pane {
        match self {
            Pane::Conversations => Pane::Messages,
            Pane::Messages => Pane::Input,
            Pane::Input => Pane::Conversations,
        }
    }

    /// The previous pane for Shift+Tab.
    fn prev(self) -> Pane {
        match self {
            Pane::Conversations => Pane::Input,
            Pane::Messages => Pane::Conversations,
            Pane::Input => Pane::Messages,
        }
    }
}

/// The focused element of the login form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginField {
    /// Name or id.
    User,
    /// Password.
    Password,
    /// The log in / register choice.
    Mode,
}

/// Whether the login form logs in or registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMode {
    /// Log in to an existing account.
    Login,
    /// Create an account.
    Register,
}

/// A line of feedback: an error or plain information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Something failed; said in plain words.
    Error(String),
    /// Something happened.
    Info(String),
}

/// The login form.
#[derive(Debug, Clone)]
pub struct LoginForm {
    /// Name or numeric id.
    pub user: LineInput,
    /// Password (shown masked).
    pub password: LineInput,
    /// Focused element.
    pub field: LoginField,
    /// Log in or register.
    pub mode: LoginMode,
    /// A request is in flight: Enter does nothing until it is answered.
    pub busy: bool,
    /// Feedback shown under the form.
    pub notice: Option<Notice>,
}

impl Default for LoginForm {
    fn default() -> Self {
        LoginForm {
            user: LineInput::default(),
            password: LineInput::default(),
            field: LoginField::User,
            mode: LoginMode::Login,
            busy: false,
            notice: None,
        }
    }
}

/// A popup over the screen; any key closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// Keys and commands.
    Help,
    /// A command's result (friend list, group members).
    Info {
        /// Heading.
        title: String,
        /// Lines of text.
        lines: Vec<String>,
    },
}

/// A message typed here and not yet acked by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSend {
    /// Its idempotency key (matches the ack to it).
    pub txnid: String,
    /// The text.
    pub text: String,
    /// Why it was not sent, once the server or the link said so.
    pub error: Option<String>,
}

/// One conversation in the list.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Which conversation.
    pub key: ConvKey,
    /// The friend's or group's name.
    pub title: String,
    /// 1:1 only: whether the other user is online (`None`: unknown).
    pub online: Option<bool>,
    /// Groups: the members as last reported.
    pub members: Vec<Member>,
    /// Messages from others received while the conversation was not open.
    pub unread: usize,
    /// Stored messages by seq.
    pub messages: BTreeMap<i64, Chat>,
    /// Messages being sent.
    pub pending: Vec<PendingSend>,
    /// Whether the newest page of history was loaded.
    pub history_loaded: bool,
    /// Whether older messages exist on the server (unknown counts as yes).
    pub more_before: bool,
    /// Whether a HISTORY request is in flight.
    pub loading: bool,
    /// The highest seq a READ was sent for.
    pub read_sent: i64,
}

impl Conversation {
    /// An empty conversation.
    pub fn new(key: ConvKey, title: impl Into<String>) -> Conversation {
        Conversation {
            key,
            title: title.into(),
            online: None,
            members: Vec::new(),
            unread: 0,
            messages: BTreeMap::new(),
            pending: Vec::new(),
            history_loaded: false,
            more_before: true,
            loading: false,
            read_sent: 0,
        }
    }

    /// The highest seq stored.
    pub fn last_seq(&self) -> Option<i64> {
        self.messages.keys().next_back().copied()
    }

    /// The lowest seq stored.
    pub fn first_seq(&self) -> Option<i64> {
        self.messages.keys().next().copied()
    }

    /// Number of lines the message view holds (messages and pending sends).
    pub fn len(&self) -> usize {
        self.messages.len() + self.pending.len()
    }

    /// Whether there is nothing to show.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The whole client state.
#[derive(Debug)]
pub struct App {
    /// Which screen is shown.
    pub screen: Screen,
    /// The login form.
    pub login: LoginForm,
    /// The logged-in user: id and name.
    pub me: Option<(i64, String)>,
    /// The replica serving us (from the login reply).
    pub node: Option<String>,
    /// The conversation list, in display order: friends, then groups, then others as they come.
    pub conversations: Vec<Conversation>,
    /// Index of the highlighted conversation.
    pub selected: usize,
    /// The conversation shown in the middle.
    pub open: Option<ConvKey>,
    /// The focused pane of the main screen.
    pub focus: Pane,
    /// The input line.
    pub input: LineInput,
    /// Messages hidden below the view (0: following the newest).
    pub scroll: usize,
    /// The popup shown, if any.
    pub overlay: Option<Overlay>,
    /// The link's state.
    pub link: LinkStatus,
    /// The last error or information for the status line.
    pub notice: Option<Notice>,
    /// After the login, focus the input line (logged in from the command line).
    focus_input_after_login: bool,
    /// Prefix of the txnids of this app's sends.
    txn_prefix: String,
    /// Counter of those txnids.
    txn_counter: u64,
    /// Set once the user asked to quit.
    quit: bool,
}

impl App {
    /// A fresh app on the login screen; `txn_prefix` makes its txnids unique.
    pub fn new(txn_prefix: impl Into<String>) -> App {
        App {
            screen: Screen::Login,
            login: LoginForm::default(),
            me: None,
            node: None,
            conversations: Vec::new(),
            selected: 0,
            open: None,
            focus: Pane::Conversations,
            input: LineInput::default(),
            scroll: 0,
            overlay: None,
            link: LinkStatus::Connecting { attempt: 0 },
            notice: None,
            focus_input_after_login: false,
            txn_prefix: txn_prefix.into(),
            txn_counter: 0,
            quit: false,
        }
    }

    /// Whether the user asked to quit.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Fills the name-or-id field and moves to the password.
    pub fn prefill_user(&mut self, user: &str) {
        self.login.user = LineInput::with_text(user);
        self.login.field = LoginField::Password;
    }

    /// Logs in without the form (`--user` with `--password-env`); the input line gets the
    /// focus once logged in.
    pub fn auto_login(&mut self, user: &str, password: &str) -> Vec<Action> {
        self.login.user = LineInput::with_text(user);
        self.login.password = LineInput::with_text(password);
        self.login.mode = LoginMode::Login;
        self.focus_input_after_login = true;
        self.submit_login()
    }

    /// The open conversation.
    pub fn open_conversation(&self) -> Option<&Conversation> {
        self.open.and_then(|k| self.conversation(k))
    }

    /// A conversation by key.
    pub fn conversation(&self, key: ConvKey) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.key == key)
    }

    /// A conversation by key, for changes.
    fn conversation_mut(&mut self, key: ConvKey) -> Option<&mut Conversation> {
        self.conversations.iter_mut().find(|c| c.key == key)
    }

    /// The conversation with this key, created (titled by `title`) when missing.
    fn ensure_conversation(&mut self, key: ConvKey, title: impl FnOnce() -> String) -> usize {
        if let Some(i) = self.conversations.iter().position(|c| c.key == key) {
            return i;
        }
        self.conversations.push(Conversation::new(key, title()));
        self.conversations.len() - 1
    }

    /// Sets an error for the status line.
    fn error(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice::Error(text.into()));
    }

    /// Sets information for the status line.
    fn info(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice::Info(text.into()));
    }

    // ----- keys ---------------------------------------------------------------------------

    /// Handles one key press.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            self.quit = true;
            return vec![Action::Quit];
        }
        if self.overlay.is_some() {
            self.overlay = None;
            return Vec::new();
        }
        if key.code == KeyCode::F(1) {
            self.overlay = Some(Overlay::Help);
            return Vec::new();
        }
        match self.screen {
            Screen::Login => self.login_key(key),
            Screen::Main => self.main_key(key),
        }
    }

    /// Keys of the login screen.
    fn login_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let form = &mut self.login;
        match key.code {
            KeyCode::Char('r') if ctrl => form.mode = toggle(form.mode),
            KeyCode::Tab | KeyCode::Down => form.field = next_field(form.field),
            KeyCode::BackTab | KeyCode::Up => form.field = prev_field(form.field),
            KeyCode::Esc => form.notice = None,
            KeyCode::Enter => {
                if form.field == LoginField::User {
                    form.field = LoginField::Password;
                } else {
                    return self.submit_login();
                }
            }
            code => match form.field {
                LoginField::Mode => {
                    if matches!(
                        code,
                        KeyCode::Left | KeyCode::Right | KeyCode::Char(' ' | 'h' | 'l')
                    ) {
                        form.mode = toggle(form.mode);
                    }
                }
                LoginField::User => edit(&mut form.user, code, ctrl),
                LoginField::Password => edit(&mut form.password, code, ctrl),
            },
        }
        Vec::new()
    }

    /// Sends the login form.
    fn submit_login(&mut self) -> Vec<Action> {
        let form = &mut self.login;
        if form.busy {
            return Vec::new();
        }
        let user = form.user.text().trim().to_owned();
        let password = form.password.text().to_owned();
        if user.is_empty() {
            form.notice = Some(Notice::Error(match form.mode {
                LoginMode::Login => "enter your name or id".into(),
                LoginMode::Register => "enter the name you want".into(),
            }));
            form.field = LoginField::User;
            return Vec::new();
        }
        if password.is_empty() {
            form.notice = Some(Notice::Error("enter your password".into()));
            form.field = LoginField::Password;
            return Vec::new();
        }
        let request = match form.mode {
            LoginMode::Login => Request::Login {
                who: LoginBy::parse(&user),
                password: Password(password),
            },
            LoginMode::Register => {
                if user.chars().count() > MAX_NAME_CHARS || user.chars().any(char::is_control) {
                    form.notice = Some(Notice::Error(format!(
                        "a name is 1 to {MAX_NAME_CHARS} characters without control characters"
                    )));
                    return Vec::new();
                }
                Request::Register {
                    name: user,
                    password: Password(password),
                }
            }
        };
        form.busy = true;
        form.notice = Some(Notice::Info(match form.mode {
            LoginMode::Login => "logging in…".into(),
            LoginMode::Register => "registering…".into(),
        }));
        vec![Action::Send(request)]
    }

    /// Keys of the main screen.
    fn main_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Tab => {
                self.focus = self.focus.next();
                return Vec::new();
            }
            KeyCode::BackTab => {
                self.focus = self.focus.prev();
                return Vec::new();
            }
            KeyCode::PageUp => return self.page_up(),
            KeyCode::PageDown => {
                self.scroll = self.scroll.saturating_sub(SCROLL_PAGE);
                return Vec::new();
            }
            _ => {}
        }
        match self.focus {
            Pane::Conversations => match key.code {
                KeyCode::Up | KeyCode::Char('k') => self.select(-1),
                KeyCode::Down | KeyCode::Char('j') => self.select(1),
                KeyCode::Home => self.selected = 0,
                KeyCode::End => self.selected = self.conversations.len().saturating_sub(1),
                KeyCode::Enter | KeyCode::Right => {
                    if let Some(c) = self.conversations.get(self.selected) {
                        let key = c.key;
                        self.focus = Pane::Input;
                        return self.open(key);
                    }
                }
                KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
                code => self.type_into_input(code, ctrl),
            },
            Pane::Messages => match key.code {
                KeyCode::Up | KeyCode::Char('k') => return self.scroll_up(1),
                KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_sub(1),
                KeyCode::End => self.scroll = 0,
                KeyCode::Enter => self.focus = Pane::Input,
                KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
                code => self.type_into_input(code, ctrl),
            },
            Pane::Input => match key.code {
                KeyCode::Enter => return self.submit_input(),
                KeyCode::Esc => self.input.clear(),
                KeyCode::Char('?') if self.input.is_empty() => self.overlay = Some(Overlay::Help),
                code => edit(&mut self.input, code, ctrl),
            },
        }
        Vec::new()
    }

    /// A character typed outside the input line goes to it (and so does the focus), so that
    /// no typing is lost.
    fn type_into_input(&mut self, code: KeyCode, ctrl: bool) {
        if let KeyCode::Char(c) = code
            && !ctrl
        {
            self.focus = Pane::Input;
            self.input.insert(c);
        }
    }

    /// Moves the highlight in the conversation list.
    fn select(&mut self, delta: isize) {
        let n = self.conversations.len();
        if n == 0 {
            return;
        }
        self.selected = self.selected.saturating_add_signed(delta).min(n - 1);
    }

    /// PageUp: scroll back a page, loading older messages when the top is reached.
    fn page_up(&mut self) -> Vec<Action> {
        self.scroll_up(SCROLL_PAGE)
    }

    /// Scrolls back; asks for the previous page of history near the top.
    fn scroll_up(&mut self, by: usize) -> Vec<Action> {
        let Some(key) = self.open else {
            return Vec::new();
        };
        let Some(conv) = self.conversations.iter_mut().find(|c| c.key == key) else {
            return Vec::new();
        };
        let len = conv.len();
        self.scroll = (self.scroll + by).min(len.saturating_sub(1));
        let near_top = self.scroll + SCROLL_PAGE >= len;
        if near_top && conv.more_before && !conv.loading {
            conv.loading = true;
            let bound = conv.first_seq().map(HistoryBound::Before);
            return vec![Action::Send(Request::History {
                conv: key,
                bound,
                limit: Some(HISTORY_PAGE),
            })];
        }
        Vec::new()
    }

    /// Opens a conversation: loads its newest page once and marks it read.
    fn open(&mut self, key: ConvKey) -> Vec<Action> {
        let me = self.me.as_ref().map(|m| m.0);
        let i = self.ensure_conversation(key, || default_title(key, me));
        self.selected = i;
        self.open = Some(key);
        self.scroll = 0;
        let conv = &mut self.conversations[i];
        conv.unread = 0;
        let mut actions = Vec::new();
        if !conv.history_loaded && !conv.loading {
            conv.loading = true;
            actions.push(Action::Send(Request::History {
                conv: key,
                bound: None,
                limit: Some(HISTORY_PAGE),
            }));
        }
        actions.extend(self.mark_read(key));
        actions
    }

    /// A READ for the open conversation's newest message, when not sent yet.
    fn mark_read(&mut self, key: ConvKey) -> Option<Action> {
        if self.open != Some(key) {
            return None;
        }
        let conv = self.conversation_mut(key)?;
        conv.unread = 0;
        let last = conv.last_seq()?;
        if last <= conv.read_sent {
            return None;
        }
        conv.read_sent = last;
        Some(Action::Send(Request::Read {
            conv: key,
            seq: last,
        }))
    }

    /// Enter in the input line: a command, or text for the open conversation.
    fn submit_input(&mut self) -> Vec<Action> {
        let line = self.input.text().to_owned();
        if line.trim().is_empty() {
            return Vec::new();
        }
        let command = match Command::parse(&line) {
            Err(e) => {
                self.error(e.to_string());
                return Vec::new();
            }
            Ok(c) => c,
        };
        self.input.clear();
        self.notice = None;
        match command {
            None => {
                let Some(key) = self.open else {
                    self.input = LineInput::with_text(&line);
                    self.error(
                        "no conversation is open: choose one on the left and press Enter, \
                         or type chat:ID:message",
                    );
                    return Vec::new();
                };
                match commands::message(&line) {
                    Ok(text) => self.send_chat(key, text),
                    Err(e) => {
                        self.input = LineInput::with_text(&line);
                        self.error(e.to_string());
                        Vec::new()
                    }
                }
            }
            Some(Command::Help) => {
                self.overlay = Some(Overlay::Help);
                Vec::new()
            }
            Some(Command::Chat { toid, msg }) => self.send_chat(ConvKey::User(toid), msg),
            Some(Command::GroupChat { groupid, msg }) => {
                self.send_chat(ConvKey::Group(groupid), msg)
            }
            Some(other) => other.to_request().map(Action::Send).into_iter().collect(),
        }
    }

    /// Sends a chat message with a fresh txnid, showing it as pending; opens its conversation.
    fn send_chat(&mut self, key: ConvKey, text: String) -> Vec<Action> {
        self.txn_counter += 1;
        let txnid = format!("{}-{}", self.txn_prefix, self.txn_counter);
        let mut actions = Vec::new();
        if self.open != Some(key) {
            actions.extend(self.open(key));
        }
        self.scroll = 0;
        if let Some(conv) = self.conversation_mut(key) {
            conv.pending.push(PendingSend {
                txnid: txnid.clone(),
                text: text.clone(),
                error: None,
            });
        }
        let request = match key {
            ConvKey::User(toid) => Request::OneChat {
                toid,
                msg: text,
                txnid: Some(txnid),
            },
            ConvKey::Group(groupid) => Request::GroupChat {
                groupid,
                msg: text,
                txnid: Some(txnid),
            },
        };
        actions.push(Action::Send(request));
        actions
    }

    // ----- server -------------------------------------------------------------------------

    /// Handles one event from the connection.
    pub fn handle_server(&mut self, event: ConnEvent) -> Vec<Action> {
        match event {
            ConnEvent::Status(status) => {
                self.link = status;
                Vec::new()
            }
            ConnEvent::Reply { request, reply } => self.on_reply(request, reply),
            ConnEvent::Failed { request, reason } => {
                self.on_failure(&request, &reason);
                Vec::new()
            }
            ConnEvent::Chats(chats) => self.add_chats(chats, true),
            ConnEvent::Presence(p) => {
                let online = p.state == "online";
                if let Some(c) = self.conversation_mut(ConvKey::User(p.id)) {
                    c.online = Some(online);
                }
                for c in &mut self.conversations {
                    for m in c.members.iter_mut().filter(|m| m.id == p.id) {
                        m.state = p.state.clone();
                    }
                }
                Vec::new()
            }
            ConnEvent::Relogin(ack) => {
                self.info("reconnected and logged back in");
                self.logged_in(ack)
            }
            ConnEvent::LoggedOut { reason } => {
                self.reset_to_login();
                self.login.notice = Some(Notice::Error(format!("logged out: {reason}")));
                Vec::new()
            }
            ConnEvent::Resync => {
                self.info("the server asked to resynchronise: catching up");
                Vec::new()
            }
            ConnEvent::ServerError { errno, errmsg } => {
                self.error(format!("server error {errno}: {errmsg}"));
                Vec::new()
            }
        }
    }

    /// A request will get no answer.
    fn on_failure(&mut self, request: &Request, reason: &str) {
        match request {
            Request::Login { .. } | Request::Register { .. } => {
                self.login.busy = false;
                self.login.notice = Some(Notice::Error(reason.to_owned()));
            }
            Request::OneChat { .. } | Request::GroupChat { .. } => {
                self.fail_send(request, reason);
            }
            other => self.error(format!("{}: {reason}", what(other))),
        }
    }

    /// Marks a pending send as failed.
    fn fail_send(&mut self, request: &Request, reason: &str) {
        let (Some(key), Some(txnid)) = (request.chat_target(), request.txnid()) else {
            return;
        };
        let title = self.conversation(key).map(|c| c.title.clone());
        if let Some(p) = self
            .conversation_mut(key)
            .and_then(|c| c.pending.iter_mut().find(|p| p.txnid == txnid))
        {
            p.error = Some(reason.to_owned());
        }
        let to = title.unwrap_or_else(|| key.to_string());
        self.error(format!("message to {to} not sent: {reason}"));
    }

    /// The reply to one of our requests.
    fn on_reply(&mut self, request: Request, reply: ServerMessage) -> Vec<Action> {
        let (errno, errmsg) = reply.status();
        let reason = describe(errno, errmsg);
        if errno != 0 {
            match &request {
                Request::Login { .. } | Request::Register { .. } => {
                    self.login.busy = false;
                    let text = match (&request, errno) {
                        (Request::Register { name, .. }, 2) => {
                            format!("the name {name:?} is already taken")
                        }
                        _ => reason,
                    };
                    self.login.notice = Some(Notice::Error(text));
                    self.login.password.clear();
                    self.login.field = LoginField::Password;
                }
                Request::OneChat { .. } | Request::GroupChat { .. } => {
                    self.fail_send(&request, &reason);
                }
                Request::History { conv, .. } => {
                    if let Some(c) = self.conversation_mut(*conv) {
                        c.loading = false;
                    }
                    self.error(format!("{}: {reason}", what(&request)));
                }
                Request::Read { .. } => tracing::info!(errno, "READ refused: {reason}"),
                other => self.error(format!("{}: {reason}", what(other))),
            }
            return Vec::new();
        }
        match (request, reply) {
            (Request::Login { .. }, ServerMessage::LoginAck(ack)) => {
                self.notice = None;
                self.logged_in(ack)
            }
            (Request::Register { name, .. }, ServerMessage::RegAck(ack)) => {
                self.login.busy = false;
                self.login.mode = LoginMode::Login;
                self.login.user = LineInput::with_text(&name);
                self.login.field = LoginField::Password;
                self.login.notice = Some(Notice::Info(format!(
                    "registered {name} with id {}: press Enter to log in",
                    ack.id
                )));
                Vec::new()
            }
            (Request::Logout, _) => {
                self.reset_to_login();
                self.login.notice = Some(Notice::Info("logged out".into()));
                Vec::new()
            }
            (
                request @ (Request::OneChat { .. } | Request::GroupChat { .. }),
                ServerMessage::Ack(ack),
            ) => {
                self.acked_send(&request, &ack);
                Vec::new()
            }
            (Request::History { conv, bound, .. }, ServerMessage::Ack(ack)) => {
                let messages = ack.messages.unwrap_or_default();
                let more = ack.more.unwrap_or(false);
                if let Some(c) = self.conversation_mut(conv) {
                    c.loading = false;
                    match bound {
                        None => {
                            c.history_loaded = true;
                            c.more_before = more;
                        }
                        Some(HistoryBound::Before(_)) => c.more_before = more,
                        Some(HistoryBound::After(_)) => {}
                    }
                }
                let mut actions = self.add_chats(messages, false);
                actions.extend(self.mark_read(conv));
                actions
            }
            (Request::AddFriend { friendid }, ServerMessage::Ack(ack)) => {
                let user = ack.friend.unwrap_or(User {
                    id: friendid,
                    name: format!("user {friendid}"),
                    state: String::new(),
                });
                self.info(format!("{} (#{}) is now your friend", user.name, user.id));
                self.upsert_friend(&user);
                Vec::new()
            }
            (Request::DelFriend { friendid }, _) => {
                self.remove_conversation(ConvKey::User(friendid));
                self.info(format!("user #{friendid} is no longer your friend"));
                Vec::new()
            }
            (Request::CreateGroup { groupname, .. }, ServerMessage::Ack(ack)) => {
                if let Some(g) = &ack.group {
                    self.upsert_group(g);
                    self.info(format!("created group {} (#{})", g.groupname, g.id));
                } else {
                    self.info(format!("created group {groupname}"));
                }
                Vec::new()
            }
            (Request::AddGroup { groupid }, ServerMessage::Ack(ack)) => {
                match &ack.group {
                    Some(g) => {
                        self.upsert_group(g);
                        self.info(format!("joined group {} (#{})", g.groupname, g.id));
                    }
                    None => {
                        let key = ConvKey::Group(groupid);
                        self.ensure_conversation(key, || format!("group {groupid}"));
                        self.info(format!("joined group #{groupid}"));
                    }
                }
                Vec::new()
            }
            (Request::QuitGroup { groupid }, _) => {
                self.remove_conversation(ConvKey::Group(groupid));
                self.info(format!("left group #{groupid}"));
                Vec::new()
            }
            (Request::FriendList, ServerMessage::Ack(ack)) => {
                let friends = ack.friends.unwrap_or_default();
                for f in &friends {
                    self.upsert_friend(f);
                }
                let mut lines: Vec<String> = friends
                    .iter()
                    .map(|f| format!("#{:<6} {:<24} {}", f.id, f.name, state_word(&f.state)))
                    .collect();
                if lines.is_empty() {
                    lines.push("no friends yet: addfriend:ID adds one".into());
                }
                self.overlay = Some(Overlay::Info {
                    title: format!("Friends ({})", friends.len()),
                    lines,
                });
                Vec::new()
            }
            (Request::GroupList, ServerMessage::Ack(ack)) => {
                for g in ack.groups.iter().flatten() {
                    self.upsert_group(g);
                }
                Vec::new()
            }
            (Request::GroupMembers { groupid }, ServerMessage::Ack(ack)) => {
                let users = ack.users.unwrap_or_default();
                let title = self
                    .conversation(ConvKey::Group(groupid))
                    .map_or_else(|| format!("group #{groupid}"), |c| c.title.clone());
                if let Some(c) = self.conversation_mut(ConvKey::Group(groupid)) {
                    c.members = users.clone();
                }
                let lines = users
                    .iter()
                    .map(|m| {
                        format!(
                            "#{:<6} {:<24} {:<8} {}",
                            m.id,
                            m.name,
                            m.role,
                            state_word(&m.state)
                        )
                    })
                    .collect();
                self.overlay = Some(Overlay::Info {
                    title: format!("Members of {title} ({})", users.len()),
                    lines,
                });
                Vec::new()
            }
            (Request::Read { .. }, _) => Vec::new(),
            (request, reply) => {
                tracing::warn!(?request, ?reply, "unexpected reply");
                Vec::new()
            }
        }
    }

    /// A send was acked: the pending line becomes a stored message.
    fn acked_send(&mut self, request: &Request, ack: &Ack) {
        let (Some(key), Some(txnid)) = (request.chat_target(), request.txnid()) else {
            return;
        };
        let (me, my_name) = self.me.clone().unwrap_or((0, String::new()));
        let msg = match request {
            Request::OneChat { msg, .. } | Request::GroupChat { msg, .. } => msg.clone(),
            _ => return,
        };
        let is_open = self.open == Some(key);
        let Some(conv) = self.conversation_mut(key) else {
            return;
        };
        conv.pending.retain(|p| p.txnid != txnid);
        if let (Some(message_id), Some(seq)) = (ack.message_id, ack.seq) {
            let chat = Chat {
                msgid: if matches!(key, ConvKey::Group(_)) {
                    GROUP_CHAT_MSG
                } else {
                    ONE_CHAT_MSG
                },
                message_id,
                seq,
                id: me,
                name: my_name,
                toid: match key {
                    ConvKey::User(id) => Some(id),
                    ConvKey::Group(_) => None,
                },
                groupid: match key {
                    ConvKey::Group(id) => Some(id),
                    ConvKey::User(_) => None,
                },
                msg,
                time: ack.time.clone().unwrap_or_default(),
            };
            conv.messages.insert(seq, chat);
            // Our own message is read by definition.
            if is_open {
                conv.read_sent = conv.read_sent.max(seq);
            }
        }
    }

    /// A successful login (or re-login): the lists and the unread messages.
    fn logged_in(&mut self, ack: LoginAck) -> Vec<Action> {
        let first = self.screen == Screen::Login;
        self.me = Some((ack.id, ack.name.clone()));
        self.node = ack.node.clone();
        self.screen = Screen::Main;
        self.login.busy = false;
        self.login.notice = None;
        self.login.password.clear();
        for f in &ack.friends {
            self.upsert_friend(f);
        }
        for g in &ack.groups {
            self.upsert_group(g);
        }
        if first {
            self.focus = if self.focus_input_after_login {
                Pane::Input
            } else {
                Pane::Conversations
            };
            self.info("logged in · press ? for help");
        }
        self.add_chats(ack.offlinemsg, true)
    }

    /// Stores messages; those from others in conversations not open count as unread, and the
    /// open conversation is marked read.
    fn add_chats(&mut self, chats: Vec<Chat>, live: bool) -> Vec<Action> {
        let Some(me) = self.me.as_ref().map(|m| m.0) else {
            return Vec::new();
        };
        let mut touched_open = false;
        let mut announce = None;
        for chat in chats {
            let key = chat.conv_key(me);
            let title = if chat.groupid.is_some() || chat.id == me {
                default_title(key, Some(me))
            } else {
                chat.name.clone()
            };
            let i = self.ensure_conversation(key, || title);
            let is_open = self.open == Some(key);
            let conv = &mut self.conversations[i];
            let from_me = chat.id == me;
            let preview = if live && !from_me && !is_open {
                Some(match key {
                    ConvKey::Group(_) => {
                        format!("{} in {}: {}", chat.name, conv.title, preview(&chat.msg))
                    }
                    ConvKey::User(_) => format!("{}: {}", chat.name, preview(&chat.msg)),
                })
            } else {
                None
            };
            if conv.messages.insert(chat.seq, chat).is_some() {
                continue;
            }
            if is_open {
                touched_open = true;
                if live && self.scroll > 0 {
                    self.scroll += 1;
                }
            } else if let Some(p) = preview {
                conv.unread += 1;
                announce = Some(p);
            }
        }
        if let Some(text) = announce {
            self.info(format!("new message from {text}"));
        }
        match (touched_open, self.open) {
            (true, Some(key)) => self.mark_read(key).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Adds or refreshes a friend's conversation.
    fn upsert_friend(&mut self, user: &User) {
        let key = ConvKey::User(user.id);
        let i = self.ensure_conversation(key, || user.name.clone());
        let c = &mut self.conversations[i];
        c.title = user.name.clone();
        if !user.state.is_empty() {
            c.online = Some(user.online());
        }
    }

    /// Adds or refreshes a group's conversation.
    fn upsert_group(&mut self, group: &Group) {
        let key = ConvKey::Group(group.id);
        let i = self.ensure_conversation(key, || group.groupname.clone());
        let c = &mut self.conversations[i];
        c.title = group.groupname.clone();
        if !group.users.is_empty() {
            c.members = group.users.clone();
        }
    }

    /// Drops a conversation from the list.
    fn remove_conversation(&mut self, key: ConvKey) {
        self.conversations.retain(|c| c.key != key);
        if self.open == Some(key) {
            self.open = None;
            self.scroll = 0;
        }
        self.selected = self
            .selected
            .min(self.conversations.len().saturating_sub(1));
    }

    /// Back to an empty login screen (after logout), keeping the name typed.
    fn reset_to_login(&mut self) {
        let user = self.login.user.clone();
        self.login = LoginForm {
            user,
            field: LoginField::Password,
            ..LoginForm::default()
        };
        self.screen = Screen::Login;
        self.me = None;
        self.node = None;
        self.conversations.clear();
        self.selected = 0;
        self.open = None;
        self.scroll = 0;
        self.focus = Pane::Conversations;
        self.input.clear();
        self.overlay = None;
        self.notice = None;
    }
}

/// The title of a conversation nobody named yet.
fn default_title(key: ConvKey, me: Option<i64>) -> String {
    match key {
        ConvKey::User(id) if Some(id) == me => "notes to self".into(),
        ConvKey::User(id) => format!("user {id}"),
        ConvKey::Group(id) => format!("group {id}"),
    }
}

/// The start of a message, on one line, for the status line.
fn preview(text: &str) -> String {
    const MAX: usize = 40;
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > MAX {
        format!("{}…", one_line.chars().take(MAX).collect::<String>())
    } else {
        one_line
    }
}

/// `online` / `offline` as shown in lists.
fn state_word(state: &str) -> &str {
    if state.is_empty() { "?" } else { state }
}

/// What a request was for, in words, for errors.
fn what(request: &Request) -> String {
    match request {
        Request::Login { who, .. } => format!("logging in as {who}"),
        Request::Register { name, .. } => format!("registering {name}"),
        Request::Logout => "logging out".into(),
        Request::OneChat { toid, .. } => format!("message to #{toid}"),
        Request::GroupChat { groupid, .. } => format!("message to group #{groupid}"),
        Request::AddFriend { friendid } => format!("couldn't add friend #{friendid}"),
        Request::DelFriend { friendid } => format!("couldn't remove friend #{friendid}"),
        Request::CreateGroup { groupname, .. } => format!("couldn't create group {groupname}"),
        Request::AddGroup { groupid } => format!("couldn't join group #{groupid}"),
        Request::QuitGroup { groupid } => format!("couldn't leave group #{groupid}"),
        Request::FriendList => "couldn't list friends".into(),
        Request::GroupList => "couldn't list groups".into(),
        Request::GroupMembers { groupid } => format!("couldn't list members of group #{groupid}"),
        Request::History { conv, .. } => format!("couldn't load the history of {conv}"),
        Request::Read { conv, .. } => format!("couldn't mark {conv} read"),
    }
}

/// Login ↔ register.
fn toggle(mode: LoginMode) -> LoginMode {
    match mode {
        LoginMode::Login => LoginMode::Register,
        LoginMode::Register => LoginMode::Login,
    }
}

/// The next login field.
fn next_field(f: LoginField) -> LoginField {
    match f {
        LoginField::User => LoginField::Password,
        LoginField::Password => LoginField::Mode,
        LoginField::Mode => LoginField::User,
    }
}

/// The previous login field.
fn prev_field(f: LoginField) -> LoginField {
    match f {
        LoginField::User => LoginField::Mode,
        LoginField::Password => LoginField::User,
        LoginField::Mode => LoginField::Password,
    }
}

/// Applies an editing key to a line.
fn edit(line: &mut LineInput, code: KeyCode, ctrl: bool) {
    match code {
        KeyCode::Char('u') if ctrl => line.clear(),
        KeyCode::Char('a') if ctrl => line.home(),
        KeyCode::Char('e') if ctrl => line.end(),
        KeyCode::Char(_) if ctrl => {}
        KeyCode::Char(c) => line.insert(c),
        KeyCode::Backspace => line.backspace(),
        KeyCode::Delete => line.delete(),
        KeyCode::Left => line.left(),
        KeyCode::Right => line.right(),
        KeyCode::Home => line.home(),
        KeyCode::End => line.end(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Presence;
    use serde_json::json;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn typed(app: &mut App, text: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.extend(app.handle_key(key(KeyCode::Char(c))));
        }
        actions
    }

    fn chat(message_id: i64, seq: i64, from: i64, to: i64, msg: &str) -> Chat {
        serde_json::from_value(
            json!({"msgid": 6, "message_id": message_id, "seq": seq, "id": from,
            "name": if from == 1 { "alice".to_string() } else { format!("u{from}") },
            "toid": to, "msg": msg, "time": "2026-11-21T05:10:24.123Z"}),
        )
        .unwrap()
    }

    fn login_ack(offline: Vec<Chat>) -> LoginAck {
        LoginAck {
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
                groupdesc: "d".into(),
                users: vec![],
            }],
            offlinemsg: offline,
        }
    }

    fn ack(ackof: i64, extra: serde_json::Value) -> ServerMessage {
        let mut v = json!({"msgid": 11, "ackof": ackof, "errno": 0, "errmsg": ""});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ServerMessage::from_value(v).unwrap()
    }

    fn reply(request: Request, reply: ServerMessage) -> ConnEvent {
        ConnEvent::Reply { request, reply }
    }

    /// An app logged in as alice (#1) with friends bob (#2), carol (#3) and group #5.
    fn logged_in(offline: Vec<Chat>) -> App {
        let mut app = App::new("t");
        let actions = app.auto_login("alice", "pw");
        let Some(Action::Send(request)) = actions.into_iter().next() else {
            panic!()
        };
        app.handle_server(reply(request, ServerMessage::LoginAck(login_ack(offline))));
        app
    }

    fn sent(actions: &[Action]) -> Vec<serde_json::Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(r) => Some(r.to_json(None)),
                Action::Quit => None,
            })
            .collect()
    }

    #[test]
    fn the_login_form_sends_a_login_by_name_or_by_id() {
        let mut app = App::new("t");
        typed(&mut app, "alice");
        app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.login.field, LoginField::Password);
        typed(&mut app, "s3cret");
        let actions = app.handle_key(key(KeyCode::Enter));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 1, "name": "alice", "password": "s3cret"})]
        );
        assert!(app.login.busy);
        assert!(app.handle_key(key(KeyCode::Enter)).is_empty(), "busy");

        let mut app = App::new("t");
        typed(&mut app, "12");
        app.handle_key(key(KeyCode::Tab));
        typed(&mut app, "pw");
        let actions = app.handle_key(key(KeyCode::Enter));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 1, "id": 12, "password": "pw"})]
        );
    }

    #[test]
    fn the_login_form_refuses_empty_fields() {
        let mut app = App::new("t");
        app.handle_key(key(KeyCode::Tab));
        assert!(app.handle_key(key(KeyCode::Enter)).is_empty());
        assert_eq!(
            app.login.notice,
            Some(Notice::Error("enter your name or id".into()))
        );
        typed(&mut app, "bob");
        app.handle_key(key(KeyCode::Enter));
        assert!(app.handle_key(key(KeyCode::Enter)).is_empty());
        assert_eq!(
            app.login.notice,
            Some(Notice::Error("enter your password".into()))
        );
    }

    #[test]
    fn the_form_registers_and_then_offers_to_log_in() {
        let mut app = App::new("t");
        typed(&mut app, "dave");
        app.handle_key(ctrl('r'));
        assert_eq!(app.login.mode, LoginMode::Register);
        app.handle_key(key(KeyCode::Tab));
        typed(&mut app, "pw");
        let actions = app.handle_key(key(KeyCode::Enter));
        let [Action::Send(request)] = &actions[..] else {
            panic!()
        };
        assert_eq!(
            request.to_json(None),
            json!({"msgid": 4, "name": "dave", "password": "pw"})
        );
        app.handle_server(reply(
            request.clone(),
            ServerMessage::from_value(json!({"msgid": 5, "errno": 0, "errmsg": "", "id": 9}))
                .unwrap(),
        ));
        assert_eq!(app.login.mode, LoginMode::Login);
        assert!(matches!(&app.login.notice, Some(Notice::Info(t)) if t.contains("id 9")));
        assert_eq!(app.screen, Screen::Login);
    }

    #[test]
    fn a_taken_name_and_a_wrong_password_are_said_plainly() {
        let mut app = App::new("t");
        let r = Request::Register {
            name: "dave".into(),
            password: Password("pw".into()),
        };
        app.handle_server(reply(
            r,
            ServerMessage::from_value(json!({"msgid": 5, "errno": 2, "errmsg": "taken"})).unwrap(),
        ));
        assert_eq!(
            app.login.notice,
            Some(Notice::Error("the name \"dave\" is already taken".into()))
        );
        let r = Request::Login {
            who: LoginBy::Id(1),
            password: Password("x".into()),
        };
        app.handle_server(reply(
            r,
            ServerMessage::from_value(json!({"msgid": 2, "errno": 1, "errmsg": ""})).unwrap(),
        ));
        assert_eq!(
            app.login.notice,
            Some(Notice::Error("wrong id or password".into()))
        );
        assert_eq!(app.screen, Screen::Login);
    }

    #[test]
    fn logging_in_shows_friends_groups_and_unread_counts() {
        let app = logged_in(vec![chat(10, 1, 2, 1, "hi"), chat(11, 2, 2, 1, "there")]);
        assert_eq!(app.screen, Screen::Main);
        assert_eq!(app.focus, Pane::Input, "logged in from the command line");
        let titles: Vec<&str> = app.conversations.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, vec!["bob", "carol", "rustaceans"]);
        assert_eq!(app.conversations[0].unread, 2);
        assert_eq!(app.conversations[0].online, Some(true));
        assert_eq!(app.conversations[1].online, Some(false));
        assert_eq!(app.node.as_deref(), Some("node-a"));
    }

    #[test]
    fn tab_and_shift_tab_cycle_the_panes() {
        let mut app = logged_in(vec![]);
        assert_eq!(app.focus, Pane::Input);
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.focus, Pane::Conversations);
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.focus, Pane::Messages);
        app.handle_key(key(KeyCode::BackTab));
        app.handle_key(key(KeyCode::BackTab));
        assert_eq!(app.focus, Pane::Input);
    }

    #[test]
    fn arrows_and_j_k_choose_and_enter_opens_with_history_and_read() {
        let mut app = logged_in(vec![chat(10, 1, 3, 1, "hey")]);
        app.handle_key(key(KeyCode::Tab));
        app.handle_key(key(KeyCode::Char('j')));
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.selected, 2, "stops at the last");
        app.handle_key(key(KeyCode::Up));
        app.handle_key(key(KeyCode::Char('k')));
        app.handle_key(key(KeyCode::Char('j')));
        assert_eq!(app.selected, 1);
        let actions = app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.open, Some(ConvKey::User(3)));
        assert_eq!(app.focus, Pane::Input);
        assert_eq!(
            sent(&actions),
            vec![
                json!({"msgid": 17, "toid": 3, "limit": 50}),
                json!({"msgid": 18, "toid": 3, "seq": 1}),
            ]
        );
        assert_eq!(app.conversations[1].unread, 0);

        // The history page arrives: stored, and READ moves to its newest message.
        let actions = app.handle_server(reply(
            Request::History {
                conv: ConvKey::User(3),
                bound: None,
                limit: Some(50),
            },
            ack(
                17,
                json!({"more": true, "messages": [
                    serde_json::to_value(json!({"msgid":6,"message_id":8,"seq":0,"id":1,"name":"alice","toid":3,"msg":"old","time":""})).unwrap(),
                    {"msgid":6,"message_id":12,"seq":2,"id":3,"name":"carol","toid":1,"msg":"new","time":""}
                ]}),
            ),
        ));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 18, "toid": 3, "seq": 2})]
        );
        let conv = app.open_conversation().unwrap();
        assert!(conv.history_loaded && conv.more_before && !conv.loading);
        assert_eq!(conv.messages.len(), 3);
    }

    #[test]
    fn page_up_asks_for_older_messages_before_the_oldest_seq() {
        let mut app = logged_in(vec![chat(10, 7, 2, 1, "x")]);
        app.handle_key(key(KeyCode::Tab));
        app.handle_key(key(KeyCode::Enter));
        // Newest page loaded, more before it.
        app.handle_server(reply(
            Request::History {
                conv: ConvKey::User(2),
                bound: None,
                limit: Some(50),
            },
            ack(17, json!({"more": true, "messages": []})),
        ));
        let actions = app.handle_key(key(KeyCode::PageUp));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 17, "toid": 2, "before_seq": 7, "limit": 50})]
        );
        assert!(
            app.handle_key(key(KeyCode::PageUp)).is_empty(),
            "one request at a time"
        );
        app.handle_server(reply(
            Request::History {
                conv: ConvKey::User(2),
                bound: Some(HistoryBound::Before(7)),
                limit: Some(50),
            },
            ack(17, json!({"more": false, "messages": []})),
        ));
        assert!(
            app.handle_key(key(KeyCode::PageUp)).is_empty(),
            "nothing older"
        );
    }

    #[test]
    fn plain_text_goes_to_the_open_conversation_with_a_txnid() {
        let mut app = logged_in(vec![]);
        app.handle_key(key(KeyCode::Tab));
        app.handle_key(key(KeyCode::Enter));
        typed(&mut app, "hello: bob");
        let actions = app.handle_key(key(KeyCode::Enter));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 6, "toid": 2, "msg": "hello: bob", "txnid": "t-1"})]
        );
        assert!(app.input.is_empty());
        let conv = app.open_conversation().unwrap();
        assert_eq!(conv.pending[0].text, "hello: bob");

        // The ack turns the pending line into a stored message.
        let Action::Send(request) = actions[0].clone() else {
            panic!()
        };
        app.handle_server(reply(
            request,
            ack(
                6,
                json!({"message_id": 30, "seq": 4, "time": "2026-11-21T05:10:24.123Z"}),
            ),
        ));
        let conv = app.open_conversation().unwrap();
        assert!(conv.pending.is_empty());
        assert_eq!(conv.messages[&4].msg, "hello: bob");
        assert_eq!(conv.messages[&4].name, "alice");
    }

    #[test]
    fn a_refused_send_stays_visible_with_the_reason() {
        let mut app = logged_in(vec![]);
        typed(&mut app, "chat:99:anyone?");
        let actions = app.handle_key(key(KeyCode::Enter));
        let Action::Send(request) = actions.last().unwrap().clone() else {
            panic!()
        };
        app.handle_server(reply(
            request,
            ServerMessage::from_value(
                json!({"msgid": 11, "ackof": 6, "errno": 404, "errmsg": "no such user"}),
            )
            .unwrap(),
        ));
        let conv = app.conversation(ConvKey::User(99)).unwrap();
        assert_eq!(conv.pending[0].error.as_deref(), Some("no such user"));
        assert_eq!(
            app.notice,
            Some(Notice::Error(
                "message to user 99 not sent: no such user".into()
            ))
        );
    }

    #[test]
    fn plain_text_without_an_open_conversation_explains_what_to_do() {
        let mut app = logged_in(vec![]);
        typed(&mut app, "hello");
        assert!(app.handle_key(key(KeyCode::Enter)).is_empty());
        assert!(matches!(&app.notice, Some(Notice::Error(t)) if t.contains("chat:ID:message")));
        assert_eq!(app.input.text(), "hello", "the text is kept");
    }

    #[test]
    fn commands_in_the_input_line_become_requests() {
        let mut app = logged_in(vec![]);
        let cases = [
            (
                "chat:2:hi: there",
                json!({"msgid": 6, "toid": 2, "msg": "hi: there", "txnid": "t-1"}),
            ),
            ("addfriend:4", json!({"msgid": 7, "friendid": 4})),
            ("delfriend:4", json!({"msgid": 12, "friendid": 4})),
            (
                "creategroup:g:d",
                json!({"msgid": 8, "groupname": "g", "groupdesc": "d"}),
            ),
            ("addgroup:5", json!({"msgid": 9, "groupid": 5})),
            ("quitgroup:5", json!({"msgid": 13, "groupid": 5})),
            (
                "groupchat:5:yo",
                json!({"msgid": 10, "groupid": 5, "msg": "yo", "txnid": "t-2"}),
            ),
            ("showfriendlist", json!({"msgid": 14})),
            ("members:5", json!({"msgid": 16, "groupid": 5})),
            ("loginout", json!({"msgid": 3})),
        ];
        for (line, frame) in cases {
            typed(&mut app, line);
            let actions = app.handle_key(key(KeyCode::Enter));
            let frames = sent(&actions);
            assert_eq!(frames.last(), Some(&frame), "{line}");
        }
        typed(&mut app, "help");
        assert!(app.handle_key(key(KeyCode::Enter)).is_empty());
        assert_eq!(app.overlay, Some(Overlay::Help));
    }

    #[test]
    fn a_mistyped_command_keeps_the_line_and_says_the_usage() {
        let mut app = logged_in(vec![]);
        typed(&mut app, "chat:bob:hi");
        assert!(app.handle_key(key(KeyCode::Enter)).is_empty());
        assert!(
            matches!(&app.notice, Some(Notice::Error(t)) if t.contains("chat:friendid:message"))
        );
        assert_eq!(app.input.text(), "chat:bob:hi");
    }

    #[test]
    fn question_mark_opens_help_and_any_key_closes_it() {
        let mut app = logged_in(vec![]);
        app.handle_key(key(KeyCode::Char('?')));
        assert_eq!(app.overlay, Some(Overlay::Help));
        app.handle_key(key(KeyCode::Char('x')));
        assert_eq!(app.overlay, None);
        assert!(app.input.is_empty(), "the closing key is not typed");
        typed(&mut app, "why?");
        assert_eq!(app.input.text(), "why?", "? is typed inside text");
        assert_eq!(app.overlay, None);
    }

    #[test]
    fn typing_outside_the_input_line_goes_to_it() {
        let mut app = logged_in(vec![]);
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.focus, Pane::Conversations);
        typed(&mut app, "hi");
        assert_eq!(app.focus, Pane::Input);
        assert_eq!(app.input.text(), "hi");
    }

    #[test]
    fn ctrl_c_quits_from_anywhere() {
        let mut app = App::new("t");
        assert_eq!(app.handle_key(ctrl('c')), vec![Action::Quit]);
        assert!(app.should_quit());
        let mut app = logged_in(vec![]);
        app.overlay = Some(Overlay::Help);
        assert_eq!(app.handle_key(ctrl('c')), vec![Action::Quit]);
    }

    #[test]
    fn live_messages_count_as_unread_unless_their_conversation_is_open() {
        let mut app = logged_in(vec![]);
        app.handle_key(key(KeyCode::Tab));
        app.handle_key(key(KeyCode::Enter)); // open bob
        let actions = app.handle_server(ConnEvent::Chats(vec![
            chat(1, 1, 2, 1, "to open"),
            chat(2, 1, 3, 1, "to carol's"),
        ]));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 18, "toid": 2, "seq": 1})]
        );
        assert_eq!(app.conversation(ConvKey::User(2)).unwrap().unread, 0);
        assert_eq!(app.conversation(ConvKey::User(3)).unwrap().unread, 1);
        assert_eq!(
            app.notice,
            Some(Notice::Info("new message from u3: to carol's".into()))
        );
        // The same message again changes nothing.
        app.handle_server(ConnEvent::Chats(vec![chat(2, 1, 3, 1, "to carol's")]));
        assert_eq!(app.conversation(ConvKey::User(3)).unwrap().unread, 1);
        // A stranger's message makes a new conversation named after them.
        app.handle_server(ConnEvent::Chats(vec![chat(3, 1, 7, 1, "hi stranger")]));
        assert_eq!(app.conversation(ConvKey::User(7)).unwrap().title, "u7");
    }

    #[test]
    fn presence_updates_the_friend_state() {
        let mut app = logged_in(vec![]);
        app.handle_server(ConnEvent::Presence(Presence {
            id: 3,
            name: Some("carol".into()),
            state: "online".into(),
        }));
        assert_eq!(
            app.conversation(ConvKey::User(3)).unwrap().online,
            Some(true)
        );
    }

    #[test]
    fn friend_and_group_replies_update_the_list() {
        let mut app = logged_in(vec![]);
        app.handle_server(reply(
            Request::AddFriend { friendid: 4 },
            ack(
                7,
                json!({"friend": {"id": 4, "name": "dan", "state": "offline"}}),
            ),
        ));
        assert_eq!(app.conversation(ConvKey::User(4)).unwrap().title, "dan");
        app.handle_server(reply(
            Request::CreateGroup {
                groupname: "g".into(),
                groupdesc: "".into(),
            },
            ack(
                8,
                json!({"group": {"id": 6, "groupname": "g", "groupdesc": "", "users": []}}),
            ),
        ));
        assert!(app.conversation(ConvKey::Group(6)).is_some());
        app.handle_server(reply(Request::QuitGroup { groupid: 6 }, ack(13, json!({}))));
        assert!(app.conversation(ConvKey::Group(6)).is_none());
        app.handle_server(reply(
            Request::DelFriend { friendid: 4 },
            ack(12, json!({})),
        ));
        assert!(app.conversation(ConvKey::User(4)).is_none());
        app.handle_server(reply(
            Request::AddFriend { friendid: 8 },
            ServerMessage::from_value(
                json!({"msgid": 11, "ackof": 7, "errno": 404, "errmsg": "no such user"}),
            )
            .unwrap(),
        ));
        assert_eq!(
            app.notice,
            Some(Notice::Error("couldn't add friend #8: no such user".into()))
        );
    }

    #[test]
    fn friend_list_and_members_open_an_info_popup() {
        let mut app = logged_in(vec![]);
        app.handle_server(reply(
            Request::FriendList,
            ack(
                14,
                json!({"friends": [{"id": 2, "name": "bob", "state": "offline"}]}),
            ),
        ));
        let Some(Overlay::Info { title, lines }) = &app.overlay else {
            panic!()
        };
        assert_eq!(title, "Friends (1)");
        assert!(lines[0].contains("bob") && lines[0].contains("offline"));
        assert_eq!(
            app.conversation(ConvKey::User(2)).unwrap().online,
            Some(false)
        );
        app.handle_server(reply(
            Request::GroupMembers { groupid: 5 },
            ack(16, json!({"users": [{"id": 1, "name": "alice", "state": "online", "role": "creator"}]})),
        ));
        let Some(Overlay::Info { title, lines }) = &app.overlay else {
            panic!()
        };
        assert_eq!(title, "Members of rustaceans (1)");
        assert!(lines[0].contains("creator"));
    }

    #[test]
    fn logout_returns_to_the_login_screen_keeping_the_name() {
        let mut app = logged_in(vec![]);
        app.handle_server(reply(Request::Logout, ack(3, json!({}))));
        assert_eq!(app.screen, Screen::Login);
        assert!(app.conversations.is_empty());
        assert_eq!(app.login.user.text(), "alice");
        assert!(app.login.password.is_empty());
    }

    #[test]
    fn a_refused_re_login_returns_to_the_login_screen_with_the_reason() {
        let mut app = logged_in(vec![]);
        app.handle_server(ConnEvent::LoggedOut {
            reason: "wrong id or password".into(),
        });
        assert_eq!(app.screen, Screen::Login);
        assert_eq!(
            app.login.notice,
            Some(Notice::Error("logged out: wrong id or password".into()))
        );
    }

    #[test]
    fn a_relogin_keeps_the_open_conversation_and_adds_missed_messages() {
        let mut app = logged_in(vec![]);
        app.handle_key(key(KeyCode::Tab));
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Enter)); // carol
        let actions = app.handle_server(ConnEvent::Relogin(login_ack(vec![chat(
            40, 3, 3, 1, "missed",
        )])));
        assert_eq!(app.open, Some(ConvKey::User(3)));
        assert_eq!(
            sent(&actions),
            vec![json!({"msgid": 18, "toid": 3, "seq": 3})]
        );
        assert!(matches!(&app.notice, Some(Notice::Info(t)) if t.contains("reconnected")));
    }

    #[test]
    fn a_send_lost_with_the_link_is_marked_failed() {
        let mut app = logged_in(vec![]);
        typed(&mut app, "chat:2:x");
        let actions = app.handle_key(key(KeyCode::Enter));
        let Action::Send(request) = actions.last().unwrap().clone() else {
            panic!()
        };
        app.handle_server(ConnEvent::Failed {
            request,
            reason: "gone".into(),
        });
        assert_eq!(
            app.conversation(ConvKey::User(2)).unwrap().pending[0]
                .error
                .as_deref(),
            Some("gone")
        );
    }
}
