//! `nixcache`: the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nixcache::admin::{PinChange, PinList, PinRequest, PrefetchReport, PrefetchRequest, TaskState};
use nixcache::admin_client::Posted;
use nixcache::config::{defaults, write_secret, LogFormat, ServeArgs};
use nixcache::nix::SecretKey;

#[derive(Parser)]
#[command(
    name = "nixcache",
    version,
    about = "A pull-through Nix binary cache proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the cache.
    Serve(ServeArgs),
    /// Generate a signing key pair in Nix's format and print the public key.
    Keygen {
        /// Key name, e.g. `cache.example.org-1`.
        #[arg(long)]
        name: String,
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long, value_name = "PATH")]
        secret_key_file: PathBuf,
        /// Where to write the public key as well.
        #[arg(long, value_name = "PATH")]
        public_key_file: Option<PathBuf>,
    },
    /// Run one GC pass (LRU eviction down to --max-size), print a summary and exit. Takes the same
    /// settings as `serve`, and may run while servers serve.
    Gc(ServeArgs),
    /// Check database and storage against each other; exit 1 when problems are found.
    Fsck {
        /// Also read every NAR and check it against its narinfo's hashes.
        #[arg(long)]
        deep: bool,
        /// With --deep, read only this many NARs, spread evenly over the recorded ones (a spot
        /// check of a large cache); the others are checked for presence and size.
        #[arg(long, value_name = "N", requires = "deep", value_parser = clap::value_parser!(u64).range(1..))]
        sample: Option<u64>,
        /// Fix what is safe to fix: forget bad or missing NARs (they are fetched again on demand),
        /// delete orphans, record unrecorded good NARs.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Apply database migrations and exit.
    Migrate(ServeArgs),
    /// Have a running nixcache fetch store paths and their closures (its admin API). Waits,
    /// showing progress, and prints what it did; exit 1 when a path could not be had. With
    /// --async, prints the task's id and returns at once.
    Prefetch {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only the paths named, not their closures.
        #[arg(long)]
        no_closure: bool,
        /// Return once the server has recorded the task; follow it with `nixcache tasks`.
        #[arg(long = "async")]
        run_async: bool,
        /// Store paths (`/nix/store/<hash>-<name>`).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Show a task of a running nixcache's admin API (from `nixcache prefetch --async`); exit 1
    /// when it failed or, for a prefetch, a path could not be had.
    Tasks {
        #[command(flatten)]
        admin: AdminArgs,
        /// Wait until the task has finished, showing its progress.
        #[arg(long)]
        wait: bool,
        /// Print the task as JSON.
        #[arg(long)]
        json: bool,
        /// The task's id.
        id: String,
    },
    /// Pin store paths on a running nixcache (its admin API): GC never evicts their closures.
    /// Pin what the cache holds (`nixcache prefetch` fetches it).
    Pin {
        #[command(flatten)]
        admin: AdminArgs,
        /// Store paths (`/nix/store/<hash>-<name>`).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Remove pins recorded with `nixcache pin` (pins of the server's configuration stay).
    Unpin {
        #[command(flatten)]
        admin: AdminArgs,
        /// Store paths (`/nix/store/<hash>-<name>`).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// List a running nixcache's pins: path, and `config` or when it was pinned.
    Pins {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The nixcache, e.g. `http://nixcache.example:8080`.
    #[arg(long, env = "NIXCACHE_SERVER", value_name = "URL")]
    server: String,
    /// File holding the admin token (or NIXCACHE_ADMIN_TOKEN).
    #[arg(long, env = "NIXCACHE_ADMIN_TOKEN_FILE", value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<nixcache::admin_client::Client> {
        let token = admin_token(self.admin_token_file.as_deref())?;
        Ok(nixcache::admin_client::Client::new(&self.server, token))
    }
}

/// `nixcache prefetch`: true when every path is cached at the end (or, with `run_async`, the
/// task was recorded).
async fn prefetch(
    client: &nixcache::admin_client::Client,
    request: &PrefetchRequest,
    run_async: bool,
    server: &str,
) -> anyhow::Result<bool> {
    use nixcache::admin_client::{print_prefetch, print_task, Posted};
    // Waiting is done on a task too: that is where the progress is.
    match client
        .post::<PrefetchReport>("prefetch", request, true)
        .await?
    {
        Posted::Done(report) => Ok(print_prefetch(&report)),
        Posted::Task(task) => {
            if run_async {
                println!("{}", task.id);
                eprintln!(
                    "follow it with: nixcache tasks --server {server} --wait {}",
                    task.id
                );
                return Ok(true);
            }
            let task = client.wait(&task.id).await?;
            match task.prefetch_report() {
                Some(report) if task.state == TaskState::Succeeded => Ok(print_prefetch(&report)),
                _ => Ok(print_task(&task)),
            }
        }
    }
}

async fn tasks(
    client: &nixcache::admin_client::Client,
    id: &str,
    wait: bool,
    json: bool,
) -> anyhow::Result<bool> {
    let task = if wait {
        client.wait(id).await?
    } else {
        client.task(id).await?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&task)?);
        return Ok(nixcache::admin_client::task_complete(&task));
    }
    Ok(nixcache::admin_client::print_task(&task))
}

/// The admin token from NIXCACHE_ADMIN_TOKEN or a file.
fn admin_token(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        return Ok(text.trim().to_string());
    }
    std::env::var("NIXCACHE_ADMIN_TOKEN")
        .map_err(|_| anyhow::anyhow!("give --admin-token-file or NIXCACHE_ADMIN_TOKEN"))
}

