//! Courses: creation by instructors, joining by code, the course page, and the
//! roster (TAs, students, CSV export).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::templates::{flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::{CourseCreator, CourseInstructor, CourseMember, CourseStaff, CurrentUser};
use crate::db::courses::{Course, CreateCourseError, NewCourse, RosterEntry};
use crate::db::orgs::Membership;
use crate::db::users::User;
use crate::db::{courses, orgs, users};
use crate::domain::{
    parse_description, parse_term, parse_title, CourseCode, CourseRole, Email, JoinCode, OrgKind,
};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "courses/new.html")]
pub struct NewCoursePage {
    pub ctx: PageCtx,
    pub universities: Vec<UniversityChoice>,
    pub form: CourseForm,
    pub errors: FormErrors,
}

pub struct UniversityChoice {
    pub id: String,
    pub name: String,
}

#[derive(Deserialize, Default)]
pub struct CourseForm {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub term: String,
    #[serde(default)]
    pub university_id: String,
    #[serde(default)]
    pub description: String,
}

/// The universities a user may create courses for: their own (all for admins).
async fn universities_for(state: &AppState, user: &User) -> AppResult<Vec<UniversityChoice>> {
    let list: Vec<UniversityChoice> = if user.is_admin() {
        orgs::list(&state.db)
            .await?
            .into_iter()
            .filter(|o| o.kind == OrgKind::University)
            .map(|o| UniversityChoice {
                id: o.id,
                name: o.name,
            })
            .collect()
    } else {
        orgs::of_user(&state.db, &user.id)
            .await?
            .into_iter()
            .filter(|m: &Membership| m.kind == OrgKind::University)
            .map(|m| UniversityChoice {
                id: m.id,
                name: m.name,
            })
            .collect()
    };
    Ok(list)
}

pub async fn new_page(
    State(state): State<AppState>,
    ctx: PageCtx,
    CourseCreator(user): CourseCreator,
) -> AppResult<Response> {
    let universities = universities_for(&state, &user).await?;
    Ok(render(&NewCoursePage {
        ctx,
        universities,
        form: CourseForm::default(),
        errors: FormErrors::default(),
    }))
}

/// A validated course form, shared by the page and the API.
pub struct ValidCourse {
    pub code: CourseCode,
    pub title: String,
    pub term: String,
    pub description: String,
}

pub fn validate_course(form: &CourseForm, errors: &mut FormErrors) -> Option<ValidCourse> {
    let code = errors.check("code", CourseCode::parse(&form.code));
    let title = errors.check("title", parse_title(&form.title));
    let term = errors.check("term", parse_term(&form.term));
    let description = errors.check("description", parse_description(&form.description));
    Some(ValidCourse {
        code: code?,
        title: title?,
        term: term?,
        description: description?,
    })
}

/// Creates a course for `user` at `university_id`, which must be one of theirs.
pub async fn create_course(
    state: &AppState,
    user: &User,
    form: &CourseForm,
    errors: &mut FormErrors,
) -> AppResult<Option<String>> {
    let universities = universities_for(state, user).await?;
    if !universities.iter().any(|u| u.id == form.university_id) {
        errors.add("university_id", "university_required");
    }
    let Some(valid) = validate_course(form, errors) else {
        return Ok(None);
    };
    if !errors.is_empty() {
        return Ok(None);
    }
    let created = courses::create(
        &state.db,
        NewCourse {
            code: &valid.code,
            title: &valid.title,
            term: &valid.term,
            university_id: &form.university_id,
            description: &valid.description,
            instructor_id: &user.id,
        },
    )
    .await;
    match created {
        Ok(id) => Ok(Some(id)),
        Err(CreateCourseError::Duplicate) => {
            errors.add("code", "course_duplicate");
            Ok(None)
        }
        Err(CreateCourseError::Db(e)) => Err(e.into()),
    }
}

pub async fn create(
    State(state): State<AppState>,
    ctx: PageCtx,
    CourseCreator(user): CourseCreator,
    Form(form): Form<CourseForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    if let Some(id) = create_course(&state, &user, &form, &mut errors).await? {
        return Ok(Redirect::to(&format!("/courses/{id}")).into_response());
    }
    let universities = universities_for(&state, &user).await?;
    Ok(with_errors(&NewCoursePage {
        ctx,
        universities,
        form,
        errors,
    }))
}

