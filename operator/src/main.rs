//! `nixcache-operator`: `run` reconciles NixCache resources (in a cluster, or from outside with a
//! kubeconfig); `crd` prints the CustomResourceDefinition.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nixcache-operator",
    version,
    about = "Kubernetes operator for nixcache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile NixCache resources until SIGTERM.
    Run(Box<nixcache_operator::run::RunArgs>),
    /// Print the NixCache CustomResourceDefinition (JSON, which is also YAML).
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", nixcache_operator::crd::crd_json());
            ExitCode::SUCCESS
        }
        Command::Run(args) => match nixcache_operator::run::run(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nixcache-operator: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
