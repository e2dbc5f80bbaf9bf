//! Queries that return many rows. sqlx-sqlite copies every value of every row and hands each
//! row from its worker thread to the runtime on its own; at login (a hundred friends, a hundred
//! conversations, two hundred unread messages) that cost more than running the queries. On
//! SQLite such a query is therefore wrapped so that SQLite packs its rows into one JSON array
//! (`json_group_array`), one value to hand over; MySQL and PostgreSQL stream rows as usual.

use sea_orm::sea_query::{Alias, Expr, Func, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, TryGetableMany};
use serde::de::DeserializeOwned;

use super::Store;
use crate::error::StoreError;

impl Store {
    /// The rows of `base` (its FROM, WHERE, ORDER BY and LIMIT; no columns of its own) with
    /// `fields` as columns, each row decoded as `T`: a tuple of the fields, in order. On SQLite
    /// the rows come back in no particular order.
    pub(crate) async fn rows<T>(
        &self,
        mut base: SelectStatement,
        fields: impl IntoIterator<Item = Expr>,
    ) -> Result<Vec<T>, StoreError>
    where
        T: TryGetableMany + DeserializeOwned,
    {
        let mut names = Vec::new();
        for (i, field) in fields.into_iter().enumerate() {
            let name = Alias::new(format!("c{i}"));
            base.expr_as(field, name.clone());
            names.push(name);
        }
        if self.backend() != DatabaseBackend::Sqlite {
            return self
                .db
                .query_all(&base)
                .await?
                .iter()
                .map(|row| T::try_get_many_by_index(row).map_err(|e| DbErr::from(e).into()))
                .collect();
        }
        let row = Func::cust("json_array").args(names.into_iter().map(Expr::col));
        let packed = Query::select()
            .expr(Func::cust("json_group_array").arg(row))
            .from_subquery(base, "packed")
            .take();
        let json: String = match self.db.query_one(&packed).await? {
            Some(row) => row.try_get_by_index(0)?,
            None => return Ok(Vec::new()),
        };
        unpack(&json)
    }

    /// The values of one integer `field` in the rows of `base` (see [`Store::rows`]).
    pub(crate) async fn ids(
        &self,
        base: SelectStatement,
        field: Expr,
    ) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = self.rows(base, [field]).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

/// Reads the JSON array of rows SQLite packed (each row an array of its fields).
fn unpack<T: DeserializeOwned>(json: &str) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(json).map_err(|e| DbErr::Json(format!("packed rows: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_decode_as_tuples_with_nulls_and_escapes() {
        let json = r#"[[1,2,null,"a \"quoted\"\nline é"],[3,4,5,""]]"#;
        let rows: Vec<(i64, i64, Option<i64>, String)> = unpack(json).unwrap();
        assert_eq!(
            rows,
            vec![
                (1, 2, None, "a \"quoted\"\nline é".to_owned()),
                (3, 4, Some(5), String::new()),
            ]
        );
        let one: Vec<(i64,)> = unpack("[[7],[8]]").unwrap();
        assert_eq!(one, vec![(7,), (8,)]);
        assert!(unpack::<(i64,)>("[]").unwrap().is_empty());
    }

    #[test]
    fn a_row_of_another_shape_is_an_error_not_a_panic() {
        assert!(unpack::<(i64, i64)>(r#"[[1,"x"]]"#).is_err());
        assert!(unpack::<(i64,)>("[[1,2]]").is_err());
        assert!(unpack::<(i64,)>("not json").is_err());
    }
}
