//! Compiling a student's code-lab submission in the sandbox with plain rustc.
//!
//! Two steps:
//! 1. [`Prebuilt::prepare`], once per runner host: `cargo build --release -p
//!    labkit` builds labkit and its dependencies (candle, serde, …) as rlibs
//!    into a cache folder keyed by the toolchain, the Cargo.lock and labkit's
//!    sources. The build runs on the host, with trusted code only.
//! 2. [`compile_submission`], per submission: the student's `src/lib.rs` and
//!    the lab starter's fixed `src/main.rs` go into the job's work folder and
//!    `rustc` compiles them inside the sandbox. The sandbox sees the
//!    toolchain's sysroot (read-only, at [`GUEST_SYSROOT`]), the prebuilt
//!    rlibs (read-only, at [`GUEST_RLIBS`]), the work folder and `/usr`; no
//!    cargo, no build scripts, no network, no environment but `PATH`, and
//!    only `labkit` as an extern crate.
//!
//! Diagnostics come back structured (level, line, column, message) and as
//! rendered text, with every guest and host path taken out, so a student
//! sees `src/lib.rs:LINE:COL` and nothing of the machine.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use sanhak_sandbox::{Bind, Limits, LineAction, SandboxSpec, Status};

use super::{code_spec, CodeLabError};
use crate::lab::Lab;

/// Where the toolchain's sysroot is mounted in the sandbox.
pub const GUEST_SYSROOT: &str = "/opt/rust";
/// Where the prebuilt rlibs are mounted in the sandbox.
pub const GUEST_RLIBS: &str = "/opt/sanhak/rlibs";
/// The job's work folder in the sandbox.
pub const GUEST_WORK: &str = "/work";
/// `PATH` inside the sandbox (rustc finds the linker, `cc`, there).
pub const GUEST_PATH: &str = "/usr/bin:/bin";
/// Largest student `src/lib.rs` accepted.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;
/// Diagnostics kept at most (the rest are counted).
pub const MAX_DIAGNOSTICS: usize = 200;
/// The binary's file name in the work folder.
pub const BINARY_NAME: &str = "submission";
/// The sandbox's work folder inside the job's work folder (removed after
/// the compile).
const SANDBOX_WORK: &str = ".sandbox-work";

/// Changes when the cache layout or the build flags change.
const CACHE_FORMAT: &str = "sanhak-prebuilt-2";
const MANIFEST_FILE: &str = "prebuilt.json";
const DEPS_DIR: &str = "deps";
const NATIVE_DIR: &str = "native";
/// Where the host paths of the prebuilt crates' sources appear in their
/// metadata (and so in diagnostics that point into labkit or candle).
const REMAP_WORKSPACE: &str = "/sanhak";
const REMAP_CARGO_HOME: &str = "/cargo";

fn build_err(krate: &Path, message: impl Into<String>) -> CodeLabError {
    CodeLabError::Build {
        krate: krate.to_path_buf(),
        message: message.into(),
    }
}

/// The toolchain that builds the workspace (its `rust-toolchain.toml`
/// applies): the real `rustc` and `cargo` binaries, not the rustup proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Toolchain {
    pub sysroot: PathBuf,
    /// `<sysroot>/bin/rustc`.
    pub rustc: PathBuf,
    /// `<sysroot>/bin/cargo` when present, else `cargo` from `PATH`.
    pub cargo: PathBuf,
    /// `rustc -vV`.
    pub version: String,
}

fn command_output(cmd: &mut Command, what: &str, krate: &Path) -> Result<String, CodeLabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| build_err(krate, format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(build_err(
            krate,
            format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| build_err(krate, format!("{what}: not UTF-8")))
}

impl Toolchain {
    /// The toolchain `rustc` resolves to in `dir` (rustup honours the
    /// `rust-toolchain.toml` found from there).
    pub fn detect(dir: &Path) -> Result<Toolchain, CodeLabError> {
        let sysroot = command_output(
            Command::new("rustc")
                .args(["--print", "sysroot"])
                .current_dir(dir),
            "rustc --print sysroot",
            dir,
        )?;
        let sysroot = PathBuf::from(sysroot.trim());
        let rustc = sysroot.join("bin/rustc");
        if !rustc.is_file() {
            return Err(build_err(dir, format!("{} is not a file", rustc.display())));
        }
        let version = command_output(Command::new(&rustc).arg("-vV"), "rustc -vV", dir)?;
        let cargo = sysroot.join("bin/cargo");
        let cargo = if cargo.is_file() {
            cargo
        } else {
            PathBuf::from("cargo")
        };
        Ok(Toolchain {
            sysroot,
            rustc,
            cargo,
            version,
        })
    }
}

/// Where the prebuild finds labkit.
#[derive(Debug, Clone)]
pub struct PrebuildOptions {
    /// labkit's crate folder (default: `runner/labkit` of this workspace).
    pub labkit_dir: PathBuf,
}

impl Default for PrebuildOptions {
    fn default() -> Self {
        PrebuildOptions {
            labkit_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("labkit"),
        }
    }
}

/// The cache entry's description, written last.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PrebuiltManifest {
    format: String,
    key: String,
    /// labkit's rlib, relative to the entry.
    labkit_rlib: String,
    /// Native library folders, relative to the entry.
    native: Vec<String>,
    rustc_version: String,
}

