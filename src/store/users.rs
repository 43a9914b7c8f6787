//! Users and their login tokens (migration 0008). Passwords arrive here already hashed and
//! tokens as their SHA-256: the store never holds either secret.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, on_pool};
use crate::clock::{from_millis, to_millis};
use crate::domain::user::Role;

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Login name, also the actor recorded on what the user does.
    pub login: String,
    /// Display name.
    pub name: String,
    /// `operator`, `supervisor`, `admin` or `installer`.
    pub role: String,
    /// Region ids the user works in.
    pub regions: Vec<String>,
    /// A disabled user cannot log in, and its tokens stop working.
    pub disabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl User {
    /// The user's role (a stored role is always one of them).
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Installer)
    }
}

/// What creating or replacing a user sets.
#[derive(Debug, Clone)]
pub struct UserInput {
    /// Login name (validated by the caller).
    pub login: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Region ids.
    pub regions: Vec<String>,
    /// Argon2id PHC string; `None` on a replace keeps the current one.
    pub password_hash: Option<String>,
    /// Disabled.
    pub disabled: bool,
}

const USER_COLUMNS: &str = "id, login, name, role, regions, disabled, created_at, updated_at";

fn user_from_row<R>(row: &R) -> Result<User, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let regions: String = row.try_get("regions")?;
    Ok(User {
        id: row.try_get("id")?,
        login: row.try_get("login")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        regions: serde_json::from_str(&regions).unwrap_or_default(),
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

fn taken(e: sqlx::Error, login: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::LoginTaken(login.to_owned())
        }
        _ => StoreError::Db(e),
    }
}

impl Store {
    /// Creates a user; its login must be free.
    pub async fn create_user(&self, u: &UserInput, now: DateTime<Utc>) -> Result<User, StoreError> {
        let hash = u
            .password_hash
            .as_deref()
            .ok_or_else(|| StoreError::Validation("password is required".into()))?;
        let at = to_millis(now);
        let regions = serde_json::to_string(&u.regions).unwrap_or_else(|_| "[]".into());
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO users (login, name, role, regions, password_hash, disabled, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {USER_COLUMNS}"
            )))
            .bind(&u.login)
            .bind(&u.name)
            .bind(u.role.as_str())
            .bind(&regions)
            .bind(hash)
            .bind(i64::from(u.disabled))
            .bind(at)
            .fetch_one(pool)
            .await
            .map_err(|e| taken(e, &u.login))?;
            user_from_row(&row)
        })
    }

    /// Replaces a user's fields (the password only when given). Disabling a user or
    /// changing its password ends its logins: its tokens are deleted in the same transaction.
    pub async fn update_user(
        &self,
        id: i64,
        u: &UserInput,
        now: DateTime<Utc>,
    ) -> Result<User, StoreError> {
        let at = to_millis(now);
        let regions = serde_json::to_string(&u.regions).unwrap_or_else(|_| "[]".into());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE users SET login = $2, name = $3, role = $4, regions = $5, \
                 password_hash = COALESCE($6, password_hash), disabled = $7, updated_at = $8 \
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            )))
            .bind(id)
            .bind(&u.login)
            .bind(&u.name)
            .bind(u.role.as_str())
            .bind(&regions)
            .bind(u.password_hash.as_deref())
            .bind(i64::from(u.disabled))
            .bind(at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| taken(e, &u.login))?
            .ok_or(StoreError::UserNotFound(id))?;
            if u.disabled || u.password_hash.is_some() {
                sqlx::query("DELETE FROM user_tokens WHERE user_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            let user = user_from_row(&row)?;
            tx.commit().await?;
            Ok(user)
        })
    }

    /// Every user, by id.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users ORDER BY id")))
                .fetch_all(pool)
                .await?;
            rows.iter().map(user_from_row).collect()
        })
    }

    /// The user with this login and its password hash, for checking a login.
    pub async fn user_credentials(
        &self,
        login: &str,
    ) -> Result<Option<(User, String)>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE login = $1")))
                .bind(login)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?))),
                None => Ok(None),
            }
        })
    }

    /// Keeps a login's token (its SHA-256, hex) until `expires`.
    pub async fn put_token(
        &self,
        token_sha256: &str,
        user_id: i64,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            // Expired tokens go as new ones come: the table holds the live logins only.
            sqlx::query("DELETE FROM user_tokens WHERE expires_at <= $1")
                .bind(to_millis(now))
                .execute(pool)
                .await?;
            sqlx::query("INSERT INTO user_tokens (token_sha256, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(token_sha256)
                .bind(user_id)
                .bind(to_millis(now))
                .bind(to_millis(expires))
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The enabled user a live token belongs to.
    pub async fn user_by_token(
        &self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.token_sha256 = $1 AND t.expires_at > $2 AND u.disabled = 0",
                USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", ")
            )))
            .bind(token_sha256)
            .bind(to_millis(now))
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(user_from_row).transpose()
        })
    }
}
