//! Domain newtypes: values are parsed once at the edge, so invalid data cannot
//! reach the database. Parse errors are message keys that templates turn into
//! text (see `templates/macros/messages.html`).

use std::fmt;

/// A message key for a field error, rendered by the templates.
pub type MessageKey = &'static str;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Self::parse(&s).ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)).into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What a user account is for; site admins are `Admin`.
    UserKind { Admin => "admin", Instructor => "instructor", Student => "student", Company => "company" }
);
string_enum!(
    /// A user's role in one course.
    CourseRole { Instructor => "instructor", Ta => "ta", Student => "student" }
);
string_enum!(
    /// Kinds of organisation.
    OrgKind { University => "university", Company => "company" }
);
string_enum!(
    /// A user's role in an organisation.
    OrgRole { Member => "member", Admin => "admin" }
);

string_enum!(
    /// Where a company stands with a university: only `Approved` lets it post
    /// to the university's students.
    ConnectionState { Requested => "requested", Approved => "approved", Rejected => "rejected", Revoked => "revoked" }
);
string_enum!(
    /// What a posting offers: a joint project or an internship (a company
    /// posting to a university's students), or a visiting-engineer position (a
    /// university posting to connected companies' members).
    PostingKind { Project => "project", Internship => "internship", Visiting => "visiting" }
);
string_enum!(
    /// A posting's life: draft → submitted → approved | changes_requested →
    /// open → closed | expired.
    PostingState {
        Draft => "draft",
        Submitted => "submitted",
        Approved => "approved",
        ChangesRequested => "changes_requested",
        Open => "open",
        Closed => "closed",
        Expired => "expired",
    }
);
string_enum!(
    /// An application's pipeline: applied → under_review → interview → offer →
    /// accepted | declined; withdrawn or rejected on the way.
    ApplicationState {
        Applied => "applied",
        UnderReview => "under_review",
        Interview => "interview",
        Offer => "offer",
        Accepted => "accepted",
        Declined => "declined",
        Withdrawn => "withdrawn",
        Rejected => "rejected",
    }
);

impl ApplicationState {
    /// No further change is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Accepted | Self::Declined | Self::Withdrawn | Self::Rejected
        )
    }

    /// Moves the posting side may make from here.
    pub fn reviewer_moves(self) -> &'static [ApplicationState] {
        use ApplicationState::*;
        match self {
            Applied => &[UnderReview, Rejected],
            UnderReview => &[Interview, Offer, Rejected],
            Interview => &[Offer, Rejected],
            _ => &[],
        }
    }

    /// Moves the applicant may make from here.
    pub fn applicant_moves(self) -> &'static [ApplicationState] {
        use ApplicationState::*;
        match self {
            Offer => &[Accepted, Declined],
            Applied | UnderReview | Interview => &[Withdrawn],
            _ => &[],
        }
    }
}

impl PostingKind {
    /// Company postings address a university's students; visiting positions
    /// are posted by the university itself.
    pub fn posted_by(self) -> OrgKind {
        match self {
            Self::Project | Self::Internship => OrgKind::Company,
            Self::Visiting => OrgKind::University,
        }
    }
}

/// A list of skills, normalised for search: lower case, trimmed, unique, at
/// most 20 of 40 characters each, stored comma-wrapped (`,nlp,rust,`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Skills(Vec<String>);

impl Skills {
    pub fn parse(raw: &str) -> Result<Self, MessageKey> {
        let mut out: Vec<String> = Vec::new();
        for part in raw.split([',', '\n']) {
            let s = part.trim().to_lowercase();
            if s.is_empty() {
                continue;
            }
            if s.chars().count() > 40 || s.chars().any(|c| c.is_control() || c == '%' || c == '_') {
                return Err("skills_invalid");
            }
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if out.len() > 20 {
            return Err("skills_invalid");
        }
        Ok(Self(out))
    }
    pub fn from_stored(stored: &str) -> Self {
        Self(
            stored
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
    pub fn stored(&self) -> String {
        format!(",{},", self.0.join(","))
    }
    pub fn list(&self) -> &[String] {
        &self.0
    }
    pub fn display(&self) -> String {
        self.0.join(", ")
    }
}

/// A calendar date as `YYYY-MM-DD`.
pub fn parse_date(raw: &str) -> Result<Option<String>, MessageKey> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, format)
        .map(|d| Some(d.to_string()))
        .map_err(|_| "date_invalid")
}

/// Optional free text of at most `max` characters (may be empty).
pub fn parse_optional_text(raw: &str, max: usize) -> Result<String, MessageKey> {
    let s = raw.trim();
    if s.chars().count() > max {
        Err("text_too_long")
    } else if s
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        Err("text_invalid")
    } else {
        Ok(s.to_owned())
    }
}