/// labkit and its dependencies as rlibs, ready for `--extern labkit=… -L
/// dependency=…`.
#[derive(Debug, Clone)]
pub struct Prebuilt {
    pub toolchain: Toolchain,
    /// The cache key (hex).
    pub key: String,
    /// `<cache_root>/<key>`.
    pub dir: PathBuf,
    pub cache_root: PathBuf,
    /// The workspace that holds labkit.
    pub workspace: PathBuf,
    /// The C compiler rustc links with, resolved on the host to a file
    /// under `/usr` (the sandbox sees `/usr`, not `/etc/alternatives`,
    /// through which `/usr/bin/cc` usually points).
    pub linker: Option<PathBuf>,
    manifest: PrebuiltManifest,
    /// Host paths that must never reach a student (scrubbed from diagnostics).
    host_paths: Vec<(String, &'static str)>,
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Hash the files under `dir` (sorted by path) into `h`.
fn hash_tree(h: &mut Sha256, dir: &Path) -> Result<(), CodeLabError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| CodeLabError::io(&d, e))? {
            let e = e.map_err(|e| CodeLabError::io(&d, e))?;
            let t = e
                .file_type()
                .map_err(|err| CodeLabError::io(&e.path(), err))?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| CodeLabError::io(&f, e))?;
        let rel = f.strip_prefix(dir).unwrap_or(&f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(())
}

/// The cache key: `rustc -vV`, the workspace's Cargo.lock and root
/// Cargo.toml, labkit's Cargo.toml and sources.
fn cache_key(
    toolchain: &Toolchain,
    labkit: &Path,
    root_manifest: &Path,
) -> Result<String, CodeLabError> {
    let lock = root_manifest.with_file_name("Cargo.lock");
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update([0]);
    h.update(toolchain.version.as_bytes());
    for f in [&lock, root_manifest, &labkit.join("Cargo.toml")] {
        let bytes = std::fs::read(f).map_err(|e| CodeLabError::io(f, e))?;
        h.update([0]);
        h.update(&bytes);
    }
    hash_tree(&mut h, &labkit.join("src"))?;
    Ok(hex::encode(&h.finalize()[..12]))
}

impl Prebuilt {
    /// Build (or find in `cache_root`) the rlibs of this workspace's labkit.
    pub fn prepare(cache_root: &Path) -> Result<Prebuilt, CodeLabError> {
        Self::prepare_with(cache_root, &PrebuildOptions::default())
    }

    /// [`Prebuilt::prepare`] for the labkit in `opts.labkit_dir`.
    ///
    /// The key hashes `rustc -vV`, the workspace's Cargo.lock and root
    /// Cargo.toml (versions, profile) and labkit's Cargo.toml and sources
    /// (labkit's version alone would not change while it is developed). A
    /// second call with the same key only reads the entry's manifest.
    /// Concurrent preparers share cargo's own locked target folder and each
    /// stages its entry in a private folder that is renamed into place; the
    /// loser of the rename uses the winner's entry.
    pub fn prepare_with(
        cache_root: &Path,
        opts: &PrebuildOptions,
    ) -> Result<Prebuilt, CodeLabError> {
        let labkit = opts
            .labkit_dir
            .canonicalize()
            .map_err(|e| CodeLabError::io(&opts.labkit_dir, e))?;
        let toolchain = Toolchain::detect(&labkit)?;
        let root_manifest = command_output(
            Command::new(&toolchain.cargo)
                .args(["locate-project", "--workspace", "--message-format", "plain"])
                .current_dir(&labkit)
                .env("RUSTC", &toolchain.rustc),
            "cargo locate-project",
            &labkit,
        )?;
        let root_manifest = PathBuf::from(root_manifest.trim());
        let workspace = root_manifest
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| build_err(&labkit, "the workspace has no folder"))?;
        let key = cache_key(&toolchain, &labkit, &root_manifest)?;

