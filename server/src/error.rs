//! Typed errors of the store and service layers, and the one place where they become the
//! protocol's `errno` / `errmsg`.

use sea_orm::{DbErr, SqlErr};

/// What can go wrong in a database call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused, pool timeout, server gone).
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    /// A unique key was violated (name taken, row already there).
    #[error("unique key violated: {0}")]
    Duplicate(DbErr),
    /// A transient conflict between concurrent transactions (deadlock, busy); worth retrying.
    #[error("transaction conflict: {0}")]
    Conflict(DbErr),
    /// Anything else.
    #[error("database error: {0}")]
    Other(DbErr),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
            return StoreError::Duplicate(e);
        }
        match &e {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => StoreError::Unavailable(e),
            _ => {
                let text = e.to_string().to_ascii_lowercase();
                if text.contains("deadlock")
                    || text.contains("database is locked")
                    || text.contains("busy")
                    || text.contains("could not serialize")
                    || text.contains("lock wait timeout")
                {
                    StoreError::Conflict(e)
                } else if text.contains("connection")
                    || text.contains("broken pipe")
                    || text.contains("pool timed out")
                    || text.contains("io error")
                {
                    StoreError::Unavailable(e)
                } else {
                    StoreError::Other(e)
                }
            }
        }
    }
}

impl From<sea_orm::sqlx::Error> for StoreError {
    /// An error of a statement run through sqlx itself (the SQLite batch writer), classified
    /// as sea-orm's own errors are.
    fn from(e: sea_orm::sqlx::Error) -> Self {
        use sea_orm::sqlx::Error;
        let pool = matches!(
            e,
            Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed
        );
        let e = sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e));
        if pool {
            StoreError::Unavailable(DbErr::Conn(e))
        } else {
            StoreError::from(DbErr::Exec(e))
        }
    }
}

/// Why a request failed, as the service layer sees it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// errno 1: unknown account or wrong password (one message for both).
    #[error("id or password is invalid")]
    WrongCredentials,
    /// errno 2: the user or group name is taken.
    #[error("{0} is already taken")]
    NameTaken(&'static str),
    /// errno 400: malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// errno 401: the request needs a logged-in session.
    #[error("log in first")]
    NotLoggedIn,
    /// errno 403: not allowed for this user.
    #[error("{0}")]
    Forbidden(String),
    /// errno 404: no such user or group.
    #[error("{0}")]
    NotFound(String),
    /// errno 409: conflicting state.
    #[error("{0}")]
    Conflict(String),
    /// errno 429: a rate or count limit was hit.
    #[error("{0}")]
    RateLimited(String),
    /// errno 413: the frame is too large.
    #[error("message is larger than {0} bytes")]
    TooLarge(usize),
    /// errno 503: a dependency is unavailable; the client should retry.
    #[error("{0}; try again")]
    Unavailable(String),
    /// errno 500: a bug or an unexpected failure, logged with this id.
    #[error("internal error (request {0})")]
    Internal(String),
}

impl ServiceError {
    /// The protocol's errno for this error.
    pub fn errno(&self) -> i64 {
        match self {
            ServiceError::WrongCredentials => 1,
            ServiceError::NameTaken(_) => 2,
            ServiceError::BadRequest(_) => 400,
            ServiceError::NotLoggedIn => 401,
            ServiceError::Forbidden(_) => 403,
            ServiceError::NotFound(_) => 404,
            ServiceError::Conflict(_) => 409,
            ServiceError::TooLarge(_) => 413,
            ServiceError::RateLimited(_) => 429,
            ServiceError::Internal(_) => 500,
            ServiceError::Unavailable(_) => 503,
        }
    }

    /// An internal error, logged here with a fresh id that the reply carries.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        let id = format!("{:016x}", rand::random::<u64>());
        tracing::error!(request_id = %id, "{context}: {err}");
        ServiceError::Internal(id)
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(err) => {
                tracing::warn!("database unavailable: {err}");
                ServiceError::Unavailable("the database is unavailable".into())
            }
            StoreError::Conflict(err) => {
                tracing::warn!("database conflict: {err}");
                ServiceError::Unavailable("the database is busy".into())
            }
            other => ServiceError::internal("database", &other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_design_errno() {
        assert_eq!(ServiceError::WrongCredentials.errno(), 1);
        assert_eq!(ServiceError::NameTaken("name").errno(), 2);
        assert_eq!(ServiceError::BadRequest("x".into()).errno(), 400);
        assert_eq!(ServiceError::NotLoggedIn.errno(), 401);
        assert_eq!(ServiceError::Forbidden("x".into()).errno(), 403);
        assert_eq!(ServiceError::NotFound("x".into()).errno(), 404);
        assert_eq!(ServiceError::Conflict("x".into()).errno(), 409);
        assert_eq!(ServiceError::TooLarge(1).errno(), 413);
        assert_eq!(ServiceError::RateLimited("x".into()).errno(), 429);
        assert_eq!(ServiceError::Internal("x".into()).errno(), 500);
        assert_eq!(ServiceError::Unavailable("x".into()).errno(), 503);
    }

    #[test]
    fn lost_connections_become_unavailable() {
        let e: ServiceError =
            StoreError::from(DbErr::Conn(sea_orm::RuntimeErr::Internal("refused".into()))).into();
        assert_eq!(e.errno(), 503);
    }
}
