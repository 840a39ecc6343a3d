//! `sanhak demo`: seeds an example university, company, people and course.
//! Every step is get-or-create by natural key, so running it again creates
//! nothing new.

use crate::db::courses::NewCourse;
use crate::db::users::User;
use crate::db::{courses, orgs, users, Db};
use crate::domain::{CourseCode, CourseRole, DisplayName, Email, OrgKind, OrgRole, Slug, UserKind};
use crate::secrets;

/// The password of every demo account (local demo data only).
pub const DEMO_PASSWORD: &str = "sanhak-demo-2027";

pub struct DemoAccount {
    pub email: &'static str,
    pub name: &'static str,
    pub kind: UserKind,
}

pub const ACCOUNTS: &[DemoAccount] = &[
    DemoAccount {
        email: "admin@sanhak.test",
        name: "Site Admin",
        kind: UserKind::Admin,
    },
    DemoAccount {
        email: "prof.kim@hanbit.ac.kr",
        name: "Kim Jiwon",
        kind: UserKind::Instructor,
    },
    DemoAccount {
        email: "minji@students.hanbit.ac.kr",
        name: "Lee Minji",
        kind: UserKind::Student,
    },
    DemoAccount {
        email: "junho@students.hanbit.ac.kr",
        name: "Park Junho",
        kind: UserKind::Student,
    },
    DemoAccount {
        email: "seoyeon@students.hanbit.ac.kr",
        name: "Choi Seoyeon",
        kind: UserKind::Student,
    },
    DemoAccount {
        email: "engineer@nuri-ai.example",
        name: "Jung Hyunwoo",
        kind: UserKind::Company,
    },
];

pub const UNIVERSITY_SLUG: &str = "hanbit-univ";
pub const COMPANY_SLUG: &str = "nuri-ai";
pub const COURSE_CODE: &str = "AI501";
pub const COURSE_TERM: &str = "2027-spring";

pub struct Seeded {
    pub course_id: String,
    pub join_code: String,
}

async fn user(db: &Db, account: &DemoAccount, hash: &str) -> anyhow::Result<User> {
    if let Some(u) = users::by_email(db, account.email).await? {
        return Ok(u);
    }
    let email = Email::parse(account.email).map_err(anyhow::Error::msg)?;
    let name = DisplayName::parse(account.name).map_err(anyhow::Error::msg)?;
    Ok(users::create(db, &email, &name, hash, account.kind).await?)
}

async fn org(
    db: &Db,
    slug: &str,
    name: &str,
    kind: OrgKind,
    description: &str,
) -> anyhow::Result<orgs::Org> {
    if let Some(o) = orgs::by_slug(db, slug).await? {
        return Ok(o);
    }
    let slug = Slug::parse(slug).map_err(anyhow::Error::msg)?;
    Ok(orgs::create(db, &slug, name, kind, description).await?)
}

/// Seeds the demo data; safe to run any number of times.
pub async fn seed(db: &Db) -> anyhow::Result<Seeded> {
    let hash = secrets::hash_password_blocking(DEMO_PASSWORD.to_owned()).await?;
    let university = org(
        db,
        UNIVERSITY_SLUG,
        "Hanbit University",
        OrgKind::University,
        "A (fictional) university running industry-linked AI courses.",
    )
    .await?;
    let company = org(
        db,
        COMPANY_SLUG,
        "Nuri AI",
        OrgKind::Company,
        "A (fictional) AI start-up that co-teaches and sponsors labs.",
    )
    .await?;
    let mut people = Vec::new();
    for account in ACCOUNTS {
        people.push(user(db, account, &hash).await?);
    }
    let instructor = &people[1];
    orgs::set_member(db, &university.id, &instructor.id, OrgRole::Admin).await?;
    orgs::set_member(db, &company.id, &people[5].id, OrgRole::Admin).await?;

    let existing = courses::find_by_code_term(db, &university.id, COURSE_CODE, COURSE_TERM).await?;
    let course_id = match existing {
        Some(c) => c.id,
        None => {
            let code = CourseCode::parse(COURSE_CODE).map_err(anyhow::Error::msg)?;
            courses::create(
                db,
                NewCourse {
                    code: &code,
                    title: "Fine-tuning Small Models",
                    term: COURSE_TERM,
                    university_id: &university.id,
                    description:
                        "Transfer learning, LoRA and evaluation, taught with Nuri AI engineers.",
                    instructor_id: &instructor.id,
                },
            )
            .await?
        }
    };
    for student in people.iter().filter(|u| u.kind == UserKind::Student) {
        courses::enroll(db, &course_id, &student.id, CourseRole::Student).await?;
    }
    seed_industry(db, &university, &company, instructor, &people[5]).await?;
    // joint projects: a formed team (Lee Minji leading, Park Junho) on the
    // demo's joint project, advised by Kim Jiwon, approved by Nuri AI.
    if let Some(project) = crate::db::postings::of_org(db, &company.id)
        .await?
        .into_iter()
        .find(|p| p.kind == crate::domain::PostingKind::Project)
    {
        crate::db::projects::seed_demo_team(
            db,
            &project.id,
            &people[2].id,
            std::slice::from_ref(&people[3].id),
            &instructor.id,
            &people[5].id,
        )
        .await?;
    }
    crate::db::vouchers::seed_demo(db, &course_id, &people[0].id).await?;
    let course = courses::by_id(db, &course_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("demo course vanished"))?;
    Ok(Seeded {
        course_id,
        join_code: course.join_code,
    })
}