        std::fs::create_dir_all(cache_root).map_err(|e| CodeLabError::io(cache_root, e))?;
        let cache_root = cache_root
            .canonicalize()
            .map_err(|e| CodeLabError::io(cache_root, e))?;
        let (key, manifest) = match read_manifest(&cache_root.join(&key), &key) {
            Some(m) => (key, m),
            None => build_entry(&toolchain, &labkit, &workspace, &cache_root, &|| {
                cache_key(&toolchain, &labkit, &root_manifest)
            })?,
        };
        let dir = cache_root.join(&key);
        let mut host_paths = vec![
            (cache_root.display().to_string(), "[cache]"),
            (toolchain.sysroot.display().to_string(), "[rust]"),
            (workspace.display().to_string(), "[workspace]"),
        ];
        if let Some(c) = cargo_home() {
            host_paths.push((c.display().to_string(), "[cargo]"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            let home = PathBuf::from(home).display().to_string();
            if home.len() > 1 {
                host_paths.push((home, "[home]"));
            }
        }
        // Longest first, so a path inside another is replaced as a whole.
        host_paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(Prebuilt {
            toolchain,
            key,
            dir,
            cache_root,
            workspace,
            linker: resolve_linker(),
            manifest,
            host_paths,
        })
    }

    /// labkit's rlib (host path).
    pub fn labkit_rlib(&self) -> PathBuf {
        self.dir.join(&self.manifest.labkit_rlib)
    }

    /// The folder of labkit's dependencies (host path).
    pub fn deps_dir(&self) -> PathBuf {
        self.dir.join(DEPS_DIR)
    }

    /// `--extern labkit=… -L dependency=… [-L native=…]` for a rustc that
    /// sees the entry at `root` (the host folder, or [`GUEST_RLIBS`]).
    pub fn link_args(&self, root: &Path) -> Vec<String> {
        let mut args = vec![
            "--extern".to_string(),
            format!("labkit={}", root.join(&self.manifest.labkit_rlib).display()),
            "-L".to_string(),
            format!("dependency={}", root.join(DEPS_DIR).display()),
        ];
        for n in &self.manifest.native {
            args.push("-L".into());
            args.push(format!("native={}", root.join(n).display()));
        }
        args
    }

    /// Replace every host path this runner knows of, and the sandbox's own
    /// mount points, in text meant for a student.
    pub fn scrub(&self, text: &str) -> String {
        let mut s = text.to_string();
        for (p, with) in &self.host_paths {
            if !p.is_empty() && p != "/" {
                s = s.replace(p.as_str(), with);
            }
        }
        for (p, with) in [
            (GUEST_RLIBS, "[labkit]"),
            (GUEST_SYSROOT, "[rust]"),
            ("/work/", ""),
        ] {
            s = s.replace(p, with);
        }
        s
    }
}

/// `cc` from `PATH`, symlinks resolved, when it ends up under `/usr`.
fn resolve_linker() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| GUEST_PATH.into());
    let cc = std::env::split_paths(&path)
        .map(|d| d.join("cc"))
        .find(|p| p.is_file())?;
    let real = cc.canonicalize().ok()?;
    if real.starts_with("/usr") {
        Some(real)
    } else {
        tracing::warn!(cc = %real.display(), "the C compiler is outside /usr: the sandbox cannot see it");
        None
    }
}

fn read_manifest(dir: &Path, key: &str) -> Option<PrebuiltManifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    let m: PrebuiltManifest = serde_json::from_str(&text).ok()?;
    let ok = m.format == CACHE_FORMAT && m.key == key && dir.join(&m.labkit_rlib).is_file();
    ok.then_some(m)
}

/// Environment variables that would change how cargo builds the rlibs.
const CARGO_ENV_REMOVED: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_INCREMENTAL",
    "RUSTC_BOOTSTRAP",
];

