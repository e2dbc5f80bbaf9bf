//! The scenarios of the suite, one module per area of the protocol. Each scenario is an
//! `async fn(&TestApp)` that `api.rs` runs once per database backend.

pub mod auth;
pub mod chat;
pub mod friends;
pub mod groups;
pub mod history;
pub mod http;
pub mod lifecycle;
pub mod races;
pub mod robustness;
pub mod sessions;
