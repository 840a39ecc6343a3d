//! Publishing lab packages: hostile archives are refused with their message
//! and nothing stored; a good archive of fashion-transfer is checked, goes
//! live and becomes the catalog's latest version while the older version
//! stays servable to runners; version strings are immutable; the browser
//! upload and preview pages work.

use std::io::Write as _;
use std::path::Path;

use reqwest::{Method, StatusCode};
use sanhak::domain::UserKind;
use sanhak_tests::{both_backends, labs_dir, Api, TestApp};

const LAB: &str = "fashion-transfer";
const VERSION: &str = "9.9.9-published";

/// The lab folder's files (without dot-files), with `lab.toml`'s version
/// replaced, as (path, bytes).
fn lab_files(version: &str) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            let child = rel.join(&name);
            if e.file_type().unwrap().is_dir() {
                walk(root, &child, out);
            } else {
                out.push((
                    child.to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&labs_dir().join(LAB), Path::new(""), &mut out);
    for (path, data) in &mut out {
        if path == "lab.toml" {
            let text = String::from_utf8(data.clone()).unwrap();
            assert!(text.contains("version = \"1.0.0\""));
            *data = text
                .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
                .into_bytes();
        }
    }
    out
}

/// A .tar.gz of the files under a top folder `fashion-transfer/`, built with the tar crate.
fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("{LAB}/{path}"), data.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A one-entry tar whose header is written raw (the tar crate's builder
/// refuses `..` and absolute names, as it should).
fn raw_tar(name: &str, ty: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(ty);
    if ty == tar::EntryType::Symlink {
        h.set_link_name("/etc/passwd").unwrap();
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A tar.gz of one big file of zeros, written through the builder's stream.
fn zeros_tar_gz(name: &str, len: usize) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, std::io::repeat(0).take(len as u64))
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

use std::io::Read as _;

async fn post_archive(api: &Api, bytes: Vec<u8>, content_type: &str) -> reqwest::Response {
    api.request(Method::POST, "/api/v1/labs")
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Nothing published beyond the labs folder's versions, and nothing stored.
async fn nothing_stored(app: &TestApp) {
    let stored: Vec<_> = sanhak::db::publish::list(&app.db, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_folder())
        .collect();
    assert!(stored.is_empty(), "versions recorded: {stored:?}");
    let store = app.state.config.data_dir.join(sanhak::publish::STORE_DIR);
    assert!(!store.exists(), "{} was created", store.display());
    let incoming = app
        .state
        .config
        .data_dir
        .join(sanhak::publish::INCOMING_DIR);
    let leftovers = std::fs::read_dir(&incoming).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        leftovers,
        0,
        "temporary folders left in {}",
        incoming.display()
    );
}

/// A multipart/form-data body with one file field `archive`.
fn multipart(bytes: &[u8], filename: &str) -> (String, Vec<u8>) {
    sanhak_tests::multipart_body(&[], &[("archive", filename, bytes)])
}

both_backends!(hostile_archives_are_refused, |app: TestApp| async move {
    let instructor = app
        .create_user("prof@pub.ac.kr", UserKind::Instructor)
        .await;
    let token = sanhak::db::tokens::create(&app.db, &instructor.id, "push")
        .await
        .unwrap();
    let api = Api::new(&app, Some(token));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "zip-slip",
            raw_tar("../evil", tar::EntryType::Regular, b"x"),
            "../evil: paths with `..` are not allowed",
        ),
        (
            "absolute path",
            gz(&raw_tar("/tmp/evil", tar::EntryType::Regular, b"x")),
            "/tmp/evil: absolute paths are not allowed",
        ),
        (
            "symlink",
            raw_tar("fashion-transfer/data", tar::EntryType::Symlink, b""),
            "fashion-transfer/data: symbolic links are not allowed",
        ),
        (
            "device",
            raw_tar("fashion-transfer/tty", tar::EntryType::Char, b""),
            "fashion-transfer/tty: devices, FIFOs and other special files are not allowed",
        ),
        (
            "oversized file",
            zeros_tar_gz("fashion-transfer/data/huge.bin", 101 * 1024 * 1024),
            "fashion-transfer/data/huge.bin: larger than the 100 MB limit per file",
        ),
        (
            "compression bomb",
            zeros_tar_gz("fashion-transfer/data/zeros.bin", 50 * 1024 * 1024),
            "fashion-transfer/data/zeros.bin: compressed more than 100:1",
        ),
    ];
    for (what, bytes, message) in cases {
        let r = post_archive(&api, bytes, "application/gzip").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        let body: serde_json::Value = r.json().await.unwrap();
        let got = body["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{what}: {got}");
        nothing_stored(&app).await;
    }

    // The same refusal in the browser, with the message on the page.
    let (_, browser) = app.logged_in("prof2@pub.ac.kr", UserKind::Instructor).await;
    let csrf = browser.csrf().await;
    let (ct, body) = multipart(
        &raw_tar("../evil", tar::EntryType::Regular, b"x"),
        "evil.tar",
    );
    let r = browser
        .client
        .post(format!("{}/labs/publish?_csrf={csrf}", browser.base))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("../evil: paths with `..` are not allowed"),
        "{html}"
    );
    nothing_stored(&app).await;
});