/// Run cargo, stage the artifacts in a private folder, rename it into place.
/// Returns the entry's key (computed again after the build: cargo may have
/// updated Cargo.lock) and its manifest.
fn build_entry(
    toolchain: &Toolchain,
    labkit: &Path,
    workspace: &Path,
    cache_root: &Path,
    key_of: &dyn Fn() -> Result<String, CodeLabError>,
) -> Result<(String, PrebuiltManifest), CodeLabError> {
    let t0 = Instant::now();
    tracing::info!(cache = %cache_root.display(), "prebuilding labkit rlibs");
    let target = cache_root.join("cargo-target");
    // Source paths inside the rlibs' metadata are remapped, so a diagnostic
    // that points into labkit or candle shows no host folder.
    let mut flags = vec![format!(
        "--remap-path-prefix={}={REMAP_WORKSPACE}",
        workspace.display()
    )];
    if let Some(c) = cargo_home() {
        flags.push(format!(
            "--remap-path-prefix={}={REMAP_CARGO_HOME}",
            c.display()
        ));
    }
    let mut cmd = Command::new(&toolchain.cargo);
    cmd.args([
        "build",
        "--release",
        "-p",
        "labkit",
        "--message-format=json",
    ])
    .arg("--manifest-path")
    .arg(labkit.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target)
    .current_dir(labkit)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for v in CARGO_ENV_REMOVED {
        cmd.env_remove(v);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CARGO_PROFILE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUSTC", &toolchain.rustc)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"));
    let mut child = cmd
        .spawn()
        .map_err(|e| build_err(labkit, format!("cannot run cargo: {e}")))?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut tail = String::new();
        if let Some(s) = stderr {
            for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
                tail.push_str(&line);
                tail.push('\n');
                if tail.len() > 16 * 1024 {
                    tail.drain(..tail.len() - 8 * 1024);
                }
            }
        }
        tail
    });
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| build_err(labkit, "cargo: no stdout"))?;
    let mut artifacts: Vec<PathBuf> = Vec::new();
    let mut labkit_rlib: Option<PathBuf> = None;
    let mut native: Vec<PathBuf> = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                let kinds: Vec<&str> = msg["target"]["kind"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
                    .unwrap_or_default();
                if kinds.contains(&"custom-build") || kinds.contains(&"bin") {
                    continue;
                }
                let files: Vec<PathBuf> = msg["filenames"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f.as_str())
                            .map(PathBuf::from)
                            .collect()
                    })
                    .unwrap_or_default();
                if msg["target"]["name"] == "labkit" {
                    labkit_rlib = files
                        .iter()
                        .find(|f| f.extension().is_some_and(|e| e == "rlib"))
                        .cloned();
                }
                artifacts.extend(files);
            }
            Some("build-script-executed") => {
                if let Some(paths) = msg["linked_paths"].as_array() {
                    for p in paths.iter().filter_map(|p| p.as_str()) {
                        // `KIND=PATH` or `PATH`.
                        let path = p.split_once('=').map_or(p, |(_, p)| p);
                        native.push(PathBuf::from(path));
                    }
                }
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .map_err(|e| build_err(labkit, format!("cargo: {e}")))?;
    let err_tail = err_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(build_err(
            labkit,
            format!("cargo build --release -p labkit failed ({status}): {err_tail}"),
        ));
    }
    let labkit_rlib = labkit_rlib.ok_or_else(|| build_err(labkit, "cargo built no labkit rlib"))?;

    let key = key_of()?;
    let key = key.as_str();
    if let Some(m) = read_manifest(&cache_root.join(key), key) {
        return Ok((key.to_string(), m));
    }
    // Stage, then rename into place.
    let staging = cache_root.join(format!(
        ".staging-{key}-{}-{}",
        std::process::id(),
        t0.elapsed().as_nanos()
    ));
    let result = stage(&staging, &artifacts, &labkit_rlib, &native, key, toolchain);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let dir = cache_root.join(key);
    if let Err(e) = std::fs::rename(&staging, &dir) {
        let _ = std::fs::remove_dir_all(&staging);
        // Another preparer won the race: use its entry.
        return read_manifest(&dir, key)
            .map(|m| (key.to_string(), m))
            .ok_or_else(|| CodeLabError::io(&dir, e));
    }
    tracing::info!(
        key,
        wall_s = t0.elapsed().as_secs_f64(),
        "labkit rlibs ready"
    );
    Ok((key.to_string(), manifest))
}

