//! Users and logins (CONTRACT.md "Care records"): admins create and change users; anyone
//! with a login and password gets a bearer token and a session cookie for the console.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::extract::{self, Path};
use super::{Actor, ApiError, AppState, SESSION_COOKIE};
use crate::domain::user::{MIN_PASSWORD_CHARS, Role, valid_login};
use crate::store::UserInput;

/// How long a login lasts: a 12-hour shift, then the console asks again.
pub const SESSION_HOURS: i64 = 12;

/// The longest password taken: Argon2 takes any length, but a body of megabytes is no
/// password.
const MAX_PASSWORD_CHARS: usize = 256;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserBody {
    /// 1–64 letters, digits, `.`, `_`, `-` or `@`.
    login: String,
    /// Display name, 1–100 characters.
    name: String,
    /// `operator`, `supervisor`, `admin` or `installer`.
    role: String,
    /// Region ids the user works in.
    #[serde(default)]
    regions: Vec<String>,
    /// 8–256 characters; required on creation, kept only when given on replacement.
    password: Option<String>,
    /// Locks the user out and ends its logins.
    #[serde(default)]
    disabled: bool,
}

/// Checks a user body; hashes its password (Argon2id, off the async threads: ~20 ms of CPU).
async fn input(body: UserBody) -> Result<UserInput, ApiError> {
    if !valid_login(&body.login) {
        return Err(ApiError::Invalid(format!(
            "login {:?}: 1–64 letters, digits, '.', '_', '-' or '@'",
            body.login
        )));
    }
    if body.name.trim().is_empty() || body.name.chars().count() > 100 {
        return Err(ApiError::Invalid("name: 1–100 characters".into()));
    }
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::Invalid(format!(
            "role {:?} is not one of operator, supervisor, admin, installer",
            body.role
        ))
    })?;
    if let Some(r) = body
        .regions
        .iter()
        .find(|r| r.trim().is_empty() || r.len() > 64)
    {
        return Err(ApiError::Invalid(format!(
            "regions: {r:?} is not a region id"
        )));
    }
    let password_hash = match body.password {
        Some(p) => {
            let n = p.chars().count();
            if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
                return Err(ApiError::Invalid(format!(
                    "password: {MIN_PASSWORD_CHARS}–{MAX_PASSWORD_CHARS} characters"
                )));
            }
            Some(
                tokio::task::spawn_blocking(move || hash_password(&p))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))??,
            )
        }
        None => None,
    };
    Ok(UserInput {
        login: body.login,
        name: body.name.trim().to_owned(),
        role,
        regions: body.regions,
        password_hash,
        disabled: body.disabled,
    })
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
}

fn password_matches(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// `POST /api/users` (admin): 201 with the user; 409 when the login is taken.
#[utoipa::path(
    post,
    path = "/api/users",
    tag = "users",
    request_body = UserBody,
    responses(
        (status = 201, description = "The user", body = crate::store::User),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 409, description = "The login is taken", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn create(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    extract::Json(body): extract::Json<UserBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    actor.require(Role::administers, "manage users")?;
    if body.password.is_none() {
        return Err(ApiError::Invalid("password is required".into()));
    }
    let user = s
        .store
        .create_user(&input(body).await?, s.clock.now())
        .await?;
    tracing::info!(user = user.id, login = %user.login, role = %user.role, by = %actor.name, "User created");
    Ok((StatusCode::CREATED, Json(json!(user))))
}

/// `GET /api/users` (admin).
#[utoipa::path(
    get,
    path = "/api/users",
    tag = "users",
    responses(
        (status = 200, description = "Every user", body = super::openapi::UserPage),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::administers, "manage users")?;
    Ok(Json(json!({ "items": s.store.list_users().await? })))
}

/// `PUT /api/users/{id}` (admin): replaces the user (the password only when given);
/// disabling it or changing its password ends its logins.
#[utoipa::path(
    put,
    path = "/api/users/{id}",
    tag = "users",
    params(("id" = i64, Path, description = "User id")),
    request_body = UserBody,
    responses(
        (status = 200, description = "The user, replaced", body = crate::store::User),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such user", body = super::openapi::ErrorBody),
        (status = 409, description = "The login is taken", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn put(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(body): extract::Json<UserBody>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::administers, "manage users")?;
    let user = s
        .store
        .update_user(id, &input(body).await?, s.clock.now())
        .await?;
    tracing::info!(user = user.id, login = %user.login, role = %user.role, disabled = user.disabled, by = %actor.name, "User changed");
    Ok(Json(json!(user)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    login: String,
    password: String,
}

/// The hash of a random password no one has: an unknown login costs the same Argon2 work as
/// a wrong password, so the answer's timing does not tell which part was wrong.
static DECOY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    hash_password(&hex::encode(rand::random::<[u8; 16]>())).unwrap_or_default()
});

/// `POST /api/login`: a bearer token and the same as a session cookie, or 401 saying only
/// that the login or password is wrong.
#[utoipa::path(
    post,
    path = "/api/login",
    tag = "users",
    request_body = LoginBody,
    responses(
        (status = 200, description = "A bearer token; the same is set as the `anxin_session` cookie (HttpOnly, SameSite=Strict, 12 h)", body = super::openapi::LoggedIn),
        (status = 400, description = "Malformed body", body = super::openapi::ErrorBody),
        (status = 401, description = "Wrong login or password (says nothing about which)", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over the limit", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = super::openapi::ErrorBody)
    )
)]
pub(super) async fn login(
    State(s): State<AppState>,
    extract::Json(body): extract::Json<LoginBody>,
) -> Result<Response, ApiError> {
    let found = s.store.user_credentials(&body.login).await?;
    let hash = found.as_ref().map(|(_, h)| h.clone());
    let password = body.password;
    let matches = tokio::task::spawn_blocking(move || {
        password_matches(&password, hash.as_deref().unwrap_or(&DECOY_HASH))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = match found {
        Some((user, _)) if matches && !user.disabled => user,
        _ => {
            crate::telemetry::login_refused();
            return Err(ApiError::BadCredentials);
        }
    };
    let token = hex::encode(rand::random::<[u8; 32]>());
    let now = s.clock.now();
    let expires = now + chrono::Duration::hours(SESSION_HOURS);
    s.store
        .put_token(
            &hex::encode(Sha256::digest(token.as_bytes())),
            user.id,
            now,
            expires,
        )
        .await?;
    tracing::info!(user = user.id, login = %user.login, "Logged in");
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_HOURS * 3600
    );
    // For the audit log: the login is a write by this user.
    let actor = super::Actor {
        name: user.login.clone(),
        role: user.role(),
        scope: crate::domain::region::Scope::All,
    };
    let mut response = (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "token": token, "expires_at": expires, "user": user })),
    )
        .into_response();
    response.extensions_mut().insert(actor);
    Ok(response)
}