/// Offers every lab of the catalog in the demo course (keeping settings
/// changed since): due in two weeks, late submissions for three days at 10%
/// a day, ten attempts a day, the best attempt counting.
pub async fn offer_labs(db: &Db, course_id: &str, lab_ids: &[String]) -> anyhow::Result<()> {
    use crate::db::labs::{LabSettings, LatePolicy};
    let settings = LabSettings {
        due_at: Some(crate::db::now() + 14 * 86_400),
        late_policy: LatePolicy::Penalty,
        late_penalty_pct: 10.0,
        late_days: 3,
        max_per_day: Some(10),
        ..LabSettings::default()
    };
    for id in lab_ids {
        if crate::db::labs::get(db, course_id, id).await?.is_none() {
            crate::db::labs::put(db, course_id, id, &settings).await?;
        }
    }
    Ok(())
}

/// The demo's industry side: Nuri AI approved to post to Hanbit's students,
/// and three open postings that went through approval: a joint project, an
/// internship (student → company) and a visiting-engineer position
/// (company → university).
async fn seed_industry(
    db: &Db,
    university: &orgs::Org,
    company: &orgs::Org,
    university_admin: &User,
    company_admin: &User,
) -> anyhow::Result<()> {
    use crate::db::postings::{self, PostingFields};
    use crate::domain::{ConnectionState, PostingKind, PostingState, Skills};

    if orgs::connection_state(db, &company.id, &university.id).await?
        != Some(ConnectionState::Approved)
    {
        orgs::request_connection(
            db,
            &company.id,
            &university.id,
            "We co-teach AI501 and would like to offer projects and internships.",
            &company_admin.id,
        )
        .await?;
        orgs::decide_connection(
            db,
            &company.id,
            &university.id,
            ConnectionState::Approved,
            &university_admin.id,
        )
        .await?;
    }
    let skills = |s: &str| {
        Skills::parse(s)
            .map(|k| k.stored())
            .map_err(anyhow::Error::msg)
    };
    let postings_to_seed = [
        (
            PostingKind::Project,
            company,
            PostingFields {
                title: "Intent classifier for Korean customer-support chats".into(),
                body: "Nuri AI receives thousands of support chats a day. Build a small, fast \
                       classifier that routes each chat to one of 12 intents, fine-tuned from a \
                       small multilingual encoder, and measure it against our current rules.\n\n\
                       **Deliverables:** a training recipe, an evaluation report, a demo."
                    .into(),
                requirements:
                    "- Completed a machine-learning course\n- Comfortable with Rust or Python"
                        .into(),
                skills: skills("nlp, fine-tuning, evaluation")?,
                location: "Seoul (Pangyo)".into(),
                remote: true,
                starts_on: Some("2027-03-02".into()),
                ends_on: Some("2027-06-18".into()),
                compensation: "Monthly research stipend for each team member".into(),
                apply_by: Some(crate::db::now() + 30 * 86_400),
                dataset: "120,000 anonymised chat turns with intent labels (NDA)".into(),
                duration_weeks: Some(16),
                team_size: Some(4),
                mentor_id: Some(company_admin.id.clone()),
                nda_required: true,
                ..PostingFields::default()
            },
        ),
        (
            PostingKind::Internship,
            company,
            PostingFields {
                title: "Summer ML engineering internship".into(),
                body: "Eight weeks with Nuri AI's model team: data pipelines, fine-tuning and \
                       evaluation of small language models in production."
                    .into(),
                requirements: "- Third- or fourth-year student\n- A CV (PDF)".into(),
                skills: skills("pytorch, candle, nlp")?,
                role: "ML engineer intern".into(),
                location: "Seoul (Pangyo)".into(),
                starts_on: Some("2027-07-01".into()),
                ends_on: Some("2027-08-26".into()),
                compensation: "2,500,000 KRW a month".into(),
                apply_by: Some(crate::db::now() + 45 * 86_400),
                ..PostingFields::default()
            },
        ),
        (
            PostingKind::Visiting,
            university,
            PostingFields {
                title: "Visiting engineer: teach the LoRA module of AI501".into(),
                body: "Hanbit University invites an industry engineer to teach two weeks of \
                       AI501 (parameter-efficient fine-tuning), with one lab of their own."
                    .into(),
                requirements: "- Shipped a fine-tuned model to production".into(),
                skills: skills("lora, teaching")?,
                role: "Adjunct lecturer (two weeks)".into(),
                location: "Hanbit University, Daejeon".into(),
                starts_on: Some("2027-04-05".into()),
                ends_on: Some("2027-04-16".into()),
                compensation: "Adjunct lecture fee".into(),
                apply_by: Some(crate::db::now() + 30 * 86_400),
                ..PostingFields::default()
            },
        ),
    ];
    for (kind, org, fields) in postings_to_seed {
        let existing = postings::of_org(db, &org.id).await?;
        if existing.iter().any(|p| p.title == fields.title) {
            continue;
        }
        let author = if org.id == company.id {
            company_admin
        } else {
            university_admin
        };
        let id = postings::create(db, kind, &org.id, &university.id, &fields, &author.id).await?;
        postings::transition(
            db,
            &id,
            &[PostingState::Draft],
            PostingState::Submitted,
            &author.id,
            "",
        )
        .await?;
        postings::transition(
            db,
            &id,
            &[PostingState::Submitted],
            PostingState::Approved,
            &university_admin.id,
            "Approved for the spring term.",
        )
        .await?;
        postings::transition(
            db,
            &id,
            &[PostingState::Approved],
            PostingState::Open,
            &author.id,
            "",
        )
        .await?;
    }
    Ok(())
}
