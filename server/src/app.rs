//! [`Application`]: connects the database, builds the bus, presence and chat pipeline, binds the
//! listener, and runs until shut down. [`AppState`] is what every handler shares.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::hub::{ConnId, Hub};
use crate::limits::{LoginThrottle, UserBuckets};
use crate::presence::Presence;
use crate::store::{SqliteTuning, Store};
use crate::{http, legacy, telemetry};

/// Shared state of one replica, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds.
pub struct Shared {
    /// The configuration it was started with.
    pub config: Config,
    /// This replica's name (`node` in the login reply).
    pub node: Arc<str>,
    /// The database.
    pub store: Store,
    /// Live connections of this replica.
    pub hub: Arc<Hub>,
    /// Cross-replica (or in-process) delivery.
    pub bus: Bus,
    /// Who is online.
    pub presence: Presence,
    /// The chat pipeline (group commit, then publish).
    pub delivery: Delivery,
    /// Flips to `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Open WebSocket connections.
    pub connections: ConnectionCount,
    /// Request rate of each user on this replica.
    pub user_rate: UserBuckets,
    /// Failed logins per account, attempts per address.
    pub login_throttle: LoginThrottle,
    /// Source of connection ids.
    next_conn: AtomicU64,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counts open connections, so that shutdown can wait for them to close.
#[derive(Default)]
pub struct ConnectionCount {
    open: AtomicUsize,
    closed: Notify,
}

/// Decrements the count when dropped.
pub struct ConnectionGuard<'a>(&'a ConnectionCount);

impl ConnectionCount {
    /// Registers an open connection for as long as the guard lives.
    pub fn enter(&self) -> ConnectionGuard<'_> {
        self.open.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("chat_ws_connections").increment(1.0);
        ConnectionGuard(self)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("chat_ws_connections").decrement(1.0);
        self.0.closed.notify_waiters();
    }
}

/// Triggers a graceful shutdown of an [`Application`].
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Stops accepting, closes sockets with 1001, flushes pending writes.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// A built replica, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    /// The original protocol's TCP listener (`--legacy-listen`), when configured.
    legacy: Option<TcpListener>,
    state: AppState,
    shutdown: ShutdownHandle,
    writer: JoinHandle<()>,
}

impl Application {
    /// Connects and migrates the database, starts the pipeline, binds `config.listen`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        telemetry::install_metrics();
        let sqlite = SqliteTuning {
            fsync_every_commit: config.sqlite_sync == "full",
            thread_nice: config.sqlite_thread_nice,
        };
        let store = Store::connect(&config.database_url, config.db_pool, sqlite)
            .await
            .with_context(|| {
                format!(
                    "connecting to the database {}",
                    redact(&config.database_url)
                )
            })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let legacy = config
            .legacy_listen
            .map(|addr| legacy::bind(addr).with_context(|| format!("binding legacy {addr}")))
            .transpose()?;
        let port = listener.local_addr()?.port();
        let node: Arc<str> = config.resolve_node_id(port).into();
        let hub = Arc::new(Hub::default());
        let bus = match &config.redis_url {
            None => Bus::local(hub.clone(), node.clone()),
            Some(url) => Bus::redis(url, hub.clone(), node.clone())
                .await
                .with_context(|| format!("connecting to Redis {}", redact(url)))?,
        };
        let presence = Presence::start(
            hub.clone(),
            store.clone(),
            bus.clone(),
            node.clone(),
            Duration::from_millis(config.presence_grace_ms),
        )
        .await?;
        let (delivery, writer) = Delivery::start(
            store.clone(),
            bus.clone(),
            node.clone(),
            config.write_batch,
            Duration::from_millis(config.write_linger_ms),
        );
        let (tx, rx) = watch::channel(false);
        let user_rate = UserBuckets::new(config.rate_per_user);
        let login_throttle = LoginThrottle::new(
            config.login_failures_per_account,
            config.login_attempts_per_address,
        );
        let state = AppState(Arc::new(Shared {
            config,
            node,
            store,
            hub,
            bus,
            presence,
            delivery,
            shutdown: rx,
            connections: ConnectionCount::default(),
            user_rate,
            login_throttle,
            next_conn: AtomicU64::new(1),
        }));
        Ok(Application {
            listener,
            legacy,
            state,
            shutdown: ShutdownHandle(Arc::new(tx)),
            writer,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen)
    }

    /// The bound port of the legacy TCP listener, when configured.
    pub fn legacy_port(&self) -> Option<u16> {
        let legacy = self.legacy.as_ref()?;
        legacy.local_addr().ok().map(|a| a.port())
    }

    /// This replica's name.
    pub fn node_id(&self) -> &str {
        &self.state.node
    }

    /// A handle that stops the application.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until the shutdown handle is triggered, then drains connections and writes.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            listener,
            legacy,
            state,
            shutdown: _,
            writer,
        } = self;
        let legacy = legacy.map(|l| tokio::spawn(legacy::serve(l, state.clone())));
        tracing::info!(node = %state.node, addr = %listener.local_addr()?, "clusterchat listening");
        let router = http::router(state.clone());
        let mut stop = state.shutdown.clone();
        // No Nagle: a reply's or push's last small segment must not wait for the ACK of the
        // one before (up to the peer's 40 ms delayed ACK).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY not set: {e}");
            }
        });
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
        if let Some(task) = legacy {
            task.await.context("the legacy listener")?;
        }
        // Sockets close themselves with 1001 on the same signal; give them a moment.
        if tokio::time::timeout(Duration::from_secs(5), state.connections.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                open = state.connections.open(),
                "connections still open at shutdown"
            );
        }
        // Dropped users still in their grace period are announced gone now.
        if tokio::time::timeout(Duration::from_secs(5), state.presence.drain())
            .await
            .is_err()
        {
            tracing::warn!("presence not drained at shutdown");
        }
        state.delivery.flush().await;
        state.bus.close().await;
        drop(state);
        writer.abort();
        tracing::info!("clusterchat stopped");
        Ok(())
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact("mysql://root:pw@h/db"), "mysql://root:***@h/db");
        assert_eq!(
            redact("sqlite://chat.db?mode=rwc"),
            "sqlite://chat.db?mode=rwc"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
