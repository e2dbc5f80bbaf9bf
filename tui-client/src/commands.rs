//! The original client's commands typed in the input line (`chat:friendid:message`, ...),
//! parsed into a typed [`Command`] and turned into protocol requests.
//!
//! Fields are separated by `:`; the last field keeps everything after its colon, so a message
//! may contain colons (`chat:2:see you at 10:30` sends `see you at 10:30`).

use crate::protocol::{MAX_GROUPDESC_CHARS, MAX_MSG_CHARS, MAX_NAME_CHARS, Request};

/// One of the original client's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`: show the help.
    Help,
    /// `chat:friendid:message`: send a 1:1 message.
    Chat {
        /// Recipient.
        toid: i64,
        /// Text.
        msg: String,
    },
    /// `addfriend:friendid`.
    AddFriend {
        /// The user to befriend.
        friendid: i64,
    },
    /// `delfriend:friendid`.
    DelFriend {
        /// The friend to drop.
        friendid: i64,
    },
    /// `creategroup:groupname:groupdesc` (the description may be empty or absent).
    CreateGroup {
        /// Group name.
        groupname: String,
        /// Group description.
        groupdesc: String,
    },
    /// `addgroup:groupid`.
    AddGroup {
        /// The group to join.
        groupid: i64,
    },
    /// `quitgroup:groupid`.
    QuitGroup {
        /// The group to leave.
        groupid: i64,
    },
    /// `groupchat:groupid:message`.
    GroupChat {
        /// The group.
        groupid: i64,
        /// Text.
        msg: String,
    },
    /// `showfriendlist`.
    ShowFriendList,
    /// `members:groupid`.
    Members {
        /// The group.
        groupid: i64,
    },
    /// `loginout`: log out and return to the login screen.
    Loginout,
}

/// Why a command line was refused; each message says how to type it right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A field is missing.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// An id field is not a number.
    #[error("{field} must be a number, not {value:?} (usage: {usage})")]
    NotANumber {
        /// Which field.
        field: &'static str,
        /// What was typed.
        value: String,
        /// The command's usage line.
        usage: &'static str,
    },
    /// A message with no text.
    #[error("the message is empty")]
    EmptyMessage,
    /// A text longer than the server accepts.
    #[error("{field} is too long: {len} characters, at most {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in code points.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The usage line of every command, for errors and the help screen.
pub const USAGE: &[(&str, &str)] = &[
    ("help", "show this help"),
    ("chat:friendid:message", "send a message to a user"),
    ("addfriend:friendid", "add a friend"),
    ("delfriend:friendid", "remove a friend"),
    ("creategroup:groupname:groupdesc", "create a group"),
    ("addgroup:groupid", "join a group"),
    ("quitgroup:groupid", "leave a group"),
    ("groupchat:groupid:message", "send a message to a group"),
    ("showfriendlist", "list your friends"),
    ("members:groupid", "list a group's members"),
    ("loginout", "log out"),
];

