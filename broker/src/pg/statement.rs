//! Hand-written SQL that Postgres keeps prepared.
//!
//! `diesel::sql_query` marks itself unsafe to cache, so every call parses its
//! text again: one extra round trip (`Parse`, answered before `Bind`) and a
//! `Close` per statement. A [`Statement`] is the same text with the same
//! typed binds, but its text is fixed (`&'static str`), so diesel-async keeps
//! it prepared per connection, keyed by the text and the bind types, and each
//! call is a single `Bind`/`Execute`.
//!
//! ```ignore
//! let row: Placed = statement("INSERT … VALUES ($1, $2) RETURNING …")
//!     .bind::<Uuid, _>(id)
//!     .bind::<Text, _>(&name)
//!     .get_result(&mut conn)
//!     .await?;
//! ```
//!
//! Placeholders are `$1` … `$n`, as in `sql_query`; a placeholder may occur
//! more than once. The text must not hold a `$` followed by a digit anywhere
//! else (in a string literal or a dollar-quoted body).

use diesel::{
    QueryResult,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{HasSqlType, Untyped},
};

/// A fixed SQL text and its binds; see the [module](self) docs.
#[must_use = "a statement does nothing until it is run"]
pub struct Statement<'a> {
    sql: &'static str,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'a>>,
}

/// Starts a [`Statement`] of `sql`, with `$1` … `$n` for its binds.
pub fn statement<'a>(sql: &'static str) -> Statement<'a> {
    Statement {
        sql,
        binds: Vec::new(),
    }
}

impl<'a> Statement<'a> {
    /// Binds the next placeholder (`$1` first) to `value` as SQL type `ST`.
    pub fn bind<ST, V>(mut self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'a,
        ST: Send + 'a,
    {
        self.binds.push(Box::new(Bind::<ST, V> {
            value,
            sql_type: std::marker::PhantomData,
        }));
        self
    }
}

struct Bind<ST, V> {
    value: V,
    sql_type: std::marker::PhantomData<ST>,
}

impl<ST, V> QueryFragment<Pg> for Bind<ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        pass.push_bind_param::<ST, V>(&self.value)
    }
}

impl QueryFragment<Pg> for Statement<'_> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Each `$k` is replaced by bind k, which diesel numbers in the order
        // it is pushed: the text diesel builds is the same on every call.
        let mut rest = self.sql;
        while let Some(at) = placeholder(rest) {
            pass.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |end| at + 1 + end);
            let number: usize = rest[at + 1..digits]
                .parse()
                .map_err(|_| unbound(self.sql, &rest[at..digits]))?;
            let bind = number
                .checked_sub(1)
                .and_then(|index| self.binds.get(index))
                .ok_or_else(|| unbound(self.sql, &rest[at..digits]))?;
            bind.walk_ast(pass.reborrow())?;
            rest = &rest[digits..];
        }
        pass.push_sql(rest);
        Ok(())
    }
}

/// Where the next `$<digit>` starts in `sql`.
fn placeholder(sql: &str) -> Option<usize> {
    sql.match_indices('$')
        .map(|(at, _)| at)
        .find(|&at| sql[at + 1..].starts_with(|c: char| c.is_ascii_digit()))
}

fn unbound(sql: &str, placeholder: &str) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("{placeholder} has no bind in statement: {sql}").into(),
    )
}

impl QueryId for Statement<'_> {
    type QueryId = ();
    // Not static: the statement cache keys it by its text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement<'_> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use diesel::{
        debug_query,
        query_builder::QueryFragment,
        sql_types::{Integer, Text},
    };

    use super::*;

    #[test]
    fn each_placeholder_becomes_its_bind_in_text_order() {
        let query = statement("SELECT $2::text, $1::int4, $2::text, '$' || $10")
            .bind::<Integer, _>(7)
            .bind::<Text, _>("x");
        // `$10` names no bind: building the text fails instead of sending it.
        let error = query
            .to_sql(&mut diesel::pg::PgQueryBuilder::default(), &Pg)
            .unwrap_err();
        assert!(error.to_string().contains("$10 has no bind"), "{error}");
        let query = statement("SELECT $2::text, $1::int4, $2::text, '$'")
            .bind::<Integer, _>(7)
            .bind::<Text, _>("x");
        assert_eq!(
            debug_query::<Pg, _>(&query).to_string(),
            r#"SELECT $1::text, $2::int4, $3::text, '$' -- binds: ["x", 7, "x"]"#
        );
    }

    #[test]
    fn a_statement_may_be_kept_prepared_and_sql_query_may_not() {
        let query = statement("SELECT $1::int4").bind::<Integer, _>(1);
        assert!(query.is_safe_to_cache_prepared(&Pg).unwrap());
        let query = diesel::sql_query("SELECT $1::int4").bind::<Integer, _>(1);
        assert!(!query.is_safe_to_cache_prepared(&Pg).unwrap());
    }
}
