//! End to end: the real `chat-tui` binary, in tmux (a real terminal), against the real
//! `chat-server` started in-process on port 0 with a fresh SQLite file, and a protocol client
//! (tokio-tungstenite) on the other side of the conversation.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use common::{PASSWORD, PASSWORD_VAR, Proto, TIMEOUT, TestServer, unique};

/// The path of the binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_chat-tui");

/// A tmux server of its own running one program; killed (and its socket removed) on drop.
struct Tmux {
    /// The `-L` socket name.
    socket: String,
    /// The socket file, removed on drop.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a 120×40 detached session.
    async fn start(command: &str, env: &[(&str, &str)]) -> Tmux {
        let socket = unique("chat-tui-e2e-");
        let mut cmd = Command::new("tmux");
        cmd.args([
            "-L",
            &socket,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
        ]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.arg(command);
        let out = cmd.output().await.expect("tmux runs (is it installed?)");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tmux = Tmux {
            socket,
            socket_path: None,
        };
        let out = tmux
            .tmux(&["display-message", "-p", "#{socket_path}"])
            .await;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !path.is_empty() {
            tmux.socket_path = Some(PathBuf::from(path));
        }
        tmux
    }

    async fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .await
            .expect("tmux runs")
    }

    /// The visible screen as text.
    async fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p"]).await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Presses keys by tmux name (`Enter`, `Tab`, `C-c`).
    async fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).await.status.success());
    }

    /// Types text literally.
    async fn type_text(&self, text: &str) {
        assert!(self.tmux(&["send-keys", "-l", text]).await.status.success());
    }

    /// Polls the screen until every needle shows; returns that screen.
    async fn wait_for(&self, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen().await;
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "the screen never showed {needles:?}; it shows:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads a file until it holds something, for the exit code the wrapper shell writes.
async fn wait_for_file(path: &PathBuf) -> String {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_owned();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `chat-tui` without a terminal and returns its output.
async fn run_cli(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove(PASSWORD_VAR);
    if let Some(p) = password {
        cmd.env(PASSWORD_VAR, p);
    }
    tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .expect("chat-tui --send finishes")
        .expect("chat-tui runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_shows_a_received_message_and_answers_with_the_chat_command() {
    let server = TestServer::start().await;
    let alice_name = "alice";
    let mut bob = Proto::connect(&server.url).await;
    let bob_id = bob.register_and_login("bob").await;
    let mut alice_setup = Proto::connect(&server.url).await;
    let alice_id = alice_setup.register_and_login(alice_name).await;
    let reply = alice_setup
        .request(json!({"msgid": 7, "friendid": bob_id}))
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
    drop(alice_setup);

    let dir = std::env::temp_dir().join(unique("chat-tui-e2e-dir-"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("chat-tui.log");
    let exit_file = dir.join("exit");
    let command = format!(
        "{BIN} --url {} --user {alice_name} --password-env {PASSWORD_VAR} --log-file {} --log debug; echo $? > {}",
        server.url,
        log.display(),
        exit_file.display()
    );
    let tmux = Tmux::start(&command, &[(PASSWORD_VAR, PASSWORD)]).await;

    // Logged in without the form: the main screen with the friend listed.
    let me = format!("{alice_name} (#{alice_id})");
    tmux.wait_for(&["Conversations", "connected to node-e2e", &me, "bob"])
        .await;

    // Bob writes; the TUI shows it as unread and announces it.
    let ack = bob
        .request(json!({"msgid": 6, "toid": alice_id, "msg": "hello alice: from bob"}))
        .await;
    assert_eq!(ack["errno"], 0, "{ack}");
    tmux.wait_for(&["(1)", "new message from bob"]).await;

    // The input line has the focus: Tab to the list, Enter opens the conversation.
    tmux.keys(&["Tab", "Enter"]).await;
    tmux.wait_for(&["bob: hello alice: from bob", "Message to bob", "● bob"])
        .await;

    // Answer with the original client's command (the text keeps its colon).
    tmux.type_text(&format!("chat:{bob_id}:hi bob: got it"))
        .await;
    tmux.keys(&["Enter"]).await;
    let push = bob
        .push_where(|f| f["msgid"] == 6 && f["msg"] == "hi bob: got it")
        .await;
    assert_eq!(push["id"], alice_id);
    assert_eq!(push["toid"], bob_id);
    assert!(
        push["message_id"].is_i64() && push["seq"].is_i64(),
        "{push}"
    );
    let screen = tmux.wait_for(&["hi bob: got it"]).await;
    assert!(!screen.contains("not sent"), "{screen}");

    // Help opens on `?` with an empty input line, any key closes it.
    tmux.keys(&["?"]).await;
    tmux.wait_for(&["Help", "creategroup:groupname:groupdesc"])
        .await;
    tmux.keys(&["Escape"]).await;

    // Ctrl+C quits cleanly (exit status 0 written by the wrapper shell).
    tmux.keys(&["C-c"]).await;
    assert_eq!(wait_for_file(&exit_file).await, "0");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains("connected"), "the log file is written");
    assert!(!log_text.contains(PASSWORD), "the password is never logged");
    drop(tmux);
    let _ = std::fs::remove_dir_all(&dir);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_mode_exits_zero_when_acked_and_non_zero_with_a_reason_otherwise() {
    let server = TestServer::start().await;
    let alice_name = "alice".to_owned();
    let mut bob = Proto::connect(&server.url).await;
    let bob_id = bob.register_and_login("bob").await;
    let mut alice = Proto::connect(&server.url).await;
    let alice_id = alice.register_and_login(&alice_name).await;
    drop(alice);
    let dir = std::env::temp_dir().join(unique("chat-tui-e2e-dir-"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("send.log");
    let log = log.to_str().unwrap();
    let url = server.url.clone();
    let url = url.as_str();

    // Acked: exit 0, a receipt on stdout, and bob gets the push.
    let spec = format!("{bob_id}:scripted: hello");
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_name,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            &spec,
            "--log-file",
            log,
        ],
        Some(PASSWORD),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("sent to #{bob_id}")));
    let push = bob
        .push_where(|f| f["msgid"] == 6 && f["msg"] == "scripted: hello")
        .await;
    assert_eq!(push["id"], alice_id);

    // By numeric id works too.
    let alice_id_text = alice_id.to_string();
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_id_text,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            &format!("{bob_id}:by id"),
            "--log-file",
            log,
        ],
        Some(PASSWORD),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));

    // Wrong password: exit 1 and the reason.
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_name,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            &spec,
            "--log-file",
            log,
        ],
        Some("wrong"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("login refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown recipient: exit 1 with the server's errno.
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_name,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            "999999999:anyone?",
            "--log-file",
            log,
        ],
        Some(PASSWORD),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("errno 404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The password variable unset: exit 2 and what is missing.
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_name,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            &spec,
            "--log-file",
            log,
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(PASSWORD_VAR));

    // A malformed TOID:TEXT: exit 2 (usage).
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_name,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            "bob:hi",
            "--log-file",
            log,
        ],
        Some(PASSWORD),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));

    // Nobody listening: exit 3 after the timeout, saying why.
    server.stop().await;
    let out = run_cli(
        &[
            "--url",
            url,
            "--user",
            &alice_name,
            "--password-env",
            PASSWORD_VAR,
            "--send",
            &spec,
            "--timeout",
            "2",
            "--log-file",
            log,
        ],
        Some(PASSWORD),
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