impl Command {
    /// Parses an input line: `Ok(None)` when it is not a command (plain text to send to the
    /// open conversation), `Err` when it is a command typed wrong.
    pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
        let line = line.trim_start();
        let (keyword, rest) = match line.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (line.trim_end(), None),
        };
        let cmd = match keyword {
            "help" => Command::Help,
            "showfriendlist" => Command::ShowFriendList,
            "loginout" => Command::Loginout,
            "chat" => {
                let usage = "chat:friendid:message";
                let (id, msg) = two_fields(rest, usage)?;
                Command::Chat {
                    toid: number(id, "friendid", usage)?,
                    msg: message(msg)?,
                }
            }
            "groupchat" => {
                let usage = "groupchat:groupid:message";
                let (id, msg) = two_fields(rest, usage)?;
                Command::GroupChat {
                    groupid: number(id, "groupid", usage)?,
                    msg: message(msg)?,
                }
            }
            "addfriend" => Command::AddFriend {
                friendid: one_number(rest, "friendid", "addfriend:friendid")?,
            },
            "delfriend" => Command::DelFriend {
                friendid: one_number(rest, "friendid", "delfriend:friendid")?,
            },
            "addgroup" => Command::AddGroup {
                groupid: one_number(rest, "groupid", "addgroup:groupid")?,
            },
            "quitgroup" => Command::QuitGroup {
                groupid: one_number(rest, "groupid", "quitgroup:groupid")?,
            },
            "members" => Command::Members {
                groupid: one_number(rest, "groupid", "members:groupid")?,
            },
            "creategroup" => {
                let usage = "creategroup:groupname:groupdesc";
                let rest = rest.ok_or(CommandError::Usage(usage))?;
                let (name, desc) = rest.split_once(':').unwrap_or((rest, ""));
                let name = name.trim();
                if name.is_empty() {
                    return Err(CommandError::Usage(usage));
                }
                check_len("groupname", name, MAX_NAME_CHARS)?;
                check_len("groupdesc", desc, MAX_GROUPDESC_CHARS)?;
                Command::CreateGroup {
                    groupname: name.to_owned(),
                    groupdesc: desc.to_owned(),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(cmd))
    }

    /// The request this command sends (`None` for `help`, which is local). Chat sends get
    /// no txnid here: the caller adds one.
    pub fn to_request(&self) -> Option<Request> {
        Some(match self {
            Command::Help => return None,
            Command::Chat { toid, msg } => Request::OneChat {
                toid: *toid,
                msg: msg.clone(),
                txnid: None,
            },
            Command::AddFriend { friendid } => Request::AddFriend {
                friendid: *friendid,
            },
            Command::DelFriend { friendid } => Request::DelFriend {
                friendid: *friendid,
            },
            Command::CreateGroup {
                groupname,
                groupdesc,
            } => Request::CreateGroup {
                groupname: groupname.clone(),
                groupdesc: groupdesc.clone(),
            },
            Command::AddGroup { groupid } => Request::AddGroup { groupid: *groupid },
            Command::QuitGroup { groupid } => Request::QuitGroup { groupid: *groupid },
            Command::GroupChat { groupid, msg } => Request::GroupChat {
                groupid: *groupid,
                msg: msg.clone(),
                txnid: None,
            },
            Command::ShowFriendList => Request::FriendList,
            Command::Members { groupid } => Request::GroupMembers { groupid: *groupid },
            Command::Loginout => Request::Logout,
        })
    }
}

/// Checks a chat text: not empty, not over the server's limit.
pub fn message(text: &str) -> Result<String, CommandError> {
    if text.trim().is_empty() {
        return Err(CommandError::EmptyMessage);
    }
    check_len("the message", text, MAX_MSG_CHARS)?;
    Ok(text.to_owned())
}

/// Splits `id:text` (the text keeps any further colons).
fn two_fields<'a>(
    rest: Option<&'a str>,
    usage: &'static str,
) -> Result<(&'a str, &'a str), CommandError> {
    rest.and_then(|r| r.split_once(':'))
        .ok_or(CommandError::Usage(usage))
}

/// Reads the single numeric field of `keyword:id`.
fn one_number(
    rest: Option<&str>,
    field: &'static str,
    usage: &'static str,
) -> Result<i64, CommandError> {
    let rest = rest.ok_or(CommandError::Usage(usage))?;
    number(rest, field, usage)
}

/// Reads an id field.
fn number(text: &str, field: &'static str, usage: &'static str) -> Result<i64, CommandError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(CommandError::Usage(usage));
    }
    t.parse().map_err(|_| CommandError::NotANumber {
        field,
        value: t.to_owned(),
        usage,
    })
}

