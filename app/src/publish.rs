//! Publishing lab packages: an instructor uploads an archive (`.tar`,
//! `.tar.gz` or `.zip`) in the browser or posts it to the API (`sanhak lab
//! push`). The archive is read entirely in memory and refused, with nothing
//! written, when any entry is hostile (absolute or `..` paths, links,
//! devices, names that are not UTF-8, duplicates) or too big (file count,
//! per-file and total size, compression ratio). A good archive's lab folder
//! is written to a temporary folder inside the data folder, loaded with
//! `Lab::load`, moved to `<data_dir>/lab-store/<lab_id>/<hash>/<lab_id>/`
//! (never overwritten) and recorded as `checking`. A background task runs
//! `lab check --quick`; the version goes `live` (into the catalog) or
//! `rejected`, with the report.
//!
//! A version string names one content for good: publishing it again with
//! other content is refused, the same content again changes nothing. A
//! rejected version's string may be reused.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sanhak_runner::check::{check_lab, CheckOptions};
use sanhak_runner::lab::{is_lab_id, Lab, LabKind, MANIFEST_FILE};
use sanhak_runner::protocol::{self, LabFile, LabPackage};
use sanhak_runner::train::RunOptions;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::db::publish::{self as versions, LabVersion, NewVersion, Source, VersionState};
use crate::db::{is_unique_violation, new_id};
use crate::error::AppError;
use crate::queue::package_of;
use crate::state::AppState;

/// Folder of published packages inside the data folder.
pub const STORE_DIR: &str = "lab-store";
/// Folder of archives being unpacked and checked, inside the data folder.
pub const INCOMING_DIR: &str = "lab-incoming";
/// Step scale of the publishing check (`lab check --quick`).
pub const CHECK_STEP_SCALE: f64 = sanhak_runner::cli::QUICK_STEP_SCALE;
/// Largest archive accepted in a request body (compressed).
pub const MAX_ARCHIVE_BYTES: usize = 100 * 1024 * 1024;

/// What an archive may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    /// Largest uncompressed : compressed ratio (zip bombs).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 2_000,
            max_file_bytes: 100 * 1024 * 1024,
            max_total_bytes: 200 * 1024 * 1024,
            max_ratio: 100,
        }
    }
}

/// Below this many bytes the ratio is not checked: small text files of a
/// lab legitimately compress very well.
const RATIO_FLOOR: u64 = 1024 * 1024;

/// Why an archive is refused. Every message names the entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("not a .tar, .tar.gz or .zip archive")]
    UnknownFormat,
    #[error("the archive is damaged or unreadable: {0}")]
    Corrupt(String),
    #[error("{0}: absolute paths are not allowed in a lab archive")]
    AbsolutePath(String),
    #[error("{0}: paths with `..` are not allowed in a lab archive")]
    ParentDir(String),
    #[error("{0}: backslashes are not allowed in names (use `/`)")]
    Backslash(String),
    #[error("{0}: symbolic links are not allowed in a lab package")]
    Symlink(String),
    #[error("{0}: hard links are not allowed in a lab package")]
    HardLink(String),
    #[error("{0}: devices, FIFOs and other special files are not allowed in a lab package")]
    Special(String),
    #[error("an entry name is not valid UTF-8")]
    NotUtf8,
    #[error("{0}: the name appears twice in the archive")]
    Duplicate(String),
    #[error("the archive has more than {0} files")]
    TooManyFiles(usize),
    #[error("{name}: larger than the {limit_mb} MB limit per file")]
    FileTooLarge { name: String, limit_mb: u64 },
    #[error("the files add up to more than {0} MB uncompressed")]
    TooLarge(u64),
    #[error("{0}: compressed more than {1}:1, which looks like a zip bomb")]
    Ratio(String, u64),
    #[error("no lab.toml at the archive root or in a single top folder")]
    NoManifest,
}

/// One regular file of an archive.
#[derive(Debug, Clone)]
pub struct ArchiveFile {
    /// Relative path, `/`-separated, with no empty, `.` or `..` parts.
    pub path: String,
    pub data: Vec<u8>,
}

/// The archive formats accepted, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    TarGz,
    Zip,
}

