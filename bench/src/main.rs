//! `nixcache-bench`: the cache-shootout method. Builds a realistic binary cache, serves it with
//! nginx (static files, the baseline) and through nixcache (warmed), measures both the same way in
//! the same run, and reports medians and nixcache / nginx ratios as a markdown table.

mod dataset;
mod ha;
mod measure;
mod scale;
mod servers;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Parser;
use futures_util::StreamExt;

use dataset::{Entry, Profile};
use measure::median;

#[derive(Parser)]
#[command(about = "nixcache against nginx serving the same binary cache")]
pub(crate) struct Args {
    /// `quick` (~300 MiB, 150 paths), `full` (~1 GiB, 400 paths), `ha` (three replicas on
    /// PostgreSQL, Redis and SeaweedFS with their local tiers, on the quick data set), or `scale`
    /// (generated caches of `--sizes` paths in PostgreSQL).
    #[arg(long, default_value = "quick")]
    pub(crate) profile: String,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) repeat: usize,
    /// Where generated data sets are kept (reused across runs).
    #[arg(long, default_value = "target/bench-data")]
    pub(crate) data: PathBuf,
    /// Results file; the table for this profile is replaced, everything else in it kept.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub(crate) out: PathBuf,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 5)]
    pub(crate) wrk_seconds: u32,
    /// Least seconds of each latency and NAR throughput run (whole passes over the data set).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) seconds: f64,
    /// Concurrent clients in the miss-path measurement.
    #[arg(long, default_value_t = 16)]
    pub(crate) miss_clients: usize,
    /// Paths (spread over all sizes) in the miss-path measurement.
    #[arg(long, default_value_t = 24)]
    pub(crate) miss_paths: usize,
    /// `scale`: the numbers of paths measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub(crate) sizes: Vec<usize>,
    /// `scale`: narinfo lookups measured per size (paths spread over the cache).
    #[arg(long, default_value_t = 2000)]
    pub(crate) lookups: usize,
    /// `scale`: NARs read by `fsck --deep --sample`.
    #[arg(long, default_value_t = 1000)]
    pub(crate) deep_sample: usize,
    /// `scale`: PostgreSQL's `shared_buffers`. At 1M paths the indexes GC probes in random key
    /// order are larger than PostgreSQL's default (128MB), and every miss is a read.
    #[arg(long, default_value = "1GB")]
    pub(crate) pg_shared_buffers: String,
}

struct Row {
    name: String,
    nginx: Option<f64>,
    nixcache: f64,
    /// nixcache with S3 storage, where measured.
    s3: Option<f64>,
    target: &'static str,
    decimals: usize,
}

fn fmt(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| measurement | nginx | nixcache | nixcache / nginx | nixcache on S3 | S3 / nginx | target |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) => format!("{:.2}×", v / b),
        _ => "–".into(),
    };
    let cell = |v: Option<f64>, d: usize| v.map_or("–".into(), |v| fmt(v, d));
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            cell(r.nginx, r.decimals),
            fmt(r.nixcache, r.decimals),
            ratio(Some(r.nixcache), r.nginx),
            cell(r.s3, r.decimals),
            ratio(r.s3, r.nginx),
            r.target
        ));
    }
    s
}

/// Fetches every narinfo and NAR once through nixcache, checking sizes: afterwards all are hits.
pub(crate) async fn warm(base: &str, entries: &[Entry]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut tasks = futures_util::stream::iter(entries.iter().cloned().map(|e| {
        let (client, base) = (client.clone(), base.to_string());
        async move {
            let r = client
                .get(format!("{base}/{}.narinfo", e.hash))
                .send()
                .await?;
            if r.status() != 200 {
                bail!("warming {}: narinfo {}", e.hash, r.status());
            }
            let text = r.text().await?;
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("URL: "))
                .context("narinfo without URL")?
                .to_string();
            let body = client
                .get(format!("{base}/{url}"))
                .send()
                .await?
                .bytes()
                .await?;
            if body.len() as u64 != e.file_size {
                bail!(
                    "warming {}: {} bytes, expected {}",
                    e.hash,
                    body.len(),
                    e.file_size
                );
            }
            Ok(())
        }
    }))
    .buffer_unordered(8);
    while let Some(r) = tasks.next().await {
        r?;
    }
    Ok(())
}

/// Counts GETs of each NAR in an nginx access log; returns the largest count.
pub(crate) fn max_fetches(log: &Path, entries: &[Entry]) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok(entries
        .iter()
        .map(|e| {
            text.lines()
                .filter(|l| l.contains(&format!("GET /{} ", e.nar_url)))
                .count()
        })
        .max()
        .unwrap_or(0))
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cores} cores ({cpu})")
}