/// Refuses a text over `max` code points.
fn check_len(field: &'static str, text: &str, max: usize) -> Result<(), CommandError> {
    let len = text.chars().count();
    if len > max {
        Err(CommandError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses a command line and returns the JSON its request sends (reqid 1).
    fn frame(line: &str) -> serde_json::Value {
        Command::parse(line)
            .unwrap()
            .unwrap()
            .to_request()
            .unwrap()
            .to_json(Some(1))
    }

    #[test]
    fn help_is_a_local_command_without_a_request() {
        assert_eq!(Command::parse("help"), Ok(Some(Command::Help)));
        assert_eq!(Command::Help.to_request(), None);
    }

    #[test]
    fn chat_sends_a_one_to_one_message() {
        assert_eq!(
            frame("chat:2:hello"),
            json!({"msgid": 6, "reqid": 1, "toid": 2, "msg": "hello"})
        );
    }

    #[test]
    fn a_message_keeps_everything_after_the_second_colon() {
        assert_eq!(
            frame("chat:2:meet at 10:30: ok?"),
            json!({"msgid": 6, "reqid": 1, "toid": 2, "msg": "meet at 10:30: ok?"})
        );
        assert_eq!(
            frame("groupchat:5:a:b:c"),
            json!({"msgid": 10, "reqid": 1, "groupid": 5, "msg": "a:b:c"})
        );
    }

    #[test]
    fn addfriend_and_delfriend_name_the_friend() {
        assert_eq!(
            frame("addfriend:3"),
            json!({"msgid": 7, "reqid": 1, "friendid": 3})
        );
        assert_eq!(
            frame("delfriend:3"),
            json!({"msgid": 12, "reqid": 1, "friendid": 3})
        );
    }

    #[test]
    fn creategroup_sends_name_and_description() {
        assert_eq!(
            frame("creategroup:rust:all about: rust"),
            json!({"msgid": 8, "reqid": 1, "groupname": "rust", "groupdesc": "all about: rust"})
        );
        assert_eq!(
            frame("creategroup:rust"),
            json!({"msgid": 8, "reqid": 1, "groupname": "rust", "groupdesc": ""})
        );
    }

    #[test]
    fn group_commands_name_the_group() {
        assert_eq!(
            frame("addgroup:4"),
            json!({"msgid": 9, "reqid": 1, "groupid": 4})
        );
        assert_eq!(
            frame("quitgroup:4"),
            json!({"msgid": 13, "reqid": 1, "groupid": 4})
        );
        assert_eq!(
            frame("groupchat:4:hi all"),
            json!({"msgid": 10, "reqid": 1, "groupid": 4, "msg": "hi all"})
        );
        assert_eq!(
            frame("members:4"),
            json!({"msgid": 16, "reqid": 1, "groupid": 4})
        );
    }

    #[test]
    fn showfriendlist_and_loginout_have_no_fields() {
        assert_eq!(frame("showfriendlist"), json!({"msgid": 14, "reqid": 1}));
        assert_eq!(frame("loginout"), json!({"msgid": 3, "reqid": 1}));
    }

    #[test]
    fn plain_text_is_not_a_command() {
        assert_eq!(Command::parse("hello there"), Ok(None));
        assert_eq!(Command::parse("note: this is text"), Ok(None));
        assert_eq!(Command::parse("Help"), Ok(None));
    }

    #[test]
    fn mistyped_commands_say_how_to_type_them() {
        assert_eq!(
            Command::parse("chat:2"),
            Err(CommandError::Usage("chat:friendid:message"))
        );
        assert_eq!(
            Command::parse("addfriend"),
            Err(CommandError::Usage("addfriend:friendid"))
        );
        assert!(matches!(
            Command::parse("chat:bob:hi"),
            Err(CommandError::NotANumber {
                field: "friendid",
                ..
            })
        ));
        assert_eq!(
            Command::parse("chat:2:   "),
            Err(CommandError::EmptyMessage)
        );
        let long = format!("chat:2:{}", "é".repeat(MAX_MSG_CHARS + 1));
        assert!(matches!(
            Command::parse(&long),
            Err(CommandError::TooLong { .. })
        ));
        let ok = format!("chat:2:{}", "é".repeat(MAX_MSG_CHARS));
        assert!(Command::parse(&ok).unwrap().is_some());
        assert_eq!(
            Command::parse("creategroup::desc"),
            Err(CommandError::Usage("creategroup:groupname:groupdesc"))
        );
    }

    #[test]
    fn every_command_in_the_usage_table_parses() {
        for (usage, _) in USAGE {
            let line = usage
                .replace("friendid", "1")
                .replace("groupid", "2")
                .replace("groupname", "g")
                .replace("groupdesc", "d")
                .replace("message", "m");
            assert!(
                matches!(Command::parse(&line), Ok(Some(_))),
                "{line} did not parse"
            );
        }
    }
}