impl ArchiveKind {
    pub fn sniff(bytes: &[u8]) -> Option<ArchiveKind> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(ArchiveKind::TarGz)
        } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Some(ArchiveKind::Zip)
        } else if bytes.len() >= 512 && &bytes[257..262] == b"ustar" {
            Some(ArchiveKind::Tar)
        } else {
            None
        }
    }
}

/// Checks an entry name and returns its normalised relative path.
pub fn clean_path(name: &str) -> Result<String, ArchiveError> {
    if name.starts_with('/') {
        return Err(ArchiveError::AbsolutePath(name.to_owned()));
    }
    if name.contains('\\') {
        return Err(ArchiveError::Backslash(name.to_owned()));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ArchiveError::ParentDir(name.to_owned())),
            p if p.contains(':') && parts.is_empty() && p.len() == 2 => {
                // `C:` — a Windows drive.
                return Err(ArchiveError::AbsolutePath(name.to_owned()));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Counts files and bytes against the limits while an archive is read.
struct Budget<'a> {
    limits: &'a Limits,
    /// Compressed size of the whole archive (for the ratio of tar.gz).
    compressed: Option<u64>,
    files: usize,
    total: u64,
    seen: HashSet<String>,
    out: Vec<ArchiveFile>,
}

impl Budget<'_> {
    fn new(limits: &Limits, compressed: Option<u64>) -> Budget<'_> {
        Budget {
            limits,
            compressed,
            files: 0,
            total: 0,
            seen: HashSet::new(),
            out: Vec::new(),
        }
    }

    fn name(&mut self, path: &str) -> Result<(), ArchiveError> {
        if !self.seen.insert(path.to_owned()) {
            return Err(ArchiveError::Duplicate(path.to_owned()));
        }
        Ok(())
    }

    /// Reads one file's content, never more than the limits allow.
    fn file(
        &mut self,
        path: String,
        reader: &mut dyn Read,
        entry_compressed: Option<u64>,
    ) -> Result<(), ArchiveError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(ArchiveError::TooManyFiles(self.limits.max_files));
        }
        let cap = self
            .limits
            .max_file_bytes
            .min(self.limits.max_total_bytes - self.total);
        let mut data = Vec::new();
        reader
            .take(cap + 1)
            .read_to_end(&mut data)
            .map_err(|e| ArchiveError::Corrupt(format!("{path}: {e}")))?;
        let len = data.len() as u64;
        if len > self.limits.max_file_bytes {
            return Err(ArchiveError::FileTooLarge {
                name: path,
                limit_mb: self.limits.max_file_bytes / (1024 * 1024),
            });
        }
        if len > cap {
            return Err(ArchiveError::TooLarge(
                self.limits.max_total_bytes / (1024 * 1024),
            ));
        }
        self.total += len;
        if let Some(c) = entry_compressed {
            if len > RATIO_FLOOR && len > c.max(1).saturating_mul(self.limits.max_ratio) {
                return Err(ArchiveError::Ratio(path, self.limits.max_ratio));
            }
        }
        if let Some(c) = self.compressed {
            if self.total > RATIO_FLOOR
                && self.total > c.max(1).saturating_mul(self.limits.max_ratio)
            {
                return Err(ArchiveError::Ratio(path, self.limits.max_ratio));
            }
        }
        self.out.push(ArchiveFile { path, data });
        Ok(())
    }
}

/// Reads every regular file of an archive into memory, refusing anything
/// hostile or too big. Directories are checked and dropped.
pub fn read_archive(bytes: &[u8], limits: &Limits) -> Result<Vec<ArchiveFile>, ArchiveError> {
    match ArchiveKind::sniff(bytes).ok_or(ArchiveError::UnknownFormat)? {
        ArchiveKind::Tar => read_tar(bytes, Budget::new(limits, None)),
        ArchiveKind::TarGz => read_tar(
            flate2::read::GzDecoder::new(bytes),
            Budget::new(limits, Some(bytes.len() as u64)),
        ),
        ArchiveKind::Zip => read_zip(bytes, Budget::new(limits, None)),
    }
}

fn read_tar<R: Read>(reader: R, mut budget: Budget<'_>) -> Result<Vec<ArchiveFile>, ArchiveError> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw).map_err(|_| ArchiveError::NotUtf8)?;
        let path = clean_path(&name)?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                if path.is_empty() {
                    return Err(ArchiveError::Corrupt(format!(
                        "{name}: a file with no name"
                    )));
                }
                budget.name(&path)?;
                budget.file(path, &mut entry, None)?;
            }
            EntryType::Directory => {}
            EntryType::Symlink => return Err(ArchiveError::Symlink(name)),
            EntryType::Link => return Err(ArchiveError::HardLink(name)),
            // Metadata that applies to the whole archive.
            EntryType::XGlobalHeader => {}
            _ => return Err(ArchiveError::Special(name)),
        }
    }
    Ok(budget.out)
}

