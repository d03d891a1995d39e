//! `bench/run scale`: how the costs that depend on the cache's size grow. For each size, a cache of
//! that many paths is generated (signed narinfos and small uncompressed NARs, both stored as local
//! storage lays them out) and loaded into PostgreSQL with `COPY`; then measured: start-up time and
//! RSS of `nixcache serve`, narinfo lookups that miss memory (the database path) and the same ones
//! again from memory, a `/metrics` scrape, `fsck` (and `--deep` on a sample), and a GC pass
//! evicting a tenth of the paths.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nixcache::nix::{base32, Compression, NarFile, NarInfo, SecretKey, Sha256Hash, StorePath};
use nixcache_tests::postgres::Postgres;

use crate::measure::median;
use crate::servers::{free_port, status_kb};
use crate::Args;

/// The store path hash part of generated path `i`.
fn hash_of(i: usize) -> String {
    let digest = Sha256Hash::digest(format!("scale-path-{i}").as_bytes());
    base32::encode(&digest.0[..20])
}

/// What one generated cache holds.
struct Generated {
    /// Every path's hash part, in generation order (oldest access first).
    hashes: Vec<String>,
    /// Total bytes of the stored NARs.
    bytes: u64,
    seconds: f64,
}

/// Quotes a CSV field (PostgreSQL's `COPY … (FORMAT csv)`).
fn csv(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// Writes paths `range` into `store` (NAR and narinfo objects) and their rows into two CSV files.
fn generate_part(
    range: std::ops::Range<usize>,
    store: &Path,
    key: &SecretKey,
    csv_dir: &Path,
    part: usize,
    now: i64,
) -> anyhow::Result<(Vec<String>, u64)> {
    let mut narinfos = std::io::BufWriter::new(std::fs::File::create(
        csv_dir.join(format!("narinfos-{part}.csv")),
    )?);
    let mut nars = std::io::BufWriter::new(std::fs::File::create(
        csv_dir.join(format!("nars-{part}.csv")),
    )?);
    let mut hashes = Vec::with_capacity(range.len());
    let mut bytes = 0u64;
    for i in range {
        let nar = nixcache::nix::nar::regular_file(format!("contents of path {i}\n").as_bytes());
        let nar_hash = Sha256Hash::digest(&nar);
        let file = NarFile {
            hash: nar_hash,
            compression: Compression::None,
        };
        let hash = hash_of(i);
        let store_path = StorePath::parse(&format!("/nix/store/{hash}-scale-{i}"))?;
        // A couple of earlier paths as references, as a closure has.
        let mut references: Vec<String> = [i / 2, i.saturating_sub(1)]
            .into_iter()
            .filter(|&j| j < i)
            .map(|j| format!("{}-scale-{j}", hash_of(j)))
            .collect();
        references.sort();
        references.dedup();
        let mut info = NarInfo {
            store_path: store_path.clone(),
            url: file.url(),
            compression: Some(Compression::None),
            file_hash: Some(nar_hash),
            file_size: Some(nar.len() as u64),
            nar_hash,
            nar_size: nar.len() as u64,
            references,
            deriver: None,
            sigs: Vec::new(),
            ca: None,
            extra: Vec::new(),
        };
        info.sign(key);
        let text = info.to_text();
        std::fs::write(store.join("nar").join(file.file_name()), &nar)?;
        std::fs::write(store.join("narinfo").join(format!("{hash}.narinfo")), &text)?;
        // Distinct access times: the LRU order is the generation order.
        let accessed = now - 10_000_000 + i as i64;
        writeln!(
            narinfos,
            "{hash},{},{},{},{},{},{},{accessed},{accessed}",
            csv(&store_path.to_string()),
            file.file_name(),
            csv(&format!("http://127.0.0.1:9/{}", file.url())),
            csv(&text),
            nar.len(),
            nar.len(),
        )?;
        writeln!(
            nars,
            "{},{},{accessed},{accessed}",
            file.file_name(),
            nar.len()
        )?;
        hashes.push(hash);
        bytes += nar.len() as u64;
    }
    narinfos.flush()?;
    nars.flush()?;
    Ok((hashes, bytes))
}

/// Generates `n` paths under `dir` (storage in `dir/store`) and loads them into `pg`.
fn generate(n: usize, dir: &Path, key: &SecretKey, pg: &Postgres) -> anyhow::Result<Generated> {
    let started = Instant::now();
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("nar"))?;
    std::fs::create_dir_all(store.join("narinfo"))?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let per = n.div_ceil(threads);
    let parts: Vec<anyhow::Result<(Vec<String>, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * per).min(n)..((t + 1) * per).min(n);
                let store = &store;
                s.spawn(move || generate_part(range, store, key, dir, t, now))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("generator panicked")))
            .collect()
    });
    let mut hashes = Vec::with_capacity(n);
    let mut bytes = 0;
    for part in parts {
        let (h, b) = part?;
        hashes.extend(h);
        bytes += b;
    }
    pg.query("TRUNCATE narinfos, nars, tasks");
    for t in 0..threads {
        for table in ["narinfos", "nars"] {
            let file = dir.join(format!("{table}-{t}.csv"));
            pg.query(&format!(
                "\\copy {table} FROM '{}' WITH (FORMAT csv)",
                file.display()
            ));
            std::fs::remove_file(file)?;
        }
    }
    pg.query("VACUUM ANALYZE narinfos");
    pg.query("VACUUM ANALYZE nars");
    Ok(Generated {
        hashes,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Resident memory of a process: (VmRSS, RssAnon) in MiB. RssAnon is its own memory, without the
/// file pages it maps.
fn rss(pid: u32) -> (f64, f64) {
    let mib = |field| status_kb(pid, field).map_or(f64::NAN, |kb| kb as f64 / 1024.0);
    (mib("VmRSS:"), mib("RssAnon:"))
}

/// One value of a counter in a Prometheus text exposition (0 when absent).
fn counter(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs a `nixcache` subcommand against the generated cache; its stdout, and how long it took.
fn nixcache_cli(
    bin: &Path,
    args: &[&str],
    common: &[String],
    expect_success: bool,
) -> anyhow::Result<(String, f64)> {
    let started = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .args(common)
        .env("NIXCACHE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running nixcache {args:?}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() != expect_success {
        bail!(
            "nixcache {args:?} exited with {}:\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((stdout, seconds))
}

async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Asks for each narinfo once, in order, on one keep-alive connection: each request's time in
/// microseconds. Every answer must be the path's narinfo.
async fn lookups(
    client: &reqwest::Client,
    base: &str,
    hashes: &[&String],
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(hashes.len());
    for hash in hashes {
        let t = Instant::now();
        let r = client.get(format!("{base}/{hash}.narinfo")).send().await?;
        ensure!(r.status() == 200, "{hash}.narinfo → {}", r.status());
        let body = r.text().await?;
        ensure!(body.contains(hash.as_str()), "{hash}.narinfo: {body}");
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times)
}

/// The figures of one size.
#[derive(Default)]
struct Figures {
    generate_s: f64,
    startup_ms: f64,
    rss_start: (f64, f64),
    rss_after: (f64, f64),
    db_lookup_us: (f64, f64),
    memory_lookup_us: f64,
    metrics_ms: f64,
    fsck_s: f64,
    fsck_deep_s: f64,
    gc_s: f64,
    gc_evicted: u64,
    /// The pass's own account of where its time went.
    gc_phases: String,
}

async fn measure_size(
    n: usize,
    args: &Args,
    pg: &Postgres,
    work: &Path,
    bin: &Path,
    key: &SecretKey,
    key_file: &Path,
) -> anyhow::Result<Figures> {
    let dir = work.join(format!("scale-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!("scale {n}: generating and loading");
    let generated = {
        let (dir, key) = (dir.clone(), key.clone());
        let pg_ref: &Postgres = pg;
        // The generator is CPU and file work; the runtime has nothing else to do meanwhile.
        tokio::task::block_in_place(move || generate(n, &dir, &key, pg_ref))?
    };
    let mut f = Figures {
        generate_s: generated.seconds,
        ..Default::default()
    };
    let rows: usize = pg.query("SELECT count(*) FROM narinfos").trim().parse()?;
    ensure!(rows == n, "{rows} narinfo rows loaded, expected {n}");
    let common: Vec<String> = [
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--database-url".into(),
        pg.url(),
        "--signing-key-file".into(),
        key_file.display().to_string(),
        "--upstream".into(),
        "http://127.0.0.1:9".into(),
        "--upstream-key".into(),
        key.public_key().to_string(),
    ]
    .into();

    // The generator leaves gigabytes of dirty pages: written back before anything is timed.
    settle_disk()?;
    // Start-up: from exec to the first answer of /readyz; the median of three starts, the last
    // of which is measured on.
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .http1_only()
        .build()?;
    let mut startups = Vec::new();
    let mut child = loop {
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let (mut child, ms) = start_serve(bin, port, &common, log, &client, &base).await?;
        startups.push(ms);
        if startups.len() == 3 {
            break child;
        }
        let _ = child.kill();
        let _ = child.wait();
    };
    f.startup_ms = median(startups);
    // The first gauge reconciliation and backend check have run by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.rss_start = rss(child.id());

    let result = async {
        // Lookups of paths spread over the whole cache, each once: none is in memory yet.
        let step = (n / args.lookups.max(1)).max(1);
        let sample: Vec<&String> = generated.hashes.iter().step_by(step).collect();
        let from_db = r#"nixcache_narinfo_lookups_total{result="database"} "#;
        let before = counter(&scrape(&client, &base).await?, from_db);
        let mut db_times = lookups(&client, &base, &sample).await?;
        let after = counter(&scrape(&client, &base).await?, from_db);
        ensure!(
            (after - before) as usize == sample.len(),
            "{} of {} lookups were answered from the database: not a measurement of its path",
            after - before,
            sample.len()
        );
        let memory_times = lookups(&client, &base, &sample).await?;
        db_times.sort_by(f64::total_cmp);
        let p99 = db_times[(db_times.len() * 99 / 100).min(db_times.len() - 1)];
        f.db_lookup_us = (median(db_times), p99);
        f.memory_lookup_us = median(memory_times);
        let mut scrapes = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            scrape(&client, &base).await?;
            scrapes.push(t.elapsed().as_secs_f64() * 1e3);
        }
        f.metrics_ms = median(scrapes);
        f.rss_after = rss(child.id());
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result?;

    eprintln!("scale {n}: fsck");
    let (out, s) = nixcache_cli(bin, &["fsck"], &common, true)?;
    ensure!(out.contains("0 problem(s)"), "fsck of a sound cache: {out}");
    f.fsck_s = s;
    let sample = args.deep_sample.to_string();
    let (out, s) = nixcache_cli(bin, &["fsck", "--deep", "--sample", &sample], &common, true)?;
    ensure!(
        out.contains("0 problem(s)"),
        "fsck --deep of a sound cache: {out}"
    );
    f.fsck_deep_s = s;

    eprintln!("scale {n}: GC down to 90 %");
    settle_disk()?;
    let max = (generated.bytes / 10 * 9).to_string();
    let (out, s) = nixcache_cli(
        bin,
        &["gc", "--max-size", &max, "--gc-grace", "1s"],
        &common,
        true,
    )?;
    f.gc_s = s;
    f.gc_phases = out
        .lines()
        .find_map(|l| l.strip_prefix("phases: "))
        .with_context(|| format!("no phases in the GC report: {out}"))?
        .to_string();
    eprintln!("scale {n}: GC took {s:.2} s: {}", f.gc_phases);
    let left: u64 = pg.query("SELECT count(*) FROM narinfos").trim().parse()?;
    f.gc_evicted = n as u64 - left;
    let tenth = n as u64 / 10;
    ensure!(
        f.gc_evicted.abs_diff(tenth) <= tenth / 100 + 2,
        "GC evicted {} of {n} paths, expected about {tenth}: {out}",
        f.gc_evicted
    );
    let stored = std::fs::read_dir(dir.join("store/nar"))?.count() as u64;
    ensure!(
        stored == left,
        "{stored} NAR files left for {left} narinfos after GC"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(f)
}

/// Writes back every dirty page (`sync`), so that a timed step does not pay for the last one's
/// writes.
fn settle_disk() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    ensure!(status.success(), "sync exited with {status}");
    Ok(())
}

/// Starts `nixcache serve` on `port`; the child and the milliseconds from exec to the first
/// successful `/readyz`.
async fn start_serve(
    bin: &Path,
    port: u16,
    common: &[String],
    log: std::fs::File,
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<(std::process::Child, f64)> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(common)
        .env("NIXCACHE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok((child, started.elapsed().as_secs_f64() * 1e3));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("nixcache serve exited with {status}");
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("not ready after 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n.is_multiple_of(1000) => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

/// Runs the scale profile; the markdown table.
pub async fn run(args: &Args, work: &Path, bin: &Path) -> anyhow::Result<String> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    ensure!(!sizes.is_empty(), "no sizes given");
    let pg = tokio::task::spawn_blocking(Postgres::start).await?;
    let size = &args.pg_shared_buffers;
    ensure!(
        !size.is_empty() && size.chars().all(|c| c.is_ascii_alphanumeric()),
        "--pg-shared-buffers {size:?}: a size such as 1GB"
    );
    pg.query(&format!("ALTER SYSTEM SET shared_buffers = '{size}'"));
    pg.stop();
    pg.resume();
    eprintln!(
        "scale: PostgreSQL shared_buffers {}",
        pg.query("SHOW shared_buffers").trim()
    );
    let key = SecretKey::generate("bench-scale-1")?;
    let key_file: PathBuf = work.join("signing-key.sec");
    std::fs::write(&key_file, key.to_file_contents())?;
    let (_, _) = nixcache_cli(bin, &["migrate", "--database-url", &pg.url()], &[], true)?;
    let mut all = Vec::new();
    for &n in &sizes {
        all.push(measure_size(n, args, &pg, work, bin, &key, &key_file).await?);
    }

    let head: Vec<String> = sizes.iter().map(|&n| label(n)).collect();
    let mut s = format!(
        "| measurement | {} | growth per 10× paths | cost that stays flat |\n|---|{}---:|---|\n",
        head.join(" | "),
        "---:|".repeat(sizes.len())
    );
    // Growth over the whole range, as a factor per tenfold increase in paths.
    let growth = |v: &dyn Fn(&Figures) -> f64| {
        let (first, last) = (v(&all[0]), v(&all[all.len() - 1]));
        let decades = (sizes[sizes.len() - 1] as f64 / sizes[0] as f64).log10();
        if decades <= 0.0 || first <= 0.0 {
            return "–".to_string();
        }
        format!("{:.2}×", (last / first).powf(1.0 / decades))
    };
    type Get = Box<dyn Fn(&Figures) -> f64>;
    let rows: Vec<(&str, Get, usize, &str)> = vec![
        (
            "generate and load (s)",
            Box::new(|f| f.generate_s),
            1,
            "10× (linear)",
        ),
        (
            "start-up to ready, median of 3 (ms)",
            Box::new(|f| f.startup_ms),
            0,
            "1×",
        ),
        (
            "RSS after start-up (MiB)",
            Box::new(|f| f.rss_start.0),
            1,
            "1×",
        ),
        (
            "narinfo lookup, memory miss (database), median (µs)",
            Box::new(|f| f.db_lookup_us.0),
            0,
            "1× (an index lookup)",
        ),
        (
            "narinfo lookup, memory miss (database), p99 (µs)",
            Box::new(|f| f.db_lookup_us.1),
            0,
            "1×",
        ),
        (
            "narinfo lookup, memory hit, median (µs)",
            Box::new(|f| f.memory_lookup_us),
            0,
            "1×",
        ),
        (
            "RSS after the lookups (MiB; RssAnon in brackets)",
            Box::new(|f| f.rss_after.0),
            1,
            "1×",
        ),
        (
            "`/metrics` scrape, median (ms)",
            Box::new(|f| f.metrics_ms),
            2,
            "1×",
        ),
        ("`fsck` (s)", Box::new(|f| f.fsck_s), 2, "10× (linear)"),
        (
            "`fsck --deep --sample N` (s)",
            Box::new(|f| f.fsck_deep_s),
            2,
            "10× (linear listing) + a fixed N reads",
        ),
        (
            "GC pass evicting 10 % (s; its 1 s grace wait included)",
            Box::new(|f| f.gc_s),
            2,
            "10× (linear)",
        ),
    ];
    for (name, get, decimals, flat) in &rows {
        let cells: Vec<String> = all
            .iter()
            .map(|f| {
                let v = get(f);
                if name.starts_with("RSS after the lookups") {
                    format!("{v:.1} ({:.1})", f.rss_after.1)
                } else {
                    format!("{v:.decimals$}")
                }
            })
            .collect();
        s.push_str(&format!(
            "| {name} | {} | {} | {flat} |\n",
            cells.join(" | "),
            growth(get.as_ref())
        ));
    }
    let evicted: Vec<String> = all.iter().map(|f| f.gc_evicted.to_string()).collect();
    s.push_str(&format!(
        "| paths GC evicted | {} | | |\n",
        evicted.join(" | ")
    ));
    s.push_str("\nWhere each GC pass spent its time, as it reports it:\n\n");
    for (&n, f) in sizes.iter().zip(&all) {
        s.push_str(&format!("- {}: {}\n", label(n), f.gc_phases));
    }
    Ok(format!(
        "Narinfo lookups: {} paths spread over the cache, each asked once (memory misses, checked in `/metrics`), then again (memory hits). `fsck --deep` reads a sample of {} NARs.\n\n{s}",
        args.lookups, args.deep_sample
    ))
}
