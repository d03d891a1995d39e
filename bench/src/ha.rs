//! The HA profile: three replicas on PostgreSQL, three Redis masters and SeaweedFS, each with its
//! node-local NAR tier, all on this machine, against nginx serving the same files and a
//! single-node nixcache on local disk, in the same run.
//!
//! - Warm hits through a replica's tier (filled from S3, as any replica but the downloader's is);
//!   cold S3 hits (a replica without a tier); narinfo req/s with 64 connections, NAR MiB/s with
//!   1 and 16 workers.
//! - The miss path across replicas: clients spread over the three ask for paths none has; upstream
//!   fetches per NAR (from nginx's log) and the NARs' time to first byte.
//! - Shared-service operations per hit: Redis commands (every master's `INFO commandstats`) and
//!   PostgreSQL transactions (`pg_stat_database`) during a pass of warm hits.
//! - Peak RSS per replica.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use nixcache_tests::postgres::Postgres;
use nixcache_tests::redis::Redis;
use nixcache_tests::seaweedfs::{self, SeaweedFs};

use crate::dataset::{Dataset, Entry};
use crate::measure::{self, median};
use crate::servers::{self, Server};
use crate::{warm, Args};

/// Commands Redis has run, over every master (the `INFO` asking is not counted).
fn redis_commands(redis: &[Redis]) -> anyhow::Result<u64> {
    let mut total = 0;
    for r in redis {
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &r.url(), "info", "commandstats"])
            .output()
            .context("redis-cli")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((name, stats)) = line.split_once(':') else {
                continue;
            };
            if !name.starts_with("cmdstat_") || name == "cmdstat_info" {
                continue;
            }
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            total += calls;
        }
    }
    Ok(total)
}

/// Transactions PostgreSQL has finished in the cache's database (each statement outside a
/// transaction is one). Statistics are flushed by backends within a second or so: read after a
/// pause.
fn pg_transactions(pg: &Postgres) -> u64 {
    pg.query(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

struct Ha {
    pg: Postgres,
    redis: Vec<Redis>,
    _s3: SeaweedFs,
    replicas: Vec<Server>,
    /// On the same database and bucket, without a tier: every hit is an S3 read.
    cold: Server,
}

async fn start(bin: &Path, upstream: &str, key: &str, work: &Path) -> anyhow::Result<Ha> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await?;
    let redis: Vec<Redis> =
        tokio::task::spawn_blocking(|| (0..3).map(|_| Redis::start()).collect()).await?;
    let s3 = tokio::task::spawn_blocking(SeaweedFs::start).await?;
    let db = pg.url();
    let endpoint = s3.endpoint.clone();
    let redis_urls: Vec<String> = redis.iter().map(Redis::url).collect();
    let env = [
        ("AWS_ACCESS_KEY_ID", seaweedfs::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", seaweedfs::SECRET_KEY),
    ];
    let replica = |n: usize, tier: bool| {
        let mut args: Vec<String> = vec![
            "--database-url".into(),
            db.clone(),
            "--storage-url".into(),
            "s3://nixcache/ha".into(),
            "--s3-endpoint".into(),
            endpoint.clone(),
        ];
        for r in &redis_urls {
            args.extend(["--redis".into(), r.clone()]);
        }
        if tier {
            args.extend([
                "--local-cache-dir".into(),
                work.join(format!("tier-{n}"))
                    .to_string_lossy()
                    .into_owned(),
                "--local-cache-size".into(),
                "4G".into(),
            ]);
        }
        let data = work.join(format!("replica-{n}"));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            servers::nixcache(bin, upstream, key, &data, &args, &env).await
        }
    };
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(replica(n, true).await?);
    }
    let cold = replica(3, false).await?;
    Ok(Ha {
        pg,
        redis,
        _s3: s3,
        replicas,
        cold,
    })
}