fn read_zip(bytes: &[u8], mut budget: Budget<'_>) -> Result<Vec<ArchiveFile>, ArchiveError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    // Directories count too, so a central directory of millions of entries is
    // refused before any is read.
    if archive.len() > budget.limits.max_files * 4 {
        return Err(ArchiveError::TooManyFiles(budget.limits.max_files));
    }
    for i in 0..archive.len() {
        let mut file = archive
            .by_index(i)
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let name = std::str::from_utf8(file.name_raw())
            .map_err(|_| ArchiveError::NotUtf8)?
            .to_owned();
        let path = clean_path(&name)?;
        if file.is_symlink() {
            return Err(ArchiveError::Symlink(name));
        }
        const S_IFMT: u32 = 0o170_000;
        const S_IFREG: u32 = 0o100_000;
        const S_IFDIR: u32 = 0o040_000;
        if let Some(mode) = file.unix_mode() {
            let ty = mode & S_IFMT;
            if ty != 0 && ty != S_IFREG && ty != S_IFDIR {
                return Err(ArchiveError::Special(name));
            }
        }
        if file.is_dir() {
            continue;
        }
        if path.is_empty() {
            return Err(ArchiveError::Corrupt(format!(
                "{name}: a file with no name"
            )));
        }
        budget.name(&path)?;
        let compressed = file.compressed_size();
        budget.file(path, &mut file, Some(compressed))?;
    }
    Ok(budget.out)
}

/// Whether a package path is left out of packages (as the catalog does):
/// dot-files, build outputs and macOS resource forks.
fn ignored(path: &str) -> bool {
    path.split('/')
        .any(|p| p.starts_with('.') || p == "target" || p == "__MACOSX")
}

/// The lab folder of an archive: its root when `lab.toml` is there, else its
/// single top folder. Returns the files relative to the lab folder, without
/// dot-files and `target/`.
pub fn lab_files(files: Vec<ArchiveFile>) -> Result<Vec<ArchiveFile>, ArchiveError> {
    let files: Vec<ArchiveFile> = files.into_iter().filter(|f| !ignored(&f.path)).collect();
    if files.iter().any(|f| f.path == MANIFEST_FILE) {
        return Ok(files);
    }
    let top = files
        .first()
        .and_then(|f| f.path.split_once('/'))
        .map(|(t, _)| t.to_owned())
        .ok_or(ArchiveError::NoManifest)?;
    let prefix = format!("{top}/");
    if !files.iter().all(|f| f.path.starts_with(&prefix))
        || !files
            .iter()
            .any(|f| f.path.strip_prefix(&prefix) == Some(MANIFEST_FILE))
    {
        return Err(ArchiveError::NoManifest);
    }
    Ok(files
        .into_iter()
        .map(|f| ArchiveFile {
            path: f.path[prefix.len()..].to_owned(),
            data: f.data,
        })
        .collect())
}

/// The package hash of files, as the catalog computes it from a folder.
pub fn package_hash(files: &[ArchiveFile]) -> String {
    let listed: Vec<LabFile> = files
        .iter()
        .map(|f| LabFile {
            path: f.path.clone(),
            sha256: protocol::sha256_hex(&f.data),
            bytes: f.data.len() as u64,
            trusted: false,
        })
        .collect();
    LabPackage::hash_of(&listed)
}

/// An archive that passed the archive checks: its lab folder in memory.
#[derive(Debug)]
pub struct Unpacked {
    pub lab_id: String,
    pub version: String,
    pub title: String,
    pub hash: String,
    pub files: Vec<ArchiveFile>,
}

