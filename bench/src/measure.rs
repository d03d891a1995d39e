//! The measurements, each run the same way against every server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;

use crate::dataset::Entry;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn client(max_idle: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle)
        .http1_only()
        .build()?)
}

/// Every narinfo GET in sequence on one keep-alive connection, over and over for `seconds`:
/// median latency in microseconds.
pub async fn narinfo_latency(base: &str, entries: &[Entry], seconds: f64) -> anyhow::Result<f64> {
    let client = client(1)?;
    let mut times = Vec::new();
    let begin = Instant::now();
    for e in entries.iter().cycle() {
        if begin.elapsed().as_secs_f64() > seconds && times.len() >= entries.len() {
            break;
        }
        let start = Instant::now();
        let r = client
            .get(format!("{base}/{}.narinfo", e.hash))
            .send()
            .await?;
        if r.status() != 200 {
            bail!("{base}: narinfo {} → {}", e.hash, r.status());
        }
        r.bytes().await?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(times))
}

/// Runs wrk with `connections` connections for `seconds`, cycling over `paths`: (requests per
/// second, bytes per second). Any non-2xx answer or socket error fails the run.
pub async fn wrk(
    base: &str,
    paths: &[String],
    connections: usize,
    seconds: f64,
    work: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let quoted: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    let script = work.join(format!("wrk-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n",
            quoted.join(",")
        ),
    )?;
    let threads = connections.clamp(1, 2);
    let out = tokio::process::Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{}s", seconds.ceil() as u64),
            "-s".into(),
        ])
        .arg(&script)
        .arg(format!("{base}/"))
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!(
            "wrk against {base} failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let transfer = field("Transfer/sec:")
        .with_context(|| format!("no Transfer/sec in wrk output:\n{text}"))?;
    // wrk prints binary units: 1.51GB, 281.16MB, 12.00KB, 100.00B.
    let (number, unit) = transfer.split_at(
        transfer
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(transfer.len()),
    );
    let scale = match unit {
        "GB" => 1u64 << 30,
        "MB" => 1 << 20,
        "KB" => 1 << 10,
        _ => 1,
    };
    let bytes = number
        .parse::<f64>()
        .with_context(|| format!("bad Transfer/sec {transfer:?}"))?
        * scale as f64;
    Ok((rps, bytes))
}

/// narinfo requests per second with 64 connections (wrk, cycling over every narinfo).
pub async fn narinfo_throughput(
    base: &str,
    entries: &[Entry],
    work: &std::path::Path,
    seconds: u32,
) -> anyhow::Result<f64> {
    let paths: Vec<String> = entries
        .iter()
        .map(|e| format!("/{}.narinfo", e.hash))
        .collect();
    Ok(wrk(base, &paths, 64, seconds as f64, work).await?.0)
}

/// NAR throughput with `workers` connections (wrk, cycling over every NAR for `seconds`): MiB/s.
/// A client written in C, so that the client's own CPU use (the cores are shared) disturbs the
/// comparison as little as possible. Bodies were checked when nixcache was warmed.
pub async fn nar_throughput(
    base: &str,
    entries: &[Entry],
    workers: usize,
    seconds: f64,
    work: &std::path::Path,
) -> anyhow::Result<f64> {
    let paths: Vec<String> = entries.iter().map(|e| format!("/{}", e.nar_url)).collect();
    Ok(wrk(base, &paths, workers, seconds, work).await?.1 / (1 << 20) as f64)
}

/// `clients` concurrent clients (spread over `bases`, one server or several replicas) each
/// fetching every entry (narinfo, then NAR): total seconds and the median time to the first byte
/// of a NAR, in milliseconds.
pub async fn miss_path(
    bases: &[String],
    entries: &[Entry],
    clients: usize,
) -> anyhow::Result<(f64, f64)> {
    let entries: Arc<Vec<Entry>> = Arc::new(entries.to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (entries, base) = (entries.clone(), bases[c % bases.len().max(1)].clone());
        tasks.push(tokio::spawn(async move {
            let client = client(1)?;
            let mut ttfb = Vec::new();
            // Each client walks the paths from a different starting point, as a fleet would.
            for k in 0..entries.len() {
                let e = &entries[(k + c * 7) % entries.len()];
                let r = client
                    .get(format!("{base}/{}.narinfo", e.hash))
                    .send()
                    .await?;
                if r.status() != 200 {
                    bail!("{base}: narinfo {} → {}", e.hash, r.status());
                }
                r.bytes().await?;
                let t = Instant::now();
                let r = client.get(format!("{base}/{}", e.nar_url)).send().await?;
                if r.status() != 200 {
                    bail!("{base}/{} → {}", e.nar_url, r.status());
                }
                let mut body = r.bytes_stream();
                let mut n = 0u64;
                let mut first = None;
                while let Some(chunk) = body.next().await {
                    n += chunk?.len() as u64;
                    first.get_or_insert_with(|| t.elapsed());
                }
                if n != e.file_size {
                    bail!("{base}/{}: {n} bytes, expected {}", e.nar_url, e.file_size);
                }
                ttfb.push(first.unwrap_or(Duration::ZERO).as_secs_f64() * 1e3);
            }
            Ok::<Vec<f64>, anyhow::Error>(ttfb)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((start.elapsed().as_secs_f64(), median(all)))
}
