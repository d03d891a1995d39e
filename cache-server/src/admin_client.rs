//! The admin API's client side, for `nixcache prefetch` and `nixcache gc --server`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Posts `body` to `<server>/api/v1/<endpoint>` with the admin token and returns the JSON answer.
/// While it waits, a terminal on stderr sees how long it has been waiting.
pub async fn post(server: &str, endpoint: &str, token: &str, body: Value) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1/{endpoint}", server.trim_end_matches('/'));
    let request = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send();
    let started = Instant::now();
    let show = std::io::stderr().is_terminal();
    let mut request = std::pin::pin!(request);
    let response = loop {
        tokio::select! {
            r = &mut request => break r.with_context(|| format!("POST {url}"))?,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if show {
                    eprint!("\r{endpoint}: waiting for the server, {} s", started.elapsed().as_secs());
                    let _ = std::io::stderr().flush();
                }
            }
        }
    };
    if show && started.elapsed() >= Duration::from_secs(1) {
        eprintln!();
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let reason = json["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| text.trim().to_string());
        match status.as_u16() {
            401 => bail!("the server refused the admin token"),
            404 => bail!("the server has no admin API (start it with --admin-token-file)"),
            _ => bail!("{status}: {reason}"),
        }
    }
    Ok(json)
}

/// Prints a prefetch report; true when every path is now cached.
pub fn print_prefetch(report: &Value) -> bool {
    let list = |k: &str| report[k].as_array().cloned().unwrap_or_default();
    let (cached, fetched, missing, failed) = (
        list("cached"),
        list("fetched"),
        list("not_found"),
        list("failed"),
    );
    for p in &missing {
        println!("not found upstream: {}", p.as_str().unwrap_or_default());
    }
    for f in &failed {
        println!(
            "failed: {}: {}",
            f["path"].as_str().unwrap_or_default(),
            f["reason"].as_str().unwrap_or_default()
        );
    }
    println!(
        "{} fetched, {} cached already, {} not found, {} failed",
        fetched.len(),
        cached.len(),
        missing.len(),
        failed.len()
    );
    missing.is_empty() && failed.is_empty()
}