fn stage(
    staging: &Path,
    artifacts: &[PathBuf],
    labkit_rlib: &Path,
    native: &[PathBuf],
    key: &str,
    toolchain: &Toolchain,
) -> Result<PrebuiltManifest, CodeLabError> {
    let deps = staging.join(DEPS_DIR);
    std::fs::create_dir_all(&deps).map_err(|e| CodeLabError::io(&deps, e))?;
    let mut seen = BTreeMap::new();
    for a in artifacts {
        let Some(name) = a.file_name() else { continue };
        if seen.insert(name.to_os_string(), ()).is_some() {
            continue;
        }
        // A hard link where possible (the cargo target folder is in the same
        // cache root; cargo replaces files, it does not rewrite them), else a copy.
        let to = deps.join(name);
        if std::fs::hard_link(a, &to).is_err() {
            std::fs::copy(a, &to).map_err(|e| CodeLabError::io(a, e))?;
        }
    }
    let labkit_name = labkit_rlib
        .file_name()
        .ok_or_else(|| CodeLabError::Other("labkit rlib has no file name".into()))?;
    let mut native_rel = Vec::new();
    for (i, n) in native.iter().enumerate() {
        let rel = format!("{NATIVE_DIR}/{i}");
        copy_dir(n, &staging.join(&rel))?;
        native_rel.push(rel);
    }
    let manifest = PrebuiltManifest {
        format: CACHE_FORMAT.to_string(),
        key: key.to_string(),
        labkit_rlib: format!("{DEPS_DIR}/{}", labkit_name.to_string_lossy()),
        native: native_rel,
        rustc_version: toolchain.version.clone(),
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| CodeLabError::Other(format!("prebuilt manifest: {e}")))?;
    let path = staging.join(MANIFEST_FILE);
    std::fs::write(&path, text).map_err(|e| CodeLabError::io(&path, e))?;
    Ok(manifest)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), CodeLabError> {
    std::fs::create_dir_all(to).map_err(|e| CodeLabError::io(to, e))?;
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for e in entries {
        let e = e.map_err(|e| CodeLabError::io(from, e))?;
        let t = e
            .file_type()
            .map_err(|err| CodeLabError::io(&e.path(), err))?;
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else if t.is_file() {
            std::fs::copy(e.path(), &dest).map_err(|err| CodeLabError::io(&e.path(), err))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Compiling a submission

/// One compiler message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// `error`, `warning`, `note`, `help`, …
    pub level: String,
    /// The error code (`E0308`), when there is one.
    pub code: Option<String>,
    pub message: String,
    /// The primary span's file as the student sees it (`src/lib.rs`).
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub end_line: Option<u32>,
    pub end_column: Option<u32>,
    /// rustc's own rendering of this message.
    pub rendered: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.level == "error" || self.level.starts_with("error:")
    }
}

/// How a compile ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CompileResult {
    /// The binary, in the job's work folder (host path).
    Compiled { binary: PathBuf },
    /// The code did not compile, or the compiler was stopped at a limit.
    Failed { message: String },
}

/// A finished compile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileOutcome {
    pub result: CompileResult,
    /// Structured messages (errors and warnings), paths cleaned.
    pub diagnostics: Vec<Diagnostic>,
    /// Messages beyond [`MAX_DIAGNOSTICS`].
    pub dropped_diagnostics: usize,
    /// The messages as rustc renders them, paths cleaned.
    pub rendered: String,
    pub wall_s: f64,
    pub peak_memory_bytes: Option<u64>,
}

impl CompileOutcome {
    pub fn binary(&self) -> Option<&Path> {
        match &self.result {
            CompileResult::Compiled { binary } => Some(binary),
            CompileResult::Failed { .. } => None,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The failure, for students (`None` when it compiled).
    pub fn failure(&self) -> Option<&str> {
        match &self.result {
            CompileResult::Compiled { .. } => None,
            CompileResult::Failed { message } => Some(message),
        }
    }
}

/// Limits of one compile: enough for a short candle program against the
/// prebuilt rlibs (about 10 s and 600 MB measured), tight enough that a
/// macro or const-eval bomb ends quickly.
pub fn default_compile_limits() -> Limits {
    Limits {
        wall: Duration::from_secs(60),
        cpu_seconds: Some(120),
        memory_bytes: 2 << 30,
        pids: 64,
        file_size_bytes: 256 << 20,
        open_files: 1024,
        work_bytes: 512 << 20,
        work_inodes: 1000,
        tmp_bytes: 512 << 20,
        stdout_bytes: 8 << 20,
        stderr_bytes: 1 << 20,
        max_line_bytes: 1 << 20,
    }
}

/// The Rust crate name of the lab's starter (from its Cargo.toml).
pub fn starter_crate_name(lab: &Lab) -> Result<String, CodeLabError> {
    let spec = code_spec(lab)?;
    let manifest = lab.dir().join(&spec.starter).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| CodeLabError::io(&manifest, e))?;
    let v: toml::Value = toml::from_str(&text)
        .map_err(|e| CodeLabError::Other(format!("{}: {e}", manifest.display())))?;
    let name = v
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| CodeLabError::Other(format!("{}: no package.name", manifest.display())))?;
    let name = name.replace('-', "_");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(CodeLabError::Other(format!(
            "{}: package name `{name}` is not a plain crate name",
            manifest.display()
        )));
    }
    Ok(name)
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<(), CodeLabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).map_err(|e| CodeLabError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| CodeLabError::io(path, e))
}

