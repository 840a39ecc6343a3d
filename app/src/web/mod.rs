//! The HTTP surface: pages, the JSON API and operations endpoints, with one
//! folder per area (the same names as `db/` and `templates/`).

pub mod accounts;
pub mod admin;
pub mod api;
pub mod applications;
pub mod charts;
pub mod courses;
pub mod files;
pub mod gradebook;
pub mod home;
pub mod jobs;
pub mod labs;
pub mod markdown;
pub mod metrics;
pub mod notifications;
pub mod ops;
pub mod orgs;
pub mod postings;
pub mod projects;
pub mod publish;
pub mod regrades;
pub mod settings;
pub mod templates;
pub mod vouchers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tower_sessions::cookie::{Key, SameSite};
use tower_sessions::{Expiry, SessionManagerLayer};

use crate::auth::store::Store;
use crate::auth::{self, csrf};
use crate::error::AppError;
use crate::state::AppState;

/// Sessions expire after a week without activity.
const SESSION_IDLE_DAYS: i64 = 7;
pub const SESSION_COOKIE: &str = "sanhak_session";

/// Every HTML route. All of them sit behind the CSRF guard.
fn pages() -> Router<AppState> {
    Router::new()
        .route("/", get(home::index))
        .route("/dashboard", get(home::dashboard))
        .route("/signup", get(accounts::signup_page).post(accounts::signup))
        .route("/login", get(accounts::login_page).post(accounts::login))
        .route("/logout", post(accounts::logout))
        .route(
            "/invite/{token}",
            get(accounts::invite_page).post(accounts::accept_invite),
        )
        .route("/courses/new", get(courses::new_page).post(courses::create))
        .route("/courses/join", get(courses::join_page).post(courses::join))
        .route("/courses/{course_id}", get(courses::show))
        .route("/courses/{course_id}/labs", post(labs::add))
        .route("/courses/{course_id}/labs/{lab_id}", get(labs::show))
        .route(
            "/courses/{course_id}/labs/{lab_id}/submit",
            post(labs::submit),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/leaderboard",
            get(labs::leaderboard),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/settings",
            get(labs::settings).post(labs::save_settings),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/extensions",
            post(labs::grant_extension),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/extensions/{user_id}/remove",
            post(labs::revoke_extension),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/regrades",
            post(regrades::start),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}",
            get(regrades::show),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}/accept",
            post(regrades::accept),
        )
        .route(
            "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}/discard",
            post(regrades::discard),
        )
        .route(
            "/courses/{course_id}/leaderboard-name",
            post(labs::set_leaderboard_name),
        )
        .route("/courses/{course_id}/gradebook", get(gradebook::index))
        .route("/courses/{course_id}/gradebook.csv", get(gradebook::export))
        .route("/courses/{course_id}/analytics", get(gradebook::analytics))
        .route(
            "/courses/{course_id}/gradebook/{user_id}",
            get(gradebook::student),
        )
        .route("/jobs/{job_id}", get(jobs::show))
        .route("/jobs/{job_id}/cancel", post(jobs::cancel))
        .route("/jobs/{job_id}/stream", get(jobs::stream))
        .route(
            "/courses/{course_id}/join-code",
            post(courses::regenerate_code),
        )
        .route("/courses/{course_id}/roster", get(courses::roster))
        .route(
            "/courses/{course_id}/roster.csv",
            get(courses::roster_export),
        )
        .route("/courses/{course_id}/roster/tas", post(courses::add_ta))
        .route(
            "/courses/{course_id}/roster/tas/{user_id}/remove",
            post(courses::remove_ta),
        )
        .route(
            "/courses/{course_id}/roster/students/{user_id}/remove",
            post(courses::remove_student),
        )
        .route(
            "/labs/publish",
            get(publish::index)
                .post(publish::upload)
                .layer(DefaultBodyLimit::max(
                    crate::publish::MAX_ARCHIVE_BYTES + 64 * 1024,
                )),
        )
        .route("/labs/{lab_id}/preview", get(publish::preview))
        // joint projects
        .route(
            "/postings/{posting_id}/interest",
            get(projects::interest).post(projects::express_interest),
        )
        .route("/postings/{posting_id}/teams", get(projects::teams))
        .route("/teams/{team_id}/accept", post(projects::accept_invitation))
        .route(
            "/teams/{team_id}/decline-invitation",
            post(projects::decline_invitation),
        )
        .route("/teams/{team_id}/withdraw", post(projects::withdraw))
        .route("/teams/{team_id}/endorse", post(projects::endorse))
        .route(
            "/teams/{team_id}/approve-company",
            post(projects::approve_company),
        )
        .route(
            "/teams/{team_id}/approve-advisor",
            post(projects::approve_advisor),
        )
        .route("/teams/{team_id}/decline", post(projects::decline))
        .route("/projects/{team_id}", get(projects::space))
        .route("/projects/{team_id}/messages", post(projects::post_message))
        .route(
            "/projects/{team_id}/milestones",
            post(projects::add_milestone),
        )
        .route(
            "/projects/{team_id}/milestones/{milestone_id}/status",
            post(projects::set_milestone_status),
        )
        .route(
            "/projects/{team_id}/files",
            post(projects::upload_file).layer(DefaultBodyLimit::max(
                crate::files::MAX_PROJECT_FILE_BYTES + 1024 * 1024,
            )),
        )
        .route(
            "/projects/{team_id}/files/{file_id}",
            get(projects::download_file),
        )
        // end of joint projects
        .route("/orgs/{slug}", get(orgs::show))
        .route("/orgs/{slug}/members", post(orgs::add_member))
        .route(
            "/orgs/{slug}/members/{user_id}/remove",
            post(orgs::remove_member),
        )
        .route("/orgs/{slug}/invitations", post(orgs::invite))
        // industry: connections, postings, applications, notifications
        .route("/orgs/{slug}/connections", post(orgs::request_connection))
        .route(
            "/orgs/{slug}/connections/{company_id}",
            post(orgs::decide_connection),
        )
        .route(
            "/orgs/{slug}/postings/new",
            get(postings::new_page).post(postings::create),
        )
        .route("/postings", get(postings::index))
        .route("/postings/{posting_id}", get(postings::show))
        .route(
            "/postings/{posting_id}/edit",
            get(postings::edit).post(postings::save),
        )
        .route("/postings/{posting_id}/submit", post(postings::submit))
        .route("/postings/{posting_id}/approve", post(postings::approve))
        .route(
            "/postings/{posting_id}/request-changes",
            post(postings::request_changes),
        )
        .route("/postings/{posting_id}/open", post(postings::open))
        .route("/postings/{posting_id}/close", post(postings::close))
        .route(
            "/postings/{posting_id}/apply",
            post(applications::apply).layer(DefaultBodyLimit::max(
                crate::files::MAX_CV_BYTES + 64 * 1024,
            )),
        )
        .route("/applications", get(applications::mine))
        .route("/applications/{application_id}", get(applications::show))
        .route(
            "/applications/{application_id}/move",
            post(applications::move_to),
        )
        .route(
            "/applications/{application_id}/notes",
            post(applications::add_note),
        )
        .route("/applications/{application_id}/cv", get(applications::cv))
        .route("/notifications", get(notifications::index))
        .route("/notifications/read-all", post(notifications::read_all))
        .route(
            "/notifications/{notification_id}/open",
            post(notifications::open),
        )
        .route(
            "/settings/tokens",
            get(settings::tokens_index).post(settings::create_token),
        )
        .route(
            "/settings/tokens/{token_id}/revoke",
            post(settings::revoke_token),
        )
        .route(
            "/admin/users",
            get(admin::users_index).post(admin::create_user),
        )
        .route("/admin/users/{user_id}/kind", post(admin::set_kind))
        .route("/admin/users/{user_id}/disabled", post(admin::set_disabled))
        .route("/admin/invitations", post(admin::create_invite))
        .route(
            "/admin/orgs",
            get(admin::orgs_index).post(admin::create_org),
        )
        .route(
            "/admin/vouchers",
            get(vouchers::admin_index).post(vouchers::grant),
        )
        .route(
            "/admin/vouchers/{voucher_id}/adjust",
            post(vouchers::adjust),
        )
        .route(
            "/admin/vouchers/projects/{project_id}",
            get(vouchers::project),
        )
        .route(
            "/admin/vouchers/projects/{project_id}/ledger.csv",
            get(vouchers::project_csv),
        )
        .route("/courses/{course_id}/budget", get(vouchers::course))
        .route("/courses/{course_id}/budget.csv", get(vouchers::course_csv))
        .route("/courses/{course_id}/budget/cap", post(vouchers::set_cap))
        .route("/orgs/{slug}/budget", get(vouchers::org))
        .route("/orgs/{slug}/budget.csv", get(vouchers::org_csv))
        .layer(from_fn(csrf::guard))
}

async fn not_found() -> AppError {
    AppError::NotFound
}

/// The 64-byte cookie-signing key, derived from the configured secret.
fn signing_key(secret: &str) -> Key {
    use sha2::Digest as _;
    Key::from(sha2::Sha512::digest(secret.as_bytes()).as_slice())
}

/// The whole application router.
pub fn build_router(state: AppState, store: Store) -> Router {
    let (api, openapi) = api::router();
    let openapi = Arc::new(openapi);
    let sessions = SessionManagerLayer::new(store)
        .with_name(SESSION_COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(state.config.secure_cookies)
        .with_expiry(Expiry::OnInactivity(time::Duration::days(
            SESSION_IDLE_DAYS,
        )))
        .with_signed(signing_key(state.config.session_secret.expose()));
    Router::new()
        .merge(pages())
        .merge(api)
        .merge(api::runner::router())
        .route("/api/v1/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(metrics::export))
        .route("/static/{*path}", get(ops::asset))
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), auth::authenticate))
        .layer(sessions)
        .layer(from_fn(api::json_errors))
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                tracing::info_span!("request", method = %req.method(), route)
            }),
        )
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            AppError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"),
        ))
        .with_state(state)
}