/// Every NAR held in `tier` (the fills run beside the responses): waits until `count` are.
async fn tier_filled(tier: &Path, count: usize) -> bool {
    for _ in 0..200 {
        let held = std::fs::read_dir(tier.join("nar"))
            .map(|d| d.count())
            .unwrap_or(0);
        if held >= count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Runs the HA profile; the markdown tables.
pub async fn run(args: &Args, data: &Dataset, work: &Path, bin: &Path) -> anyhow::Result<String> {
    // A share of the paths is kept back for the miss rounds (a distinct slice each round).
    let per_round = 6usize;
    let reserve = per_round * args.repeat;
    let (warm_set, miss_set) = data.entries.split_at(data.entries.len() - reserve);
    let warm_set: Vec<Entry> = warm_set.to_vec();

    let nginx = servers::nginx(&data.cache_dir, &work.join("nginx"), None).await?;
    let log = work.join("upstream-access.log");
    let upstream = servers::nginx(&data.cache_dir, &work.join("upstream"), Some(&log)).await?;
    let single = servers::nixcache(
        bin,
        &upstream.url,
        &data.public_key,
        &work.join("single"),
        &[],
        &[],
    )
    .await?;
    let ha = start(bin, &upstream.url, &data.public_key, work).await?;

    eprintln!("warming: single node, the downloading replica, then the others from S3");
    warm(&single.url, &warm_set).await?;
    warm(&ha.replicas[0].url, &warm_set).await?;
    for n in 1..3 {
        warm(&ha.replicas[n].url, &warm_set).await?;
        anyhow::ensure!(
            tier_filled(&work.join(format!("tier-{n}")), warm_set.len()).await,
            "replica {n}'s tier did not fill"
        );
    }
    // Replica 1 was last asked for anything before this.
    let warmed = std::time::Instant::now();
    warm(&ha.cold.url, &warm_set).await?;

    // Shared-service calls during warm hits on a replica whose tier holds every NAR: wrk with 16
    // connections over every narinfo and NAR for a few seconds, against as long a time with no
    // requests (what the processes do anyway: task polling, backend checks, access-time
    // flushes). A held NAR and a narinfo in memory are revalidated once per TTL (half the default
    // --gc-grace: 30 s) per replica: the hits' window starts after a pass made once everything
    // the replica holds has expired, and ends before the next expiry.
    let ttl = Duration::from_secs(31);
    let paths: Vec<String> = warm_set
        .iter()
        .flat_map(|e| [format!("/{}.narinfo", e.hash), format!("/{}", e.nar_url)])
        .collect();
    let window = |ha: &Ha| -> anyhow::Result<(u64, u64)> {
        Ok((redis_commands(&ha.redis)?, pg_transactions(&ha.pg)))
    };
    let seconds = 4.0;
    // PostgreSQL's backends report their counts lazily: at most once a second while busy, and
    // within 10 s once idle. Each reading waits that out, so that a window counts its own
    // transactions and not the tail of what came before (the warming passes).
    let settle = Duration::from_secs(11);
    tokio::time::sleep(settle).await;
    let idle_start = window(&ha)?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    tokio::time::sleep(settle).await;
    let idle_end = window(&ha)?;
    if let Some(rest) = ttl.checked_sub(warmed.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let revalidated = std::time::Instant::now();
    warm(&ha.replicas[1].url, &warm_set).await?;
    tokio::time::sleep(settle).await;
    let busy_start = window(&ha)?;
    let (rps, _) = measure::wrk(&ha.replicas[1].url, &paths, 16, seconds, work).await?;
    tokio::time::sleep(settle).await;
    let busy_end = window(&ha)?;
    anyhow::ensure!(
        revalidated.elapsed() < ttl - Duration::from_secs(1),
        "the hits' window outlasted the memory TTL: it would count revalidations"
    );
    let requests = rps * seconds;
    // Each reading query is one transaction of its own.
    let idle_pg = idle_end.1.saturating_sub(idle_start.1 + 1);
    let busy_pg = busy_end.1.saturating_sub(busy_start.1 + 1);
    let idle_redis = idle_end.0.saturating_sub(idle_start.0);
    let busy_redis = busy_end.0.saturating_sub(busy_start.0);
    // The processes' own background work comes in bursts, so the window's whole count is
    // reported, with the same count for an idle window: per hit it is at most this.
    let pg_per_hit = busy_pg as f64 / requests;
    let redis_per_hit = busy_redis as f64 / requests;
    eprintln!(
        "shared services: {busy_pg} PostgreSQL transactions and {busy_redis} Redis commands during {requests:.0} warm hits; {idle_pg} and {idle_redis} in as long without requests"
    );

    let servers = [&nginx, &single, &ha.replicas[1], &ha.cold];
    let mut rps: [Vec<f64>; 4] = Default::default();
    let mut nar1: [Vec<f64>; 4] = Default::default();
    let mut nar16: [Vec<f64>; 4] = Default::default();
    let mut peak = [0u64; 4];
    let mut peak_anon = [0u64; 4];
    for round in 0..args.repeat {
        eprintln!("HA round {}/{}", round + 1, args.repeat);
        for (i, s) in servers.iter().enumerate() {
            rps[i].push(
                measure::narinfo_throughput(&s.url, &warm_set, work, args.wrk_seconds).await?,
            );
            s.reset_peak_rss();
            let anon = s.watch_rss_anon();
            nar1[i].push(measure::nar_throughput(&s.url, &warm_set, 1, args.seconds, work).await?);
            nar16[i]
                .push(measure::nar_throughput(&s.url, &warm_set, 16, args.seconds, work).await?);
            peak_anon[i] = peak_anon[i].max(anon.finish());
            peak[i] = peak[i].max(s.peak_rss().unwrap_or(0));
        }
    }

    // Misses across the replicas: each round a slice of paths none has seen.
    let bases: Vec<String> = ha.replicas.iter().map(|r| r.url.clone()).collect();
    let (mut totals, mut ttfbs, mut fetches) = (vec![], vec![], 0usize);
    for (round, slice) in miss_set.chunks(per_round).enumerate() {
        eprintln!("HA miss round {}/{}", round + 1, args.repeat);
        std::fs::write(&log, "")?;
        let (t, f) = measure::miss_path(&bases, slice, args.miss_clients).await?;
        fetches = fetches.max(crate::max_fetches(&log, slice)?);
        totals.push(t);
        ttfbs.push(f);
    }
    let replica_peak = ha
        .replicas
        .iter()
        .filter_map(Server::peak_rss)
        .max()
        .unwrap_or(0)
        .max(peak[2]);

    let m = |v: &[f64]| median(v.to_vec());
    let mut table = String::from(
        "| measurement | nginx | single node (local disk) | HA warm (tier) | HA cold (S3) | warm / nginx | warm / single node | target |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (name, v) in [
        ("narinfo throughput, 64 connections (req/s)", &rps),
        ("NAR throughput, 1 worker (MiB/s)", &nar1),
        ("NAR throughput, 16 workers (MiB/s)", &nar16),
    ] {
        let (n, single, warm, cold) = (m(&v[0]), m(&v[1]), m(&v[2]), m(&v[3]));
        table.push_str(&format!(
            "| {name} | {n:.0} | {single:.0} | {warm:.0} | {cold:.0} | {:.2}× | {:.2}× | warm ≥ 0.9× single node |\n",
            warm / n,
            warm / single
        ));
    }
    let mut others = String::from("| measurement | HA | target |\n|---|---:|---|\n");
    for (name, value, target) in [
        (
            format!(
                "miss across 3 replicas: {} clients × {per_round} paths, total (s)",
                args.miss_clients
            ),
            format!("{:.2}", m(&totals)),
            "",
        ),
        (
            "miss across 3 replicas: NAR time to first byte, median (ms)".into(),
            format!("{:.1}", m(&ttfbs)),
            "",
        ),
        (
            "miss across 3 replicas: upstream fetches per NAR (max)".into(),
            fetches.to_string(),
            "1",
        ),
        (
            format!("warm hits: Redis commands in a {seconds:.0} s wrk run of {requests:.0} hits (+11 s), per hit at most"),
            format!("{redis_per_hit:.4} ({busy_redis}; idle window: {idle_redis})"),
            "0",
        ),
        (
            "warm hits: PostgreSQL transactions, whole cluster, in the same window, per hit at most"
                .to_string(),
            format!("{pg_per_hit:.4} ({busy_pg}; idle window: {idle_pg})"),
            "0",
        ),
        (
            "HA replica peak RSS (MiB; VmHWM, mapped file pages included)".into(),
            format!("{:.1}", replica_peak as f64 / (1 << 20) as f64),
            "",
        ),
        (
            "HA replica (warm) peak RssAnon during NAR runs (MiB; its own memory)".into(),
            format!("{:.1}", peak_anon[2] as f64 / (1 << 20) as f64),
            "< 150",
        ),
        (
            "single node peak RSS (MiB; VmHWM)".into(),
            format!("{:.1}", peak[1] as f64 / (1 << 20) as f64),
            "",
        ),
        (
            "single node peak RssAnon during NAR runs (MiB)".into(),
            format!("{:.1}", peak_anon[1] as f64 / (1 << 20) as f64),
            "",
        ),
    ] {
        others.push_str(&format!("| {name} | {value} | {target} |\n"));
    }
    drop(ha);
    drop(single);
    drop(upstream);
    drop(nginx);
    Ok(format!("{table}\n{others}"))
}