#[derive(Template)]
#[template(path = "courses/join.html")]
pub struct JoinPage {
    pub ctx: PageCtx,
    pub code: String,
    pub error: Option<&'static str>,
}

pub async fn join_page(ctx: PageCtx, CurrentUser(_): CurrentUser) -> Response {
    render(&JoinPage {
        ctx,
        code: String::new(),
        error: None,
    })
}

#[derive(Deserialize)]
pub struct JoinForm {
    #[serde(default)]
    code: String,
}

/// Enrolls `user` as a student of the course with this join code.
pub async fn join_course(state: &AppState, user: &User, code: &str) -> AppResult<Option<Course>> {
    let Some(course) = courses::by_join_code(&state.db, &JoinCode::normalise(code)).await? else {
        return Ok(None);
    };
    courses::enroll(&state.db, &course.id, &user.id, CourseRole::Student).await?;
    Ok(Some(course))
}

pub async fn join(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    CurrentUser(user): CurrentUser,
    Form(form): Form<JoinForm>,
) -> AppResult<Response> {
    match join_course(&state, &user, &form.code).await? {
        Some(course) => {
            flash(&session, "course_joined").await?;
            Ok(Redirect::to(&format!("/courses/{}", course.id)).into_response())
        }
        None => Ok(with_errors(&JoinPage {
            ctx,
            code: form.code,
            error: Some("join_code_invalid"),
        })),
    }
}

#[derive(Template)]
#[template(path = "courses/show.html")]
pub struct CoursePage {
    pub ctx: PageCtx,
    pub course: Course,
    pub role: Option<CourseRole>,
    pub is_staff: bool,
    pub is_instructor: bool,
    pub staff: Vec<RosterEntry>,
    pub student_count: usize,
    pub labs: Vec<super::labs::CourseLabRow>,
    pub addable: Vec<super::labs::CatalogChoice>,
    pub leaderboard_name: String,
}

pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseMember,
) -> AppResult<Response> {
    let roster = courses::roster(&state.db, &access.course.id).await?;
    let student_count = roster
        .iter()
        .filter(|r| r.role == CourseRole::Student)
        .count();
    let staff = roster
        .into_iter()
        .filter(|r| r.role != CourseRole::Student)
        .collect();
    let (is_staff, is_instructor) = (access.is_staff(), access.is_instructor());
    let labs =
        super::labs::course_lab_rows(&state, &access.course.id, &access.user.id, is_staff).await?;
    let addable = if is_instructor {
        super::labs::addable_labs(&state, &labs).await?
    } else {
        Vec::new()
    };
    let leaderboard_name = courses::leaderboard_names(&state.db, &access.course.id)
        .await?
        .into_iter()
        .find(|(u, _)| *u == access.user.id)
        .and_then(|(_, n)| n)
        .unwrap_or_default();
    Ok(render(&CoursePage {
        ctx,
        course: access.course,
        role: access.role,
        is_staff,
        is_instructor,
        staff,
        student_count,
        labs,
        addable,
        leaderboard_name,
    }))
}

pub async fn regenerate_code(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
) -> AppResult<Redirect> {
    courses::regenerate_join_code(&state.db, &access.course.id).await?;
    flash(&session, "join_code_regenerated").await?;
    Ok(Redirect::to(&format!("/courses/{}", access.course.id)))
}

#[derive(Template)]
#[template(path = "courses/roster.html")]
pub struct RosterPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub is_instructor: bool,
    pub roster: Vec<RosterEntry>,
    pub ta_email: String,
    pub error: Option<&'static str>,
}

pub async fn roster(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseStaff,
) -> AppResult<Response> {
    let roster = courses::roster(&state.db, &access.course.id).await?;
    let is_instructor = access.is_instructor();
    Ok(render(&RosterPage {
        ctx,
        course: access.course,
        is_instructor,
        roster,
        ta_email: String::new(),
        error: None,
    }))
}