/// Why publishing failed; the message is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The lab package itself is invalid (what `lab check` would say).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "version {version} of lab {lab_id} is already published; bump the version in lab.toml"
    )]
    VersionTaken { lab_id: String, version: String },
    /// The lab id belongs to another sponsor (or to no sponsor).
    #[error("lab {lab_id} {owner}; publish it under another id")]
    NotYours { lab_id: String, owner: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<PublishError> for AppError {
    fn from(e: PublishError) -> AppError {
        match e {
            PublishError::Internal(e) => AppError::Internal(e),
            PublishError::VersionTaken { .. } => AppError::Refused {
                code: "version_published",
                message: e.to_string(),
            },
            PublishError::NotYours { .. } => AppError::Refused {
                code: "lab_not_yours",
                message: e.to_string(),
            },
            other => AppError::Unprocessable(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for PublishError {
    fn from(e: sqlx::Error) -> Self {
        PublishError::Internal(anyhow::Error::new(e).context("database"))
    }
}

/// Reads and checks an archive and its manifest, in memory.
pub fn unpack(bytes: &[u8], limits: &Limits) -> Result<Unpacked, PublishError> {
    let files = lab_files(read_archive(bytes, limits)?)?;
    let manifest = files
        .iter()
        .find(|f| f.path == MANIFEST_FILE)
        .ok_or(ArchiveError::NoManifest)?;
    let text = std::str::from_utf8(&manifest.data)
        .map_err(|_| PublishError::Invalid("lab.toml: not UTF-8 text".into()))?;
    let m = Lab::parse_manifest(text, Path::new(MANIFEST_FILE))
        .map_err(|e| PublishError::Invalid(e.to_string()))?;
    if !is_lab_id(&m.id) {
        return Err(PublishError::Invalid(
            "lab.toml: field `id`: expected lowercase letters, digits and '-', at most 64".into(),
        ));
    }
    if m.kind == LabKind::Code {
        return Err(PublishError::Invalid(
            "code labs cannot be published by archive yet: their check compiles and runs the \
             package's Rust code, which the web server does not sandbox; add the lab to the \
             labs folder instead"
                .into(),
        ));
    }
    let hash = package_hash(&files);
    Ok(Unpacked {
        lab_id: m.id,
        version: m.version,
        title: m.title,
        hash,
        files,
    })
}

/// What publishing did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Published {
    pub lab_id: String,
    pub version: String,
    /// The package's content hash.
    pub hash: String,
    /// `checking`, `live` or `rejected`.
    pub state: String,
    /// True when this exact version was already published (nothing changed).
    pub unchanged: bool,
}

impl Published {
    fn of(v: &LabVersion, unchanged: bool) -> Published {
        Published {
            lab_id: v.lab_id.clone(),
            version: v.version.clone(),
            hash: v.content_hash.clone(),
            state: v.state.clone(),
            unchanged,
        }
    }
}

/// Where a stored version's lab folder is.
pub fn store_path(data_dir: &Path, lab_id: &str, hash: &str) -> PathBuf {
    data_dir
        .join(STORE_DIR)
        .join(lab_id)
        .join(hash)
        .join(lab_id)
}

/// What an existing row means for a new upload of the same version string.
enum Existing {
    /// Same content: nothing to do.
    Same(Published),
    /// A rejected version with other content: forget it and go on.
    Replace(String),
    None,
}

fn existing(row: Option<LabVersion>, unpacked: &Unpacked) -> Result<Existing, PublishError> {
    match row {
        None => Ok(Existing::None),
        Some(v) if v.content_hash == unpacked.hash => Ok(Existing::Same(Published::of(&v, true))),
        Some(v) if v.state == VersionState::Rejected.as_str() => Ok(Existing::Replace(v.id)),
        Some(_) => Err(PublishError::VersionTaken {
            lab_id: unpacked.lab_id.clone(),
            version: unpacked.version.clone(),
        }),
    }
}

/// Writes the files under `dir` (which must not exist).
fn write_tree(dir: &Path, files: &[ArchiveFile]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create_new(&path)?;
        std::io::Write::write_all(&mut out, &f.data)?;
    }
    Ok(())
}

/// Writes the lab folder to a temporary place, loads it, and moves it into
/// the store (unless the same content is stored already). Returns the
/// stored folder.
fn store(data_dir: &Path, unpacked: &Unpacked) -> Result<PathBuf, PublishError> {
    let incoming = data_dir.join(INCOMING_DIR).join(new_id());
    let result = (|| -> Result<PathBuf, PublishError> {
        let dir = incoming.join(&unpacked.lab_id);
        write_tree(&dir, &unpacked.files)
            .map_err(|e| anyhow::Error::new(e).context("writing an uploaded lab"))?;
        let lab = Lab::load(&dir).map_err(|e| {
            // Messages name files by their place in the package, not on the server.
            PublishError::Invalid(e.to_string().replace(&format!("{}/", dir.display()), ""))
        })?;
        let entry = package_of(lab)?;
        if entry.package.hash != unpacked.hash {
            return Err(PublishError::Internal(anyhow::anyhow!(
                "package hash of the written folder differs from the archive's"
            )));
        }
        let dest = store_path(data_dir, &unpacked.lab_id, &unpacked.hash);
        if !dest.is_dir() {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| anyhow::Error::new(e).context("creating the lab store"))?;
            }
            std::fs::rename(&dir, &dest)
                .map_err(|e| anyhow::Error::new(e).context("moving a lab into the store"))?;
        }
        Ok(dest)
    })();
    let _ = std::fs::remove_dir_all(&incoming);
    result
}

/// Publishes an archive: checks it, stores it and starts its check. Returns
/// at once with the version in `checking` (or as it was, when unchanged).
/// `sponsor` is the company a sponsored lab is published for; a lab id keeps
/// the sponsor (or the absence of one) of its first version.
pub async fn publish(
    state: &AppState,
    bytes: Vec<u8>,
    source: Source,
    user_id: &str,
    sponsor: Option<&str>,
) -> Result<Published, PublishError> {
    let unpacked = tokio::task::spawn_blocking(move || unpack(&bytes, &Limits::default()))
        .await
        .map_err(|e| PublishError::Internal(e.into()))??;
    if let Some(owner) = versions::owner_of(&state.db, &unpacked.lab_id).await? {
        if owner.as_deref() != sponsor {
            let owner = match owner {
                Some(org) => match crate::db::orgs::by_id(&state.db, &org).await? {
                    Some(o) => format!("is sponsored by {}", o.name),
                    None => "is sponsored by another company".to_owned(),
                },
                None => "is not a sponsored lab".to_owned(),
            };
            return Err(PublishError::NotYours {
                lab_id: unpacked.lab_id,
                owner,
            });
        }
    }
    let row = versions::find(&state.db, &unpacked.lab_id, &unpacked.version).await?;
    match existing(row, &unpacked)? {
        Existing::Same(p) => return Ok(p),
        Existing::Replace(id) => {
            versions::forget_rejected(&state.db, &id).await?;
        }
        Existing::None => {}
    }
    let data_dir = state.config.data_dir.clone();
    let (unpacked, dir) = tokio::task::spawn_blocking(move || {
        let dir = store(&data_dir, &unpacked)?;
        Ok::<_, PublishError>((unpacked, dir))
    })
    .await
    .map_err(|e| PublishError::Internal(e.into()))??;
    let new = NewVersion {
        lab_id: &unpacked.lab_id,
        version: &unpacked.version,
        content_hash: &unpacked.hash,
        title: &unpacked.title,
        published_by: Some(user_id),
        source,
        state: VersionState::Checking,
        check_report: None,
        sponsor_org_id: sponsor,
    };
    let id = match versions::insert(&state.db, &new).await {
        Ok(id) => id,
        Err(e) if is_unique_violation(&e) => {
            // Published concurrently: same rule as above.
            let row = versions::find(&state.db, &unpacked.lab_id, &unpacked.version).await?;
            return match existing(row, &unpacked)? {
                Existing::Same(p) => Ok(p),
                _ => Err(PublishError::VersionTaken {
                    lab_id: unpacked.lab_id,
                    version: unpacked.version,
                }),
            };
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(lab = %unpacked.lab_id, version = %unpacked.version, hash = %unpacked.hash,
        source = source.as_str(), "lab version stored; checking");
    spawn_check(state.clone(), id, dir);
    Ok(Published {
        lab_id: unpacked.lab_id,
        version: unpacked.version,
        hash: unpacked.hash,
        state: VersionState::Checking.as_str().to_owned(),
        unchanged: false,
    })
}

/// One check at a time: each trains the starter and the solution.
static CHECKS: Semaphore = Semaphore::const_new(1);

/// Runs `lab check --quick` on a stored version in the background, then
/// records it live (and puts it in the catalog) or rejected.
pub fn spawn_check(state: AppState, id: String, dir: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = check_version(&state, &id, dir).await {
            tracing::error!(error = ?e, version = %id, "checking a published lab version failed");
            let _ = versions::set_checked(
                &state.db,
                &id,
                VersionState::Rejected,
                "the check could not run (see the server log)",
            )
            .await;
        }
    })
}

async fn check_version(state: &AppState, id: &str, dir: PathBuf) -> anyhow::Result<()> {
    let _permit = CHECKS.acquire().await?;
    let work = state
        .config
        .data_dir
        .join(INCOMING_DIR)
        .join(format!("check-{id}"));
    let opts = CheckOptions {
        run: RunOptions::scaled(CHECK_STEP_SCALE),
        work_dir: Some(work.clone()),
        models_dir: Some(state.config.data_dir.join("models")),
    };
    let check_dir = dir.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let r = check_lab(&check_dir, &opts, &mut |_| {});
        let _ = std::fs::remove_dir_all(&work);
        r
    })
    .await?;
    let (live, report) = match outcome {
        Ok(report) => (
            report.passed(),
            serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into()),
        ),
        Err(e) => (false, e.to_string()),
    };
    if !live {
        versions::set_checked(&state.db, id, VersionState::Rejected, &report).await?;
        tracing::warn!(version = %id, "published lab version rejected by its check");
        return Ok(());
    }
    let entry = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok(Arc::new(package_of(Lab::load(&dir)?)?))
    })
    .await??;
    if versions::set_checked(&state.db, id, VersionState::Live, &report).await? {
        tracing::info!(lab = %entry.package.id, version = %entry.package.version, "lab version live");
        state.queue.catalog.insert_latest(entry);
    }
    Ok(())
}