/// Quote one word for `sh -c` (single quotes).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The two rustc calls, as an `sh -c` script run in [`GUEST_WORK`]:
/// `src/lib.rs` as the starter's crate (an rlib), then `src/main.rs` as the
/// binary with `--extern` of it. Diagnostics (JSON) go to stdout.
fn compile_script(prebuilt: &Prebuilt, krate: &str, sysroot: &Path, rlibs: &Path) -> String {
    let rustc = sysroot.join("bin/rustc").display().to_string();
    let mut common = vec![
        "--sysroot".to_string(),
        sysroot.display().to_string(),
        "--edition=2021".into(),
        "--error-format=json".into(),
        "-C".into(),
        "opt-level=3".into(),
        "-C".into(),
        "codegen-units=1".into(),
        "-C".into(),
        "debuginfo=0".into(),
        "-C".into(),
        "strip=debuginfo".into(),
        format!("--remap-path-prefix={GUEST_WORK}/="),
        format!("--remap-path-prefix={GUEST_RLIBS}=/labkit"),
        format!("--remap-path-prefix={GUEST_SYSROOT}=/rust"),
    ];
    if let Some(l) = &prebuilt.linker {
        common.push("-C".into());
        common.push(format!("linker={}", l.display()));
    }
    common.extend(prebuilt.link_args(rlibs));
    let q = |v: &[String]| v.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ");
    let lib = [
        vec![
            "--crate-name".to_string(),
            krate.to_string(),
            "--crate-type".into(),
            "rlib".into(),
            "--out-dir".into(),
            "out".into(),
        ],
        common.clone(),
        vec!["src/lib.rs".into()],
    ]
    .concat();
    let bin = [
        vec![
            "--crate-name".to_string(),
            BINARY_NAME.to_string(),
            "--crate-type".into(),
            "bin".into(),
            "--extern".into(),
            format!("{krate}=out/lib{krate}.rlib"),
            "-o".into(),
            format!("out/{BINARY_NAME}"),
        ],
        common,
        vec!["src/main.rs".into()],
    ]
    .concat();
    format!(
        "{r} {lib} 2>&1 && {r} {bin} 2>&1",
        r = sh_quote(&rustc),
        lib = q(&lib),
        bin = q(&bin)
    )
}

/// Parse one rustc JSON diagnostic line.
fn parse_diagnostic(line: &str, prebuilt: &Prebuilt) -> Option<Diagnostic> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("$message_type").and_then(|t| t.as_str()) != Some("diagnostic") {
        return None;
    }
    let spans = v["spans"].as_array();
    let primary = spans.and_then(|s| {
        s.iter()
            .find(|sp| sp["is_primary"].as_bool() == Some(true))
            .or_else(|| s.first())
    });
    let num = |sp: &serde_json::Value, k: &str| sp[k].as_u64().map(|n| n as u32);
    let clean = |s: &str| prebuilt.scrub(s);
    Some(Diagnostic {
        level: v["level"].as_str().unwrap_or("error").to_string(),
        code: v["code"]["code"].as_str().map(str::to_string),
        message: clean(v["message"].as_str().unwrap_or_default()),
        file: primary.and_then(|sp| sp["file_name"].as_str()).map(clean),
        line: primary.and_then(|sp| num(sp, "line_start")),
        column: primary.and_then(|sp| num(sp, "column_start")),
        end_line: primary.and_then(|sp| num(sp, "line_end")),
        end_column: primary.and_then(|sp| num(sp, "column_end")),
        rendered: clean(v["rendered"].as_str().unwrap_or_default()),
    })
}