both_backends!(
    a_good_archive_is_checked_and_goes_live,
    |app: TestApp| async move {
        let old = app.state.queue.catalog.get(LAB).expect("the folder's lab");
        assert_eq!(old.package.version, "1.0.0");
        let instructor = app
            .create_user("prof@pub.ac.kr", UserKind::Instructor)
            .await;
        let student = app.create_user("kim@pub.ac.kr", UserKind::Student).await;
        let token = sanhak::db::tokens::create(&app.db, &instructor.id, "push")
            .await
            .unwrap();
        let student_token = sanhak::db::tokens::create(&app.db, &student.id, "push")
            .await
            .unwrap();
        let api = Api::new(&app, Some(token));
        let archive = tar_gz(&lab_files(VERSION));

        // Students may not publish.
        let r = post_archive(
            &Api::new(&app, Some(student_token)),
            archive.clone(),
            "application/gzip",
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);

        let r = post_archive(&api, archive.clone(), "application/gzip").await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let published: serde_json::Value = r.json().await.unwrap();
        assert_eq!(published["lab_id"], LAB);
        assert_eq!(published["version"], VERSION);
        assert_eq!(published["unchanged"], false);
        let hash = published["hash"].as_str().unwrap().to_owned();
        assert_ne!(hash, old.package.hash);
        let stored = sanhak::publish::store_path(&app.state.config.data_dir, LAB, &hash);
        assert!(stored.join("lab.toml").is_file());

        // The check trains the starter and the solution briefly; wait for it.
        let version_path = format!("/api/v1/labs/{LAB}/versions/{VERSION}");
        let mut view = serde_json::Value::Null;
        for _ in 0..1800 {
            let r = api
                .request(Method::GET, &version_path)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            view = r.json().await.unwrap();
            if view["state"] != "checking" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert_eq!(view["state"], "live", "{view}");
        assert_eq!(view["source"], "push");
        let report: serde_json::Value =
            serde_json::from_str(view["check_report"].as_str().unwrap()).unwrap();
        assert_eq!(report["failures"], serde_json::json!([]));

        // The catalog's latest is the new version; the old one stays servable.
        let latest = app.state.queue.catalog.get(LAB).unwrap();
        assert_eq!(latest.package.version, VERSION);
        assert_eq!(latest.package.hash, hash);
        let (_, runner_token) = sanhak::db::runners::create(&app.db, "r1", None)
            .await
            .unwrap();
        let runner = Api::new(&app, Some(runner_token));
        let listing: serde_json::Value = runner
            .request(
                Method::GET,
                &format!("/api/runner/v1/labs/{LAB}?hash={}", old.package.hash),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listing["version"], "1.0.0");
        assert_eq!(listing["hash"], old.package.hash.as_str());
        let listing: serde_json::Value = runner
            .request(Method::GET, &format!("/api/runner/v1/labs/{LAB}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listing["version"], VERSION);
        let lab_toml = listing["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "lab.toml")
            .unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = runner
            .request(
                Method::GET,
                &format!("/api/runner/v1/labs/{LAB}/files/{lab_toml}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.text().await.unwrap().contains(VERSION));

        // The same content again changes nothing; other content under the same
        // version string is refused.
        let r = post_archive(&api, archive, "application/gzip").await;
        assert_eq!(r.status(), StatusCode::OK);
        let again: serde_json::Value = r.json().await.unwrap();
        assert_eq!(again["unchanged"], true);
        assert_eq!(again["state"], "live");
        let mut changed = lab_files(VERSION);
        changed.push(("NOTES.md".into(), b"an extra note".to_vec()));
        let r = post_archive(&api, tar_gz(&changed), "application/gzip").await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["message"],
            format!(
                "version {VERSION} of lab {LAB} is already published; bump the version in lab.toml"
            )
        );
        let versions: Vec<_> = sanhak::db::publish::list(&app.db, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.lab_id == LAB && v.version == VERSION)
            .collect();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].content_hash, hash);

        // The pages: the list shows the version live; the preview shows what
        // students see.
        let (_, browser) = app.logged_in("prof2@pub.ac.kr", UserKind::Instructor).await;
        let (status, html) = browser.get_text("/labs/publish").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains(&format!(
                "data-lab=\"{LAB}\" data-version=\"{VERSION}\" data-state=\"live\""
            )),
            "{html}"
        );
        let (status, html) = browser.get_text(&format!("/labs/{LAB}/preview")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains(&format!("Version {VERSION}")));
        assert!(html.contains("learning_rate"), "the recipe form is shown");
        let (status, html) = browser
            .get_text(&format!("/labs/{LAB}/preview?hash={}", old.package.hash))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("Version 1.0.0"));
    }
);

both_backends!(invalid_packages_are_refused, |app: TestApp| async move {
    let instructor = app
        .create_user("prof@pub.ac.kr", UserKind::Instructor)
        .await;
    let token = sanhak::db::tokens::create(&app.db, &instructor.id, "push")
        .await
        .unwrap();
    let api = Api::new(&app, Some(token));
    // Invalid lab.toml: refused at once, nothing stored.
    let mut files = lab_files("2.0.0");
    for (path, data) in &mut files {
        if path == "lab.toml" {
            *data = String::from_utf8(data.clone())
                .unwrap()
                .replace("[grading]", "[grading]\nbogus = 1")
                .into_bytes();
        }
    }
    let r = post_archive(&api, tar_gz(&files), "application/gzip").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("bogus"),
        "{body}"
    );
    nothing_stored(&app).await;
    // Wrong content type.
    let r = post_archive(&api, tar_gz(&lab_files("2.0.0")), "application/json").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    nothing_stored(&app).await;
});

