//! Helpers shared by the integration tests: the real server in-process on port 0 with its own
//! SQLite file, and a protocol client that matches replies by reqid and keeps pushes.
//!
//! Timeouts exist only so that a broken build fails instead of hanging: they are generous
//! (argon2 in a debug build on two busy cores takes seconds) and measure nothing.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_server::{Application, Config, ShutdownHandle};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for a reply, a push, or a screen change.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable the tests hand the password in.
pub const PASSWORD_VAR: &str = "CHAT_TUI_TEST_PASSWORD";
/// The password of every test user.
pub const PASSWORD: &str = "correct horse";
/// A name unique to this process and call (tmux sockets, database files, user names).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The real server on port 0 with its own SQLite file; stopped and removed on drop.
pub struct TestServer {
    /// `ws://127.0.0.1:PORT/ws`.
    pub url: String,
    /// The port.
    pub port: u16,
    /// Stops the server.
    shutdown: ShutdownHandle,
    /// The server task.
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The database file.
    db: PathBuf,
    /// Whether dropping this server removes the database file.
    owns_db: bool,
}

impl TestServer {
    /// A server on a fresh database and a free port.
    pub async fn start() -> TestServer {
        let db = std::env::temp_dir().join(format!("{}.db", unique("chat-tui-e2e-")));
        TestServer::start_at(db, 0).await
    }

    /// A server on an existing database file and a given port (0: any).
    pub async fn start_at(db: PathBuf, port: u16) -> TestServer {
        let mut config = Config::for_database(format!("sqlite://{}?mode=rwc", db.display()));
        config.listen.set_port(port);
        config.node_id = Some("node-e2e".into());
        config.redis_url = None;
        let app = Application::build(config).await.expect("the server starts");
        let port = app.port();
        let url = format!("ws://127.0.0.1:{port}/ws");
        let shutdown = app.shutdown_handle();
        let task = tokio::spawn(app.run_until_stopped());
        TestServer {
            url,
            port,
            shutdown,
            task: Some(task),
            db,
            owns_db: true,
        }
    }

    /// Stops the server and waits for it (the database file is removed).
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// Stops the server and hands back its database file and port, to start another on them.
    pub async fn stop_keeping_db(mut self) -> (PathBuf, u16) {
        self.halt().await;
        self.owns_db = false;
        (self.db.clone(), self.port)
    }

    /// Triggers the shutdown and waits for the server task.
    async fn halt(&mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if !self.owns_db {
            return;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A protocol client: replies are matched by reqid, everything else is kept as pushes.
pub struct Proto {
    /// The socket.
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames that answered no request, in arrival order.
    pub pushes: VecDeque<Value>,
    /// The next reqid.
    next_reqid: i64,
}

impl Proto {
    pub async fn connect(url: &str) -> Proto {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the protocol client connects");
        Proto {
            ws,
            pushes: VecDeque::new(),
            next_reqid: 1,
        }
    }

    /// The next frame as JSON.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("the server answers in time")
                .expect("the socket stays open")
                .expect("the socket reads");
            if let Message::Text(text) = frame {
                return serde_json::from_str(text.as_str()).expect("the server sends JSON");
            }
        }
    }

    /// Sends a request (a reqid is added) and returns its reply.
    pub async fn request(&mut self, mut body: Value) -> Value {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        body["reqid"] = json!(reqid);
        self.ws
            .send(Message::Text(body.to_string().into()))
            .await
            .expect("the request is sent");
        loop {
            let frame = self.next_frame().await;
            if frame["reqid"] == json!(reqid) {
                return frame;
            }
            self.pushes.push_back(frame);
        }
    }

    /// Registers and logs in; returns the user id.
    pub async fn register_and_login(&mut self, name: &str) -> i64 {
        let reply = self
            .request(json!({"msgid": 4, "name": name, "password": PASSWORD}))
            .await;
        assert_eq!(reply["errno"], 0, "register {name}: {reply}");
        let id = reply["id"].as_i64().unwrap();
        self.login(id).await;
        id
    }

    /// Logs in by id; returns the login reply.
    pub async fn login(&mut self, id: i64) -> Value {
        let reply = self
            .request(json!({"msgid": 1, "id": id, "password": PASSWORD}))
            .await;
        assert_eq!(reply["errno"], 0, "login {id}: {reply}");
        reply
    }

    /// Waits for a push that satisfies `wanted`.
    pub async fn push_where(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pushes.iter().position(&wanted) {
            return self.pushes.remove(i).unwrap();
        }
        loop {
            let frame = self.next_frame().await;
            if wanted(&frame) {
                return frame;
            }
            self.pushes.push_back(frame);
        }
    }
}
