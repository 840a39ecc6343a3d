//! Test harness for Sanhak's end-to-end tests: a real server on port 0 over a
//! fresh database (a temporary SQLite file, or a new PostgreSQL database that
//! is dropped afterwards), and HTTP clients that act as different people.
//!
//! Every story runs on both backends through [`both_backends!`].

use std::net::SocketAddr;

use reqwest::redirect::Policy;
use reqwest::{Client, Response, StatusCode};
use sanhak::config::Settings;
use sanhak::db::users::User;
use sanhak::db::{orgs, users, Db};
use sanhak::domain::{DisplayName, Email, OrgKind, Slug, UserKind};
use sanhak::startup::Application;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("SANHAK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh, empty database; PostgreSQL ones are dropped on drop.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb {
                    url,
                    pg_name: None,
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("sanhak_t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL must be running at {admin}: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = postgres_admin_url();
        // Drop from a separate thread with its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A running Sanhak server on a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: Db,
    pub backend: Backend,
    pub test_db: TestDb,
    pub state: sanhak::state::AppState,
}

/// The workspace's `labs/` folder.
pub fn labs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../labs")
        .canonicalize()
        .expect("labs folder")
}

/// The `sanhak` binary of this build (`target/<profile>/sanhak`), which
/// `cargo test --workspace` builds for the app's CLI tests.
pub fn sanhak_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/sanhak
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("sanhak"))
        .expect("target folder");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p sanhak` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

pub const PASSWORD: &str = "correct horse battery";

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with settings changed by `adjust` (the labs
    /// folder is the workspace's).
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> Self {
        let test_db = TestDb::new(backend).await;
        Self::attach_with(backend, test_db, adjust).await
    }

    /// A server on an existing database (e.g. one another process also serves).
    pub async fn attach(backend: Backend, test_db: TestDb) -> Self {
        Self::attach_with(backend, test_db, |_| {}).await
    }

    async fn attach_with(
        backend: Backend,
        test_db: TestDb,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings {
            database_url: Some(test_db.url.clone()),
            data_dir: Some(test_db.dir().to_path_buf()),
            bind: Some("127.0.0.1:0".parse().expect("addr")),
            log: Some("warn".into()),
            labs_dir: Some(labs_dir()),
            ..Settings::default()
        };
        adjust(&mut settings);
        let config = settings.resolve().expect("config");
        let app = Application::build(config).await.expect("build app");
        let addr = app.local_addr().expect("addr");
        let db = app.state.db.clone();
        let state = app.state.clone();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            addr,
            db,
            backend,
            test_db,
            state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A new browser-like client with its own cookie jar.
    pub fn browser(&self) -> Browser {
        let client = Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .build()
            .expect("client");
        Browser {
            client,
            base: format!("http://{}", self.addr),
        }
    }

    /// Creates an account directly in the database.
    pub async fn create_user(&self, email: &str, kind: UserKind) -> User {
        let hash = sanhak::secrets::hash_password(PASSWORD).expect("hash");
        let name = email.split('@').next().unwrap_or("user");
        users::create(
            &self.db,
            &Email::parse(email).expect("email"),
            &DisplayName::parse(name).expect("name"),
            &hash,
            kind,
        )
        .await
        .expect("create user")
    }

    pub async fn create_org(&self, slug: &str, kind: OrgKind) -> orgs::Org {
        orgs::create(&self.db, &Slug::parse(slug).expect("slug"), slug, kind, "")
            .await
            .expect("create org")
    }

    /// Creates an account and returns a browser logged in as it.
    pub async fn logged_in(&self, email: &str, kind: UserKind) -> (User, Browser) {
        let user = self.create_user(email, kind).await;
        let browser = self.browser();
        let r = browser.login(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "login of {email} failed");
        (user, browser)
    }
}

/// An HTTP client that keeps cookies and does not follow redirects.
pub struct Browser {
    pub client: Client,
    pub base: String,
}

impl Browser {
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .expect("GET")
    }

    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let r = self.get(path).await;
        let status = r.status();
        (status, r.text().await.expect("body"))
    }

    /// The session's CSRF token, read from a page's forms (the login page
    /// for visitors, the token settings page for signed-in users).
    pub async fn csrf(&self) -> String {
        for page in ["/login", "/settings/tokens"] {
            let (_, html) = self.get_text(page).await;
            if let Some(t) = extract_csrf(&html) {
                return t;
            }
        }
        panic!("no page showed a CSRF token")
    }

    /// POSTs a urlencoded form with the session's CSRF token added.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        let token = self.csrf().await;
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("_csrf", &token));
        self.client
            .post(format!("{}{}", self.base, path))
            .form(&all)
            .send()
            .await
            .expect("POST")
    }

    /// POSTs a form without any CSRF token.
    pub async fn post_form_without_csrf(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        self.client
            .post(format!("{}{}", self.base, path))
            .form(fields)
            .send()
            .await
            .expect("POST")
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_form("/login", &[("email", email), ("password", password)])
            .await
    }
}

pub fn extract_csrf(html: &str) -> Option<String> {
    let marker = "name=\"_csrf\" value=\"";
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// The text after `marker` up to the next `<` (a value shown once on a page).
pub fn shown_value(html: &str, marker: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("page lacks {marker}"))
        + marker.len();
    html[start..].chars().take_while(|c| *c != '<').collect()
}

/// The path `/invite/<token>` of the invitation link shown on a page.
pub fn invite_path(html: &str) -> String {
    let start = html.find("/invite/").expect("invitation link shown");
    let token: String = html[start + 8..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("/invite/{token}")
}

/// A multipart/form-data body: text fields, then file fields as
/// (field, file name, bytes). Returns the content type and the body.
pub fn multipart_body(texts: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "sanhak-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, value) in texts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, filename, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl Browser {
    /// POSTs a multipart form (the CSRF token goes in the query string).
    pub async fn post_multipart(
        &self,
        path: &str,
        texts: &[(&str, &str)],
        files: &[(&str, &str, &[u8])],
    ) -> Response {
        let token = self.csrf().await;
        let (content_type, body) = multipart_body(texts, files);
        let sep = if path.contains('?') { '&' } else { '?' };
        self.client
            .post(format!("{}{}{sep}_csrf={token}", self.base, path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("POST multipart")
    }
}

/// Where a redirect points.
pub fn location(r: &Response) -> String {
    r.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A bearer-token API client.
pub struct Api {
    pub client: Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(app: &TestApp, token: Option<String>) -> Self {
        Api {
            client: Client::new(),
            base: format!("http://{}", app.addr),
            token,
        }
    }
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self
            .client
            .request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }
}

/// Runs an async test body against a fresh app on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::TestApp::spawn($crate::Backend::Sqlite).await;
                ($body)(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = $crate::TestApp::spawn($crate::Backend::Postgres).await;
                ($body)(app).await;
            }
        }
    };
}
