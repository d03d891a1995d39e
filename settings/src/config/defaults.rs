//! The defaults of the settings that have a value of their own, each named once: resolution
//! parses them as it parses a given value, and `--help` shows them ([`show_in_help`]). Defaults
//! that follow from other settings (the database, storage and signing key under DATA_DIR, the
//! lock namespace) are described in their flags' help instead.

use crate::keys::CACHE_NIXOS_ORG_KEY;

pub const LISTEN: &str = "0.0.0.0:8080";
pub const DATA_DIR: &str = "./nixcache-data";
pub const UPSTREAM: &str = "https://cache.nixos.org";
pub const UPSTREAM_KEY: &str = CACHE_NIXOS_ORG_KEY;
pub const SIGNING_KEY_NAME: &str = "nixcache-1";
pub const PRIORITY: &str = "40";
pub const UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
pub const UPSTREAM_TIMEOUT: &str = "10s";
pub const UPSTREAM_STALL_TIMEOUT: &str = "60s";
pub const NEGATIVE_TTL: &str = "60s";
pub const UPSTREAM_LOOKUP: &str = "parallel";
pub const UPSTREAM_FAILURE_THRESHOLD: &str = "3";
pub const UPSTREAM_BACKOFF: &str = "30s";
pub const MAX_DOWNLOADS: &str = "32";
pub const DOWNLOAD_QUEUE_TIMEOUT: &str = "10s";
pub const STAGING_MIN_FREE: &str = "256MiB";
pub const NAR_FAILURE_TTL: &str = "10s";
pub const NARINFO_MEMORY_ENTRIES: &str = "100000";
pub const STORE_DIR: &str = crate::store::DEFAULT_STORE_DIR;
pub const S3_REGION: &str = "us-east-1";
pub const LOCK_TTL: &str = "30s";
pub const INFLIGHT_PART_SIZE: &str = "8388608";
pub const LOCAL_CACHE_SIZE: &str = "10G";
pub const GC_GRACE: &str = "60s";
pub const GC_UNFETCHED_TTL: &str = "1h";
pub const SHUTDOWN_TIMEOUT: &str = "30s";
pub const SHUTDOWN_DELAY: &str = "5s";
pub const LOG_FORMAT: &str = "text";
pub const MAX_UPLOAD_SIZE: &str = "8GiB";
pub const MAX_LOG_UPLOAD_SIZE: &str = "16MiB";
pub const TASK_RETENTION: &str = "7days";
pub const SERVICE_ACCOUNT_AUDIENCE: &str = "nixcache";
pub const TOKEN_REVIEW_TTL: &str = "30s";

/// Each setting (its argument id, the field of [`super::ServeArgs`]) with its default.
pub const ALL: &[(&str, &str)] = &[
    ("listen", LISTEN),
    ("data_dir", DATA_DIR),
    ("upstreams", UPSTREAM),
    ("upstream_keys", UPSTREAM_KEY),
    ("signing_key_name", SIGNING_KEY_NAME),
    ("priority", PRIORITY),
    ("upstream_connect_timeout", UPSTREAM_CONNECT_TIMEOUT),
    ("upstream_timeout", UPSTREAM_TIMEOUT),
    ("upstream_stall_timeout", UPSTREAM_STALL_TIMEOUT),
    ("negative_ttl", NEGATIVE_TTL),
    ("upstream_lookup", UPSTREAM_LOOKUP),
    ("upstream_failure_threshold", UPSTREAM_FAILURE_THRESHOLD),
    ("upstream_backoff", UPSTREAM_BACKOFF),
    ("max_downloads", MAX_DOWNLOADS),
    ("download_queue_timeout", DOWNLOAD_QUEUE_TIMEOUT),
    ("staging_min_free", STAGING_MIN_FREE),
    ("nar_failure_ttl", NAR_FAILURE_TTL),
    ("narinfo_memory_entries", NARINFO_MEMORY_ENTRIES),
    ("store_dir", STORE_DIR),
    ("s3_region", S3_REGION),
    ("lock_ttl", LOCK_TTL),
    ("inflight_part_size", INFLIGHT_PART_SIZE),
    ("local_cache_size", LOCAL_CACHE_SIZE),
    ("gc_grace", GC_GRACE),
    ("gc_unfetched_ttl", GC_UNFETCHED_TTL),
    ("shutdown_timeout", SHUTDOWN_TIMEOUT),
    ("shutdown_delay", SHUTDOWN_DELAY),
    ("log_format", LOG_FORMAT),
    ("max_upload_size", MAX_UPLOAD_SIZE),
    ("max_log_upload_size", MAX_LOG_UPLOAD_SIZE),
    ("task_retention", TASK_RETENTION),
    ("service_account_audience", SERVICE_ACCOUNT_AUDIENCE),
    ("token_review_ttl", TOKEN_REVIEW_TTL),
];

/// `cmd` (a command with [`super::ServeArgs`] among its arguments) with each setting's default
/// at the end of its help, as `[default: …]`. The arguments keep no clap default: an unset flag
/// must stay unset, so that the environment and the file can still set it.
pub fn show_in_help(cmd: clap::Command) -> clap::Command {
    ALL.iter().fold(cmd, |cmd, (id, default)| {
        cmd.mut_arg(*id, |arg| {
            let add = |help: Option<&clap::builder::StyledStr>| {
                let help = help.map(ToString::to_string).unwrap_or_default();
                format!("{} [default: {default}]", help.trim_end())
            };
            let long = arg.get_long_help().map(|h| add(Some(h)));
            let short = add(arg.get_help());
            let arg = arg.help(short);
            match long {
                Some(long) => arg.long_help(long),
                None => arg,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::*;

    #[test]
    fn every_default_names_a_setting_and_shows_in_its_help() {
        let cmd = show_in_help(super::super::ServeArgs::augment_args(Command::new("serve")));
        for (id, default) in ALL {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == *id)
                .unwrap_or_else(|| panic!("no setting {id}"));
            let help = arg.get_help().expect("help").to_string();
            assert!(
                help.ends_with(&format!("[default: {default}]")),
                "{id}: {help}"
            );
            assert_eq!(help.matches("[default:").count(), 1, "{id}: {help}");
            assert!(
                arg.get_default_values().is_empty(),
                "{id} has a clap default"
            );
        }
    }
}
