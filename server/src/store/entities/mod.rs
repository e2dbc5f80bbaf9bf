//! sea-orm entities, one file per table (see `migration/` for the schema).

pub mod allgroup;
pub mod conversation;
pub mod friend;
pub mod groupuser;
pub mod message;
pub mod read_cursor;
pub mod session_token;
pub mod user;
