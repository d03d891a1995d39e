//! `nixcache-operator`: `crd` prints the `NixCache` CustomResourceDefinition. Reconciling is not
//! implemented yet.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("crd") => {
            print!("{}", nixcache_operator::crd::crd_json());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: nixcache-operator crd   (reconciling is not implemented yet)");
            ExitCode::from(2)
        }
    }
}