/// A lower-cased, syntactically plausible email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, MessageKey> {
        let s = raw.trim().to_lowercase();
        let (local, domain) = s.split_once('@').ok_or("email_invalid")?;
        let ok = !local.is_empty()
            && s.len() <= 254
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && !domain.contains('@');
        if ok {
            Ok(Self(s))
        } else {
            Err("email_invalid")
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password: long enough, not absurdly long.
pub struct NewPassword(String);

impl NewPassword {
    pub const MIN_LEN: usize = 10;
    pub fn parse(raw: &str) -> Result<Self, MessageKey> {
        let n = raw.chars().count();
        if n < Self::MIN_LEN {
            Err("password_too_short")
        } else if raw.len() > 1024 {
            Err("password_too_long")
        } else {
            Ok(Self(raw.to_owned()))
        }
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

/// Trimmed non-empty text with a maximum length.
fn bounded(
    raw: &str,
    max: usize,
    empty: MessageKey,
    long: MessageKey,
) -> Result<String, MessageKey> {
    let s = raw.trim();
    if s.is_empty() {
        Err(empty)
    } else if s.chars().count() > max {
        Err(long)
    } else if s
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        Err("text_invalid")
    } else {
        Ok(s.to_owned())
    }
}

/// A person's display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, MessageKey> {
        bounded(raw, 100, "name_required", "name_too_long").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A course code such as `AI501` or `CSE-4010`: letters, digits, `-` and `.`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CourseCode(String);

impl CourseCode {
    pub fn parse(raw: &str) -> Result<Self, MessageKey> {
        let s = raw.trim().to_uppercase();
        let ok = (2..=20).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if ok {
            Ok(Self(s))
        } else {
            Err("course_code_invalid")
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A course title.
pub fn parse_title(raw: &str) -> Result<String, MessageKey> {
    bounded(raw, 200, "title_required", "title_too_long")
}

/// A term such as `2027-spring`.
pub fn parse_term(raw: &str) -> Result<String, MessageKey> {
    bounded(raw, 40, "term_required", "term_too_long")
}

/// Free-form description (may be empty).
pub fn parse_description(raw: &str) -> Result<String, MessageKey> {
    let s = raw.trim();
    if s.chars().count() > 20_000 {
        Err("description_too_long")
    } else {
        Ok(s.to_owned())
    }
}

/// An organisation slug: lower-case letters, digits and `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, MessageKey> {
        let s = raw.trim().to_lowercase();
        let ok = (2..=40).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s))
        } else {
            Err("slug_invalid")
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A course join code: 8 characters from an unambiguous alphabet.
pub struct JoinCode;

impl JoinCode {
    const ALPHABET: &'static [u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    pub fn generate() -> String {
        use rand::Rng as _;
        let mut rng = rand::rngs::OsRng;
        (0..8)
            .map(|_| Self::ALPHABET[rng.gen_range(0..Self::ALPHABET.len())] as char)
            .collect()
    }
    /// Normalises what a student typed: upper case, no spaces or dashes.
    pub fn normalise(raw: &str) -> String {
        raw.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
            .to_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Kim@Uni.AC.kr ").unwrap().as_str(),
            "kim@uni.ac.kr"
        );
        for bad in [
            "",
            "kim",
            "kim@",
            "@uni.kr",
            "kim@uni",
            "ki m@uni.kr",
            "a@b@c.kr",
            "kim@.kr",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn course_codes_and_slugs() {
        assert_eq!(CourseCode::parse("ai501").unwrap().as_str(), "AI501");
        assert!(CourseCode::parse("AI 501").is_err());
        assert!(CourseCode::parse("=cmd").is_err());
        assert!(Slug::parse("hanbit-univ").is_ok());
        assert!(Slug::parse("-x").is_err());
        assert!(Slug::parse("../etc").is_err());
    }

    #[test]
    fn passwords_and_names() {
        assert_eq!(
            NewPassword::parse("short").unwrap_err(),
            "password_too_short"
        );
        assert!(NewPassword::parse("long enough pw").is_ok());
        assert_eq!(DisplayName::parse("   ").unwrap_err(), "name_required");
        assert_eq!(DisplayName::parse("a\u{0}b").unwrap_err(), "text_invalid");
    }

    #[test]
    fn join_codes() {
        let code = JoinCode::generate();
        assert_eq!(code.len(), 8);
        assert_eq!(JoinCode::normalise(&code.to_lowercase()), code);
        assert_eq!(JoinCode::normalise(" abcd-efgh "), "ABCDEFGH");
    }

    #[test]
    fn enums_round_trip() {
        for k in UserKind::ALL {
            assert_eq!(UserKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(CourseRole::parse("ta"), Some(CourseRole::Ta));
        assert_eq!(CourseRole::parse("owner"), None);
    }
}
