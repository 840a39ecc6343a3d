//! Personal settings: personal access tokens for the API and the CLI.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::templates::{flash, render, with_errors, PageCtx};
use crate::auth::CurrentUser;
use crate::db::tokens::{self, ApiToken};
use crate::domain::DisplayName;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "settings/tokens.html")]
pub struct TokensPage {
    pub ctx: PageCtx,
    pub tokens: Vec<ApiToken>,
    pub new_token: Option<String>,
    pub error: Option<&'static str>,
}

pub async fn tokens_index(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
) -> AppResult<Response> {
    let tokens = tokens::of_user(&state.db, &user.id).await?;
    Ok(render(&TokensPage {
        ctx,
        tokens,
        new_token: None,
        error: None,
    }))
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Form(form): Form<TokenForm>,
) -> AppResult<Response> {
    match DisplayName::parse(&form.name) {
        Ok(name) => {
            let token = tokens::create(&state.db, &user.id, name.as_str()).await?;
            let tokens = tokens::of_user(&state.db, &user.id).await?;
            Ok(render(&TokensPage {
                ctx,
                tokens,
                new_token: Some(token),
                error: None,
            }))
        }
        Err(_) => {
            let tokens = tokens::of_user(&state.db, &user.id).await?;
            Ok(with_errors(&TokensPage {
                ctx,
                tokens,
                new_token: None,
                error: Some("token_name_required"),
            }))
        }
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(token_id): Path<String>,
) -> AppResult<Redirect> {
    if !tokens::revoke(&state.db, &user.id, &token_id).await? {
        return Err(AppError::NotFound);
    }
    flash(&session, "token_revoked").await?;
    Ok(Redirect::to("/settings/tokens"))
}