fn replace_section(out: &Path, profile: &str, section: &str) -> anyhow::Result<()> {
    let (begin, end) = (
        format!("<!-- {profile}:begin -->"),
        format!("<!-- {profile}:end -->"),
    );
    let old = std::fs::read_to_string(out).unwrap_or_else(|_| "# Benchmark results\n\n".into());
    let block = format!("{begin}\n{section}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(out, new)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    if args.profile == "scale" {
        std::fs::create_dir_all(&args.data)?;
        // Beside the other data sets, not in /tmp: a million small files want a real disk.
        let work = tempfile::tempdir_in(std::fs::canonicalize(&args.data)?)?;
        let bin = servers::nixcache_bin()?;
        let table = scale::run(&args, work.path(), &bin).await?;
        let section = format!(
            "## Profile `scale`\n\nGenerated caches in PostgreSQL and local storage (a signed narinfo and an uncompressed NAR of a few hundred bytes per path); PostgreSQL `shared_buffers` {}; commit {}; {}; {} s in all.\n\n{table}\n",
            args.pg_shared_buffers,
            commit(),
            machine(),
            started.elapsed().as_secs(),
        );
        println!("{section}");
        replace_section(&args.out, "scale", &section)?;
        eprintln!("written to {}", args.out.display());
        return Ok(());
    }
    let profile: Profile = match args.profile.as_str() {
        "quick" | "ha" => dataset::QUICK,
        "full" => dataset::FULL,
        p => bail!("unknown profile {p:?} (quick, full, ha, scale)"),
    };
    let data = dataset::ensure(&args.data, profile).await?;
    let total: u64 = data.entries.iter().map(|e| e.file_size).sum();
    eprintln!(
        "data set: {} paths, {} MiB compressed",
        data.entries.len(),
        total >> 20
    );
    let work = tempfile::tempdir()?;
    let bin = servers::nixcache_bin()?;
    if args.profile == "ha" {
        let tables = ha::run(&args, &data, work.path(), &bin).await?;
        let section = format!(
            "## Profile `ha`\n\nThree replicas (PostgreSQL, three Redis masters, SeaweedFS, a node-local tier each) on the quick data set: {} paths, {} MiB compressed; median of {} runs; commit {}; {}; {} s in all.\n\n{tables}\n",
            data.entries.len(),
            total >> 20,
            args.repeat,
            commit(),
            machine(),
            started.elapsed().as_secs(),
        );
        println!("{section}");
        replace_section(&args.out, "ha", &section)?;
        eprintln!("written to {}", args.out.display());
        return Ok(());
    }

    // Hits: nginx serving the files, nixcache warmed in front of it.
    let nginx = servers::nginx(&data.cache_dir, &work.path().join("nginx"), None).await?;
    let nixcache = servers::nixcache(
        &bin,
        &nginx.url,
        &data.public_key,
        &work.path().join("nixcache"),
        &[],
        &[],
    )
    .await?;
    let nixcache_s3 = servers::nixcache_s3(
        &bin,
        &nginx.url,
        &data.public_key,
        &work.path().join("nixcache-s3"),
    )
    .await?;
    eprintln!("warming nixcache (local storage and S3)");
    warm(&nixcache.url, &data.entries).await?;
    warm(&nixcache_s3.url, &data.entries).await?;

    let all = [&nginx, &nixcache, &nixcache_s3];
    let mut latency = [vec![], vec![], vec![]];
    let mut rps = [vec![], vec![], vec![]];
    let mut nar: [[Vec<f64>; 3]; 3] = Default::default();
    let workers = [1usize, 4, 16];
    let mut peak_rss = [0u64; 3];
    let mut peak_anon = [0u64; 3];
    // CPU seconds the server spent per GiB it sent, by worker count.
    let mut cpu_per_gib: [[Vec<f64>; 3]; 3] = Default::default();
    for round in 0..args.repeat {
        eprintln!("round {}/{}", round + 1, args.repeat);
        for (i, s) in all.iter().enumerate() {
            latency[i].push(measure::narinfo_latency(&s.url, &data.entries, args.seconds).await?);
            rps[i].push(
                measure::narinfo_throughput(&s.url, &data.entries, work.path(), args.wrk_seconds)
                    .await?,
            );
            s.reset_peak_rss();
            let anon = s.watch_rss_anon();
            for (w, n) in workers.iter().enumerate() {
                let (cpu, wall) = (s.cpu_seconds(), Instant::now());
                let mib_s =
                    measure::nar_throughput(&s.url, &data.entries, *n, args.seconds, work.path())
                        .await?;
                let gib = mib_s * wall.elapsed().as_secs_f64() / 1024.0;
                cpu_per_gib[i][w].push((s.cpu_seconds() - cpu) / gib);
                nar[i][w].push(mib_s);
            }
            peak_anon[i] = peak_anon[i].max(anon.finish());
            peak_rss[i] = peak_rss[i].max(s.peak_rss().unwrap_or(0));
        }
    }
    drop(nixcache_s3);
    drop(nixcache);
    drop(nginx);

    // Misses: a fresh nixcache per round in front of a logging nginx, against the same clients
    // fetching from that nginx directly.
    let step = (data.entries.len() / args.miss_paths.max(1)).max(1);
    let sample: Vec<Entry> = data
        .entries
        .iter()
        .step_by(step)
        .take(args.miss_paths)
        .cloned()
        .collect();
    let log = work.path().join("upstream-access.log");
    let upstream =
        servers::nginx(&data.cache_dir, &work.path().join("upstream"), Some(&log)).await?;
    let (mut miss_total, mut miss_ttfb, mut direct_total, mut direct_ttfb, mut fetches) =
        (vec![], vec![], vec![], vec![], 0);
    for round in 0..args.repeat {
        eprintln!("miss round {}/{}", round + 1, args.repeat);
        let fresh = work.path().join(format!("miss-{round}"));
        let cache =
            servers::nixcache(&bin, &upstream.url, &data.public_key, &fresh, &[], &[]).await?;
        std::fs::write(&log, "")?;
        let (t, f) =
            measure::miss_path(std::slice::from_ref(&cache.url), &sample, args.miss_clients)
                .await?;
        fetches = fetches.max(max_fetches(&log, &sample)?);
        miss_total.push(t);
        miss_ttfb.push(f);
        drop(cache);
        let (t, f) = measure::miss_path(
            std::slice::from_ref(&upstream.url),
            &sample,
            args.miss_clients,
        )
        .await?;
        direct_total.push(t);
        direct_ttfb.push(f);
    }
    drop(upstream);

    let m = |v: &Vec<f64>| median(v.clone());
    let mut rows = vec![
        Row {
            name: "narinfo latency, median (µs)".into(),
            nginx: Some(m(&latency[0])),
            nixcache: m(&latency[1]),
            s3: Some(m(&latency[2])),
            target: "≤ 1.1×",
            decimals: 0,
        },
        Row {
            name: "narinfo throughput, 64 connections (req/s)".into(),
            nginx: Some(m(&rps[0])),
            nixcache: m(&rps[1]),
            s3: Some(m(&rps[2])),
            target: "≥ 0.8×",
            decimals: 0,
        },
    ];
    for (w, n) in workers.iter().enumerate() {
        rows.push(Row {
            name: format!(
                "NAR throughput, {n} worker{} (MiB/s)",
                if *n == 1 { "" } else { "s" }
            ),
            nginx: Some(m(&nar[0][w])),
            nixcache: m(&nar[1][w]),
            s3: Some(m(&nar[2][w])),
            target: if *n == 4 { "" } else { "≥ 0.9×" },
            decimals: 0,
        });
    }
    let clients = args.miss_clients;
    let paths = sample.len();
    rows.extend([
        Row {
            name: format!("miss: {clients} clients × {paths} paths, total (s)"),
            nginx: Some(m(&direct_total)),
            nixcache: m(&miss_total),
            s3: None,
            target: "",
            decimals: 2,
        },
        Row {
            name: "miss: NAR time to first byte, median (ms)".into(),
            nginx: Some(m(&direct_ttfb)),
            nixcache: m(&miss_ttfb),
            s3: None,
            target: "within a few ms",
            decimals: 1,
        },
        Row {
            name: "miss: upstream fetches per NAR (max)".into(),
            nginx: None,
            nixcache: fetches as f64,
            s3: None,
            target: "1",
            decimals: 0,
        },
        Row {
            name: "nixcache peak RSS during NAR runs (MiB; VmHWM, mapped file pages included)"
                .into(),
            nginx: None,
            nixcache: peak_rss[1] as f64 / (1 << 20) as f64,
            s3: Some(peak_rss[2] as f64 / (1 << 20) as f64),
            target: "",
            decimals: 1,
        },
        Row {
            name:
                "nixcache peak RssAnon during NAR runs (MiB; its own memory, sampled every 20 ms)"
                    .into(),
            nginx: None,
            nixcache: peak_anon[1] as f64 / (1 << 20) as f64,
            s3: Some(peak_anon[2] as f64 / (1 << 20) as f64),
            target: "< 150",
            decimals: 1,
        },
    ]);
    // After the throughput rows: CPU per GiB (the server's own; for S3, without SeaweedFS's).
    for (w, n) in workers.iter().enumerate() {
        rows.insert(
            5 + w,
            Row {
                name: format!(
                    "server CPU per GiB of NARs sent, {n} worker{} (core-seconds)",
                    if *n == 1 { "" } else { "s" }
                ),
                nginx: Some(m(&cpu_per_gib[0][w])),
                nixcache: m(&cpu_per_gib[1][w]),
                s3: Some(m(&cpu_per_gib[2][w])),
                target: "",
                decimals: 3,
            },
        );
    }

    let commit = commit();
    let section = format!(
        "## Profile `{}`\n\n{} paths, ~{} MiB of NARs ({} MiB compressed); median of {} runs; commit {commit}; {}; {} s in all.\n\n{}\n",
        profile.name,
        data.entries.len(),
        profile.total_bytes >> 20,
        total >> 20,
        args.repeat,
        machine(),
        started.elapsed().as_secs(),
        table(&rows),
    );
    println!("{section}");
    replace_section(&args.out, profile.name, &section)?;
    eprintln!("written to {}", args.out.display());
    Ok(())
}