/// At start: records the labs folder's versions, loads every live stored
/// version into the catalog (the newest published last, so it is the latest)
/// and resumes checks an earlier process did not finish.
pub async fn load_published(state: &AppState) -> anyhow::Result<()> {
    let catalog = &state.queue.catalog;
    for entry in catalog.entries() {
        let p = &entry.package;
        match versions::find(&state.db, &p.id, &p.version).await? {
            None => {
                let new = NewVersion {
                    lab_id: &p.id,
                    version: &p.version,
                    content_hash: &p.hash,
                    title: &entry.lab.manifest.title,
                    published_by: None,
                    source: Source::Folder,
                    state: VersionState::Live,
                    check_report: None,
                    sponsor_org_id: None,
                };
                match versions::insert(&state.db, &new).await {
                    Ok(_) => {}
                    // Another app server recorded it first.
                    Err(e) if is_unique_violation(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(v) if v.content_hash != p.hash => tracing::warn!(
                lab = %p.id, version = %p.version,
                "the labs folder's package differs from the version published under the same \
                 version string; serving the folder's (bump its version)"
            ),
            Some(_) => {}
        }
    }
    let folder: Vec<_> = catalog.entries().collect();
    for v in versions::live(&state.db).await? {
        if v.is_folder() {
            // Still the folder's content: it becomes the latest again in order.
            if let Some(e) = folder
                .iter()
                .find(|e| e.package.id == v.lab_id && e.package.hash == v.content_hash)
            {
                catalog.insert_latest(e.clone());
            }
            continue;
        }
        let dir = store_path(&state.config.data_dir, &v.lab_id, &v.content_hash);
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok(Arc::new(package_of(Lab::load(&dir)?)?))
        })
        .await?;
        match loaded {
            Ok(entry) if entry.package.hash == v.content_hash => catalog.insert_latest(entry),
            Ok(_) => tracing::error!(lab = %v.lab_id, version = %v.version,
                "a stored lab version changed on disk; not serving it"),
            Err(e) => tracing::error!(lab = %v.lab_id, version = %v.version, error = %e,
                "a stored lab version does not load; not serving it"),
        }
    }
    for v in versions::stored_in_state(&state.db, VersionState::Checking).await? {
        let dir = store_path(&state.config.data_dir, &v.lab_id, &v.content_hash);
        spawn_check(state.clone(), v.id, dir);
    }
    Ok(())
}

/// Packs a lab folder as a `.tar.gz` in memory for `sanhak lab push`: files
/// at the archive root, sorted, without dot-files and `target/`; a symbolic
/// link is refused.
pub fn pack_folder(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    anyhow::ensure!(
        dir.join(MANIFEST_FILE).is_file(),
        "{} has no lab.toml",
        dir.display()
    );
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))
            .with_context(|| format!("reading {}", dir.join(&rel).display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries.into_iter().rev() {
            let name = e.file_name();
            let name_s = name.to_string_lossy();
            if name_s.starts_with('.') || name_s == "target" {
                continue;
            }
            let child = rel.join(&name);
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.file_type().is_symlink() {
                anyhow::bail!(
                    "{} is a symbolic link: a lab package holds regular files only",
                    child.display()
                );
            } else if meta.is_dir() {
                stack.push(child);
            } else if meta.is_file() {
                let mut h = tar::Header::new_gnu();
                h.set_size(meta.len());
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                let file = std::fs::File::open(e.path())?;
                tar.append_data(&mut h, &child, file)
                    .with_context(|| format!("packing {}", child.display()))?;
            } else {
                anyhow::bail!("{} is not a regular file", child.display());
            }
        }
    }
    Ok(tar.into_inner()?.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A tar whose header names are written raw (the tar crate's builder
    /// refuses `..` and absolute paths, as it should).
    fn raw_tar(name: &[u8], ty: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(ty);
        if ty == tar::EntryType::Symlink || ty == tar::EntryType::Link {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0; 1024]);
        // An old-style header has no `ustar` magic; tell the sniffer it is a tar.
        out
    }

    fn read(bytes: &[u8]) -> Result<Vec<ArchiveFile>, ArchiveError> {
        match ArchiveKind::sniff(bytes) {
            Some(_) => read_archive(bytes, &Limits::default()),
            None => read_tar(bytes, Budget::new(&Limits::default(), None)),
        }
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn paths_are_normalised_and_hostile_ones_refused() {
        assert_eq!(clean_path("./lab/lab.toml").unwrap(), "lab/lab.toml");
        assert_eq!(clean_path("a//b/").unwrap(), "a/b");
        assert_eq!(
            clean_path("../evil"),
            Err(ArchiveError::ParentDir("../evil".into()))
        );
        assert_eq!(
            clean_path("a/../../evil"),
            Err(ArchiveError::ParentDir("a/../../evil".into()))
        );
        assert_eq!(
            clean_path("/etc/passwd"),
            Err(ArchiveError::AbsolutePath("/etc/passwd".into()))
        );
        assert_eq!(
            clean_path("C:/x"),
            Err(ArchiveError::AbsolutePath("C:/x".into()))
        );
        assert!(matches!(
            clean_path("a\\b"),
            Err(ArchiveError::Backslash(_))
        ));
    }

    #[test]
    fn zip_slip_in_a_tar_is_refused() {
        let err = read(&raw_tar(b"../evil", tar::EntryType::Regular, b"x")).unwrap_err();
        assert_eq!(err, ArchiveError::ParentDir("../evil".into()));
        assert!(err.to_string().contains("`..`"));
    }

    #[test]
    fn absolute_path_in_a_tar_is_refused() {
        let err = read(&raw_tar(b"/tmp/evil", tar::EntryType::Regular, b"x")).unwrap_err();
        assert_eq!(err, ArchiveError::AbsolutePath("/tmp/evil".into()));
    }

    #[test]
    fn links_and_devices_in_a_tar_are_refused() {
        assert_eq!(
            read(&raw_tar(b"lab/data", tar::EntryType::Symlink, b"")).unwrap_err(),
            ArchiveError::Symlink("lab/data".into())
        );
        assert_eq!(
            read(&raw_tar(b"lab/data", tar::EntryType::Link, b"")).unwrap_err(),
            ArchiveError::HardLink("lab/data".into())
        );
        for ty in [
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::Fifo,
        ] {
            assert_eq!(
                read(&raw_tar(b"lab/dev", ty, b"")).unwrap_err(),
                ArchiveError::Special("lab/dev".into())
            );
        }
    }

    #[test]
    fn non_utf8_and_duplicate_names_are_refused() {
        assert_eq!(
            read(&raw_tar(b"lab/\xff\xfe", tar::EntryType::Regular, b"x")).unwrap_err(),
            ArchiveError::NotUtf8
        );
        let dup = tar_of(&[("lab/a.txt", b"1"), ("lab/./a.txt", b"2")]);
        assert_eq!(
            read(&dup).unwrap_err(),
            ArchiveError::Duplicate("lab/a.txt".into())
        );
    }

    #[test]
    fn size_and_count_limits_hold() {
        let limits = Limits {
            max_files: 2,
            max_file_bytes: 10,
            max_total_bytes: 15,
            max_ratio: 100,
        };
        let three = tar_of(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        assert_eq!(
            read_archive(&three, &limits).unwrap_err(),
            ArchiveError::TooManyFiles(2)
        );
        let big = tar_of(&[("big.bin", &[0u8; 11])]);
        assert!(matches!(
            read_archive(&big, &limits).unwrap_err(),
            ArchiveError::FileTooLarge { name, .. } if name == "big.bin"
        ));
        let total = tar_of(&[("a", &[0u8; 8]), ("b", &[0u8; 8])]);
        assert!(matches!(
            read_archive(&total, &limits).unwrap_err(),
            ArchiveError::TooLarge(_)
        ));
        let ok = tar_of(&[("a", &[0u8; 8]), ("b", &[0u8; 7])]);
        assert_eq!(read_archive(&ok, &limits).unwrap().len(), 2);
    }

    #[test]
    fn compression_bombs_are_refused() {
        // 20 MB of zeros compress to about 20 KB: a 1000:1 ratio.
        let zeros = vec![0u8; 20 * 1024 * 1024];
        let bomb = gz(&tar_of(&[("lab/zeros.bin", &zeros)]));
        assert!(matches!(
            read_archive(&bomb, &Limits::default()).unwrap_err(),
            ArchiveError::Ratio(name, 100) if name == "lab/zeros.bin"
        ));
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        z.start_file(
            "lab/zeros.bin",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        z.write_all(&zeros).unwrap();
        let zip = z.finish().unwrap().into_inner();
        assert!(matches!(
            read_archive(&zip, &Limits::default()).unwrap_err(),
            ArchiveError::Ratio(name, 100) if name == "lab/zeros.bin"
        ));
    }

    #[test]
    fn zip_symlinks_and_zip_slip_are_refused() {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        z.add_symlink(
            "lab/link",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        let zip = z.finish().unwrap().into_inner();
        assert_eq!(
            read_archive(&zip, &Limits::default()).unwrap_err(),
            ArchiveError::Symlink("lab/link".into())
        );
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        z.start_file("../evil", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"x").unwrap();
        let zip = z.finish().unwrap().into_inner();
        assert_eq!(
            read_archive(&zip, &Limits::default()).unwrap_err(),
            ArchiveError::ParentDir("../evil".into())
        );
    }

    #[test]
    fn the_lab_folder_is_the_root_or_a_single_top_folder() {
        let f = |p: &str| ArchiveFile {
            path: p.into(),
            data: Vec::new(),
        };
        let root = lab_files(vec![f("lab.toml"), f("README.md"), f(".git/HEAD")]).unwrap();
        let paths: Vec<_> = root.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["lab.toml", "README.md"]);
        let top = lab_files(vec![f("x/lab.toml"), f("x/data/a"), f("x/target/junk")]).unwrap();
        let paths: Vec<_> = top.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["lab.toml", "data/a"]);
        assert_eq!(
            lab_files(vec![f("x/lab.toml"), f("y/README.md")]).unwrap_err(),
            ArchiveError::NoManifest
        );
        assert_eq!(
            lab_files(vec![f("x/y/lab.toml")]).unwrap_err(),
            ArchiveError::NoManifest
        );
    }

    #[test]
    fn unknown_formats_are_refused() {
        assert_eq!(
            read_archive(b"hello", &Limits::default()).unwrap_err(),
            ArchiveError::UnknownFormat
        );
    }

    #[test]
    fn a_packed_lab_folder_unpacks_to_the_same_package() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/fashion-transfer");
        let bytes = pack_folder(&dir).unwrap();
        let unpacked = unpack(&bytes, &Limits::default()).unwrap();
        let lab = Lab::load(&dir).unwrap();
        let entry = package_of(lab).unwrap();
        assert_eq!(unpacked.lab_id, "fashion-transfer");
        assert_eq!(unpacked.hash, entry.package.hash);
        assert_eq!(unpacked.files.len(), entry.package.files.len());
    }

    #[cfg(unix)]
    #[test]
    fn packing_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("lab.toml"), "id = 'x'").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("data")).unwrap();
        let err = pack_folder(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("data is a symbolic link"), "{err}");
    }
}
