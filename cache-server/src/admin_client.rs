//! The admin API's client side, for `nixcache prefetch` and `nixcache tasks`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// How often a waiting client asks for a task's state.
const POLL: Duration = Duration::from_millis(500);

pub struct Client {
    server: String,
    token: String,
    http: reqwest::Client,
}

/// What a POST got back.
pub enum Posted {
    /// The work is done: its result.
    Done(Value),
    /// The work was recorded as a task (202): the task.
    Task(Value),
}

impl Client {
    pub fn new(server: &str, token: String) -> Self {
        Self {
            server: server.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Posts `body` to `/api/v1/<endpoint>`, asking for a task with `prefer_async`.
    pub async fn post(
        &self,
        endpoint: &str,
        body: Value,
        prefer_async: bool,
    ) -> anyhow::Result<Posted> {
        let url = format!("{}/api/v1/{endpoint}", self.server);
        let mut request = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if prefer_async {
            request = request.header("Prefer", "respond-async");
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let accepted = response.status() == reqwest::StatusCode::ACCEPTED;
        let json = answer(response).await?;
        Ok(if accepted {
            Posted::Task(json)
        } else {
            Posted::Done(json)
        })
    }

    pub async fn task(&self, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/tasks/{id}", self.server);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        answer(response).await
    }

    /// Polls a task until it has finished; a terminal on stderr sees its progress meanwhile.
    pub async fn wait(&self, id: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        let show = std::io::stderr().is_terminal();
        let mut shown = false;
        loop {
            let task = self.task(id).await?;
            if matches!(task["state"].as_str(), Some("succeeded" | "failed")) {
                if shown {
                    eprintln!();
                }
                return Ok(task);
            }
            if show {
                eprint!(
                    "\r\x1b[K{} s: {}",
                    started.elapsed().as_secs(),
                    progress_line(&task)
                );
                let _ = std::io::stderr().flush();
                shown = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The JSON of a successful answer, or an error saying why not.
async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
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
            404 if json["error"].is_null() => {
                bail!("the server has no admin API (start it with --admin-token-file)")
            }
            _ => bail!("{status}: {reason}"),
        }
    }
    Ok(json)
}

/// One line on where a task is.
pub fn progress_line(task: &Value) -> String {
    let state = task["state"].as_str().unwrap_or("?");
    let p = &task["progress"];
    match (task["kind"].as_str(), p["paths_known"].as_u64()) {
        (Some("prefetch"), Some(known)) => format!(
            "{state}: {} of {known} paths done, {} fetched, {} not found or failed",
            p["paths_done"].as_u64().unwrap_or(0),
            p["fetched"].as_u64().unwrap_or(0),
            p["not_found_or_failed"].as_u64().unwrap_or(0),
        ),
        _ => state.to_string(),
    }
}

/// Prints a task; true when it succeeded and, for a prefetch, every path is now cached.
pub fn print_task(task: &Value) -> bool {
    let text = |k: &str| task[k].as_str().unwrap_or("-").to_string();
    println!("task {} ({})", text("id"), text("kind"));
    println!("  state:    {}", text("state"));
    println!("  created:  {}", text("created_at"));
    if !task["started_at"].is_null() {
        println!(
            "  started:  {} on {} (attempt {})",
            text("started_at"),
            text("runner"),
            task["attempts"].as_i64().unwrap_or(0)
        );
    }
    if !task["finished_at"].is_null() {
        println!("  finished: {}", text("finished_at"));
    }
    match task["state"].as_str() {
        Some("succeeded") => match task["kind"].as_str() {
            Some("prefetch") => print_prefetch(&task["result"]),
            Some("gc") => {
                print_gc(&task["result"]);
                true
            }
            _ => true,
        },
        Some("failed") => {
            println!("  error:    {}", text("error"));
            false
        }
        _ => {
            println!("  progress: {}", progress_line(task));
            true
        }
    }
}

/// Prints a GC report.
pub fn print_gc(report: &Value) {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    if report["ran"].as_bool() == Some(false) {
        println!("GC did not run: another GC held the lock");
        return;
    }
    println!(
        "GC evicted {} narinfos and {} NARs ({} bytes, {} of them orphans) and {} unfetched narinfos; {} bytes stored now",
        n("narinfos_evicted"),
        n("nars_evicted"),
        n("bytes_evicted"),
        n("orphans_collected"),
        n("unfetched_collected"),
        n("size_after")
    );
}

/// Whether a prefetch report has every path cached.
pub fn prefetch_complete(report: &Value) -> bool {
    let empty = |k: &str| report[k].as_array().is_none_or(|a| a.is_empty());
    empty("not_found") && empty("failed")
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
    prefetch_complete(report)
}