/// Compile a student's `src/lib.rs` (with the lab starter's `src/main.rs`)
/// in the sandbox. `work` is the job's work folder on the host (created if
/// missing); the binary ends up at `work/submission`, and nothing else of
/// the compile stays. `Err` only for failures of the runner (no bwrap,
/// cannot write files); a compile error or a limit is in the outcome.
pub fn compile_submission(
    prebuilt: &Prebuilt,
    lab: &Lab,
    source: &str,
    work: &Path,
    limits: &Limits,
) -> Result<CompileOutcome, CodeLabError> {
    let t0 = Instant::now();
    let failed = |message: String| CompileOutcome {
        result: CompileResult::Failed { message },
        diagnostics: Vec::new(),
        dropped_diagnostics: 0,
        rendered: String::new(),
        wall_s: t0.elapsed().as_secs_f64(),
        peak_memory_bytes: None,
    };
    if source.len() > MAX_SOURCE_BYTES {
        return Ok(failed(format!(
            "src/lib.rs has {} bytes, more than the {MAX_SOURCE_BYTES} allowed",
            source.len()
        )));
    }
    if source.contains('\0') {
        return Ok(failed("src/lib.rs contains a NUL byte".into()));
    }
    let spec = code_spec(lab)?;
    let krate = starter_crate_name(lab)?;
    let main_rs = lab.dir().join(&spec.starter).join("src/main.rs");
    let main_text = std::fs::read_to_string(&main_rs).map_err(|e| CodeLabError::io(&main_rs, e))?;

    std::fs::create_dir_all(work).map_err(|e| CodeLabError::io(work, e))?;
    let binary = work.join(BINARY_NAME);
    let _ = std::fs::remove_file(&binary);
    // The sandbox's /work: a fresh folder (a sized tmpfs where the host
    // allows), removed when `workdir` drops; the binary is copied out first.
    let sandbox_work = work.join(SANDBOX_WORK);
    if sandbox_work.exists() {
        let _ = std::fs::remove_dir_all(&sandbox_work);
    }
    let workdir = sanhak_sandbox::WorkDir::create(&sandbox_work, limits)
        .map_err(|e| CodeLabError::io(&sandbox_work, e))?;
    let guest_work = workdir.path().to_path_buf();
    for d in ["src", "out"] {
        let p = guest_work.join(d);
        std::fs::create_dir_all(&p).map_err(|e| CodeLabError::io(&p, e))?;
    }
    for (rel, text) in [("src/lib.rs", source), ("src/main.rs", main_text.as_str())] {
        let p = guest_work.join(rel);
        std::fs::write(&p, text).map_err(|e| CodeLabError::io(&p, e))?;
    }

    let mut sandbox_spec = SandboxSpec::new(
        vec![
            OsString::from("/usr/bin/sh"),
            OsString::from("-c"),
            OsString::from(compile_script(
                prebuilt,
                &krate,
                Path::new(GUEST_SYSROOT),
                Path::new(GUEST_RLIBS),
            )),
        ],
        &guest_work,
    );
    sandbox_spec.cwd = Some(PathBuf::from(GUEST_WORK));
    sandbox_spec.ro_binds = vec![
        Bind::new(&prebuilt.toolchain.sysroot, GUEST_SYSROOT),
        Bind::new(&prebuilt.dir, GUEST_RLIBS),
    ];
    sandbox_spec.env = vec![
        ("PATH".to_string(), GUEST_PATH.to_string()),
        // The sandbox sets HOME=/work; nothing of the host's.
        ("HOME".to_string(), GUEST_WORK.to_string()),
    ];
    sandbox_spec.limits = limits.clone();

    let mut diagnostics = Vec::new();
    let mut dropped = 0usize;
    let mut other = String::new();
    let outcome = sanhak_sandbox::run(&sandbox_spec, &mut |line: &str| {
        if let Some(d) = parse_diagnostic(line, prebuilt) {
            if diagnostics.len() < MAX_DIAGNOSTICS {
                diagnostics.push(d);
            } else {
                dropped += 1;
            }
        } else if other.len() < 64 * 1024 && !line.trim().is_empty() {
            other.push_str(line);
            other.push('\n');
        }
        LineAction::Continue
    })
    .map_err(|e| CodeLabError::Sandbox(e.to_string()))?;

    let mut rendered: String = diagnostics.iter().map(|d| d.rendered.as_str()).collect();
    if !other.is_empty() {
        rendered.push_str(&prebuilt.scrub(&other));
    }
    // Copy the binary out of the sandbox's folder: a regular file, no
    // symlink, at most the file-size limit.
    let mut copy_error = None;
    let binary_ok = outcome.status.success()
        && match sanhak_sandbox::read_output(
            &guest_work,
            &format!("out/{BINARY_NAME}"),
            limits.file_size_bytes,
        ) {
            Ok(bytes) => {
                write_executable(&binary, &bytes)?;
                true
            }
            Err(e) => {
                let listing: Vec<String> = std::fs::read_dir(guest_work.join("out"))
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                tracing::warn!(error = %e, ?listing, stderr = %outcome.stderr_tail,
                    "rustc succeeded but its binary cannot be read back");
                copy_error = Some(e.to_string());
                false
            }
        };
    drop(workdir);
    let n_errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let result = match &outcome.status {
        s if s.success() && binary_ok => CompileResult::Compiled { binary },
        s if s.success() => CompileResult::Failed {
            message: format!(
                "the compiler produced no usable binary: {}",
                copy_error.unwrap_or_default()
            ),
        },
        Status::Exited { .. } => CompileResult::Failed {
            message: match n_errors {
                0 => "your code did not compile".to_string(),
                1 => "your code did not compile: 1 error".to_string(),
                n => format!("your code did not compile: {n} errors"),
            },
        },
        other => CompileResult::Failed {
            message: format!(
                "the compiler was stopped: {}",
                prebuilt.scrub(&other.describe(limits))
            ),
        },
    };
    let stderr = prebuilt.scrub(outcome.stderr_tail.trim());
    if !stderr.is_empty() && !matches!(result, CompileResult::Compiled { .. }) {
        rendered.push_str(&stderr);
        rendered.push('\n');
    }
    Ok(CompileOutcome {
        result,
        diagnostics,
        dropped_diagnostics: dropped,
        rendered,
        wall_s: t0.elapsed().as_secs_f64(),
        peak_memory_bytes: outcome.peak_memory_bytes,
    })
}

