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