fn init_logging(format: LogFormat) {
    // Commands other than `serve` export no spans.
    if let Err(e) = nixcache::telemetry::init(format, None) {
        eprintln!("logging: {e}");
    }
}

fn keygen(name: &str, secret: &Path, public: Option<&Path>) -> anyhow::Result<()> {
    let key = SecretKey::generate(name)?;
    write_secret(secret, &key.to_file_contents())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", secret.display()))?;
    if let Some(p) = public {
        std::fs::write(p, key.public_key().to_string())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    println!("{}", key.public_key());
    Ok(())
}

/// The command line, with each `serve` setting's default in the help of the commands that take
/// them.
fn command() -> clap::Command {
    ["serve", "gc", "fsck", "migrate"]
        .into_iter()
        .fold(Cli::command(), |cmd, name| {
            cmd.mut_subcommand(name, defaults::show_in_help)
        })
}

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Keygen {
            name,
            secret_key_file,
            public_key_file,
        } => keygen(&name, &secret_key_file, public_key_file.as_deref()),
        Command::Serve(args) => args.resolve().map_err(Into::into).and_then(|config| {
            let _telemetry =
                nixcache::telemetry::init(config.log_format, config.otlp_traces.as_ref())?;
            actix_web::rt::System::new().block_on(nixcache::server::serve(config))
        }),
        Command::Gc(args) => args.resolve().map_err(Into::into).and_then(|config| {
            init_logging(config.log_format);
            let report = actix_web::rt::System::new().block_on(nixcache::server::gc_once(config))?;
            if report.ran {
                println!(
                    "evicted {} narinfos and {} NARs ({} bytes, {} of them orphans) and {} unfetched narinfos in {:.1} s; stored NARs {} -> {} bytes",
                    report.narinfos_evicted,
                    report.nars_evicted,
                    report.bytes_evicted,
                    report.orphans_collected,
                    report.unfetched_collected,
                    report.seconds,
                    report.size_before,
                    report.size_after
                );
                println!("phases: {}", report.phases);
                println!(
                    "pins: {} paths pinned, {} narinfos kept for them; {} evicted for --max-age",
                    report.pinned_paths, report.pinned_kept, report.aged_out
                );
            } else {
                println!("skipped: another process holds the gc lock");
            }
            Ok(())
        }),
        Command::Fsck {
            deep,
            sample,
            repair,
            args,
        } => args.resolve().map_err(Into::into).and_then(|config| {
            init_logging(config.log_format);
            let sample = sample.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let problems = actix_web::rt::System::new()
                .block_on(nixcache::server::fsck(config, deep, sample, repair))?;
            for p in &problems {
                println!("{p}{}", if repair { " (repaired)" } else { "" });
            }
            println!("{} problem(s){}", problems.len(), if repair { ", repaired" } else { "" });
            if problems.is_empty() || repair {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }),
        Command::Prefetch {
            admin,
            no_closure,
            run_async,
            paths,
        } => admin.client().and_then(|client| {
            let request = PrefetchRequest {
                paths,
                closure: !no_closure,
            };
            let complete = actix_web::rt::System::new().block_on(prefetch(
                &client,
                &request,
                run_async,
                &admin.server,
            ))?;
            if complete {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }),
        Command::Tasks {
            admin,
            wait,
            json,
            id,
        } => admin.client().and_then(|client| {
            let ok = actix_web::rt::System::new().block_on(tasks(&client, &id, wait, json))?;
            if ok {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }),
        Command::Pin { admin, paths } => admin.client().and_then(|client| {
            let body = PinRequest { paths };
            let change: PinChange = actix_web::rt::System::new().block_on(async {
                match client.post("pins", &body, false).await? {
                    Posted::Done(change) => Ok::<_, anyhow::Error>(change),
                    Posted::Task(_) => anyhow::bail!("the server answered with a task"),
                }
            })?;
            println!("pinned {} new of {} paths", change.changed, body.paths.len());
            Ok(())
        }),
        Command::Unpin { admin, paths } => admin.client().and_then(|client| {
            let body = PinRequest { paths };
            let change: PinChange =
                actix_web::rt::System::new().block_on(client.delete("pins", &body))?;
            println!("unpinned {} of {} paths", change.changed, body.paths.len());
            Ok(())
        }),
        Command::Pins { admin } => admin.client().and_then(|client| {
            let list: PinList = actix_web::rt::System::new().block_on(client.get("pins"))?;
            for pin in list.pins {
                let since = match pin.since {
                    Some(t) => chrono::DateTime::from_timestamp(t, 0)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    None => pin.source.clone(),
                };
                println!("{}\t{since}", pin.path);
            }
            Ok(())
        }),
        Command::Migrate(args) => args.resolve().map_err(Into::into).and_then(|config| {
            init_logging(config.log_format);
            actix_web::rt::System::new().block_on(async {
                nixcache::server::open_database(&config).await?;
                tracing::info!("database is up to date");
                Ok(())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        super::command().debug_assert();
    }
}