/// Why adding a TA failed, as a message key.
pub async fn add_ta_by_email(
    state: &AppState,
    course_id: &str,
    raw_email: &str,
) -> AppResult<Result<(), &'static str>> {
    let Ok(email) = Email::parse(raw_email) else {
        return Ok(Err("email_invalid"));
    };
    let Some(user) = users::by_email(&state.db, email.as_str()).await? else {
        return Ok(Err("user_not_found"));
    };
    match courses::role_of(&state.db, course_id, &user.id).await? {
        Some(CourseRole::Instructor) => Ok(Err("already_instructor")),
        Some(_) => {
            courses::set_role(&state.db, course_id, &user.id, CourseRole::Ta).await?;
            Ok(Ok(()))
        }
        None => {
            courses::enroll(&state.db, course_id, &user.id, CourseRole::Ta).await?;
            Ok(Ok(()))
        }
    }
}

#[derive(Deserialize)]
pub struct TaForm {
    #[serde(default)]
    email: String,
}

pub async fn add_ta(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: CourseInstructor,
    Form(form): Form<TaForm>,
) -> AppResult<Response> {
    match add_ta_by_email(&state, &access.course.id, &form.email).await? {
        Ok(()) => {
            flash(&session, "ta_added").await?;
            Ok(Redirect::to(&format!("/courses/{}/roster", access.course.id)).into_response())
        }
        Err(key) => {
            let roster = courses::roster(&state.db, &access.course.id).await?;
            Ok(with_errors(&RosterPage {
                ctx,
                course: access.course,
                is_instructor: true,
                roster,
                ta_email: form.email,
                error: Some(key),
            }))
        }
    }
}

async fn remove_with_role(
    state: &AppState,
    session: &Session,
    access: &CourseInstructor,
    user_id: &str,
    role: CourseRole,
) -> AppResult<Redirect> {
    if !courses::unenroll(&state.db, &access.course.id, user_id, role).await? {
        return Err(AppError::NotFound);
    }
    flash(session, "member_removed").await?;
    Ok(Redirect::to(&format!(
        "/courses/{}/roster",
        access.course.id
    )))
}

pub async fn remove_ta(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
    Path((_, user_id)): Path<(String, String)>,
) -> AppResult<Redirect> {
    remove_with_role(&state, &session, &access, &user_id, CourseRole::Ta).await
}

pub async fn remove_student(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
    Path((_, user_id)): Path<(String, String)>,
) -> AppResult<Redirect> {
    remove_with_role(&state, &session, &access, &user_id, CourseRole::Student).await
}

/// A spreadsheet would run a cell that starts with `=`, `+`, `-`, `@` (or a
/// tab or carriage return) as a formula: prefix such cells with `'`.
pub fn csv_safe(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

pub fn roster_csv(course: &Course, roster: &[RosterEntry]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["course", "term", "name", "email", "role", "joined_utc"])?;
    for r in roster {
        w.write_record([
            csv_safe(&course.code),
            csv_safe(&course.term),
            csv_safe(&r.display_name),
            csv_safe(&r.email),
            r.role.as_str().to_owned(),
            super::templates::datetime(&r.joined_at),
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))
}

pub async fn roster_export(
    State(state): State<AppState>,
    access: CourseStaff,
) -> AppResult<Response> {
    let roster = courses::roster(&state.db, &access.course.id).await?;
    let body = roster_csv(&access.course, &roster)?;
    Ok(csv_download("roster", &access.course, body))
}

/// A CSV file download named `<what>-<code>-<term>.csv` (safe characters only).
pub fn csv_download(what: &str, course: &Course, body: impl IntoResponse) -> Response {
    csv_file(&format!("{what}-{}-{}", course.code, course.term), body)
}

/// A CSV file download named `<stem>.csv` (safe characters only).
pub fn csv_file(stem: &str, body: impl IntoResponse) -> Response {
    let filename = format!("{stem}.csv").replace(
        |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'),
        "_",
    );
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::csv_safe;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(csv_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_safe("+1"), "'+1");
        assert_eq!(csv_safe("-2"), "'-2");
        assert_eq!(csv_safe("@SUM"), "'@SUM");
        assert_eq!(csv_safe("Kim Minji"), "Kim Minji");
        assert_eq!(csv_safe(""), "");
    }
}