/// The lab folder's files as a lab of another id.
fn renamed_lab(id: &str, version: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = lab_files(version);
    for (path, data) in &mut files {
        if path == "lab.toml" {
            *data = String::from_utf8(data.clone())
                .unwrap()
                .replace(&format!("id = \"{LAB}\""), &format!("id = \"{id}\""))
                .into_bytes();
        }
    }
    files
}

async fn upload_as(b: &sanhak_tests::Browser, sponsor: &str, archive: &[u8]) -> reqwest::Response {
    b.post_multipart(
        "/labs/publish",
        &[("sponsor", sponsor)],
        &[("archive", "lab.tar.gz", archive)],
    )
    .await
}

both_backends!(
    company_sponsored_labs_are_credited_and_adopted,
    |app: TestApp| async move {
        use sanhak::domain::{CourseRole, OrgKind, OrgRole};
        let nuri = app.create_org("nuri", OrgKind::Company).await;
        let rival = app.create_org("rival", OrgKind::Company).await;
        let (eng, eng_b) = app.logged_in("eng@nuri.example", UserKind::Company).await;
        sanhak::db::orgs::set_member(&app.db, &nuri.id, &eng.id, OrgRole::Member)
            .await
            .unwrap();
        let (rv, rival_b) = app.logged_in("hr@rival.example", UserKind::Company).await;
        sanhak::db::orgs::set_member(&app.db, &rival.id, &rv.id, OrgRole::Member)
            .await
            .unwrap();

        // A company member must publish for one of their own companies.
        let archive = tar_gz(&renamed_lab("nuri-fashion", "1.0.0"));
        let r = upload_as(&eng_b, "", &archive).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("choose the company"));
        let r = upload_as(&eng_b, &rival.id, &archive).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        // … and cannot take over a university's lab id.
        let r = upload_as(&eng_b, &nuri.id, &tar_gz(&lab_files("7.0.0"))).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("is not a sponsored lab"));
        // The company path gets the same strict archive checks.
        for hostile in [
            raw_tar("../../evil.txt", tar::EntryType::Regular, b"x"),
            raw_tar("lab/link", tar::EntryType::Symlink, b""),
            zeros_tar_gz("lab/bomb.bin", 50 * 1024 * 1024),
        ] {
            let r = upload_as(&eng_b, &nuri.id, &hostile).await;
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        }
        nothing_stored(&app).await;

        // Published for Nuri: recorded with its sponsor, checked, then live.
        let r = upload_as(&eng_b, &nuri.id, &archive).await;
        assert_eq!(r.status(), StatusCode::OK);
        let version = sanhak::db::publish::find(&app.db, "nuri-fashion", "1.0.0")
            .await
            .unwrap()
            .expect("recorded");
        assert_eq!(version.sponsor_org_id.as_deref(), Some(nuri.id.as_str()));
        // Another company cannot publish versions of Nuri's lab.
        let r = upload_as(
            &rival_b,
            &rival.id,
            &tar_gz(&renamed_lab("nuri-fashion", "1.0.1")),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("is sponsored by nuri"));
        // The sponsor's members list and preview it; the rival does not see it.
        let (_, html) = eng_b.get_text("/labs/publish").await;
        assert!(html.contains("sponsored by nuri"));
        let (_, html) = rival_b.get_text("/labs/publish").await;
        assert!(!html.contains("nuri-fashion"));
        assert_eq!(
            rival_b
                .get(&format!(
                    "/labs/nuri-fashion/preview?hash={}",
                    version.content_hash
                ))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        for _ in 0..1800 {
            let v = sanhak::db::publish::find(&app.db, "nuri-fashion", "1.0.0")
                .await
                .unwrap()
                .unwrap();
            if v.state != "checking" {
                assert_eq!(v.state, "live", "{:?}", v.check_report);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert!(app.state.queue.catalog.get("nuri-fashion").is_some());

        // An instructor adopts it into a course; the lab page credits Nuri.
        let uni = app.create_org("hanbit", OrgKind::University).await;
        let (prof, prof_b) = app.logged_in("prof@pub.ac.kr", UserKind::Instructor).await;
        sanhak::db::orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Member)
            .await
            .unwrap();
        let course = sanhak::db::courses::create(
            &app.db,
            sanhak::db::courses::NewCourse {
                code: &sanhak::domain::CourseCode::parse("AI501").unwrap(),
                title: "Fine-tuning",
                term: "2027-spring",
                university_id: &uni.id,
                description: "",
                instructor_id: &prof.id,
            },
        )
        .await
        .unwrap();
        let (_, html) = prof_b.get_text(&format!("/courses/{course}")).await;
        assert!(html.contains("(sponsored by nuri)"), "credited in the list");
        let r = prof_b
            .post_form(
                &format!("/courses/{course}/labs"),
                &[("lab_id", "nuri-fashion")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (stu, stu_b) = app.logged_in("kim@pub.ac.kr", UserKind::Student).await;
        sanhak::db::courses::enroll(&app.db, &course, &stu.id, CourseRole::Student)
            .await
            .unwrap();
        let (status, html) = stu_b
            .get_text(&format!("/courses/{course}/labs/nuri-fashion"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("id=\"lab-sponsor\""));
        assert!(html.contains("Sponsored by <a href=\"/orgs/nuri\">nuri</a>"));
    }
);