// ---------------------------------------------------------------------------
// Benchmark hook

/// Compile times of one student file, sandboxed and bare.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileBench {
    pub runs: usize,
    pub sandboxed_p50_s: f64,
    pub sandboxed_p99_s: f64,
    pub bare_p50_s: f64,
    pub bare_p99_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Time `runs` compiles of `source` in the sandbox (warm cache: `prebuilt`
/// is ready) against the same two rustc calls run directly on the host, in
/// `scratch`. Every sandboxed compile must succeed.
pub fn bench_compile(
    prebuilt: &Prebuilt,
    lab: &Lab,
    source: &str,
    runs: usize,
    scratch: &Path,
) -> Result<CompileBench, CodeLabError> {
    let limits = default_compile_limits();
    let krate = starter_crate_name(lab)?;
    let spec = code_spec(lab)?;
    let main_rs = lab.dir().join(&spec.starter).join("src/main.rs");
    let mut sandboxed = Vec::new();
    let mut bare = Vec::new();
    for i in 0..runs.max(1) {
        let work = scratch.join(format!("sandboxed-{i}"));
        let _ = std::fs::remove_dir_all(&work);
        let t = Instant::now();
        let out = compile_submission(prebuilt, lab, source, &work, &limits)?;
        sandboxed.push(t.elapsed().as_secs_f64());
        if let Some(m) = out.failure() {
            return Err(CodeLabError::Other(format!(
                "bench compile failed: {m}\n{}",
                out.rendered
            )));
        }
        let _ = std::fs::remove_dir_all(&work);

        let dir = scratch.join(format!("bare-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).map_err(|e| CodeLabError::io(&dir, e))?;
        std::fs::create_dir_all(dir.join("out")).map_err(|e| CodeLabError::io(&dir, e))?;
        std::fs::write(dir.join("src/lib.rs"), source).map_err(|e| CodeLabError::io(&dir, e))?;
        std::fs::copy(&main_rs, dir.join("src/main.rs"))
            .map_err(|e| CodeLabError::io(&main_rs, e))?;
        let script = compile_script(prebuilt, &krate, &prebuilt.toolchain.sysroot, &prebuilt.dir);
        let t = Instant::now();
        let st = Command::new("/bin/sh")
            .args(["-c", &script])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", GUEST_PATH)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| CodeLabError::io(&dir, e))?;
        bare.push(t.elapsed().as_secs_f64());
        if !st.success() {
            return Err(CodeLabError::Other(format!("bare rustc failed: {st}")));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    sandboxed.sort_by(f64::total_cmp);
    bare.sort_by(f64::total_cmp);
    Ok(CompileBench {
        runs: sandboxed.len(),
        sandboxed_p50_s: percentile(&sandboxed, 0.5),
        sandboxed_p99_s: percentile(&sandboxed, 0.99),
        bare_p50_s: percentile(&bare, 0.5),
        bare_p99_s: percentile(&bare, 0.99),
    })
}
