//! The admin API's client side, for `nixcache prefetch`, `tasks`, `pin`, `unpin` and `pins`: the
//! bodies are
//! those of [`crate::admin`], as the server writes them.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin::{
    task_path, ApiError, GcReport, PrefetchReport, Task, TaskKind, TaskState, PREFIX,
};

/// How often a waiting client asks for a task's state.
const POLL: Duration = Duration::from_millis(500);

pub struct Client {
    server: String,
    token: String,
    http: reqwest::Client,
}

/// What a POST got back.
pub enum Posted<T> {
    /// The work is done: its result.
    Done(T),
    /// The work was recorded as a task (202): the task.
    Task(Box<Task>),
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
    pub async fn post<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &impl Serialize,
        prefer_async: bool,
    ) -> anyhow::Result<Posted<T>> {
        let url = format!("{}{PREFIX}/{endpoint}", self.server);
        let mut request = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_string(body)?);
        if prefer_async {
            request = request.header("Prefer", "respond-async");
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        Ok(if response.status() == reqwest::StatusCode::ACCEPTED {
            Posted::Task(Box::new(answer(response).await?))
        } else {
            Posted::Done(answer(response).await?)
        })
    }

    /// `GET /api/v1/<endpoint>`.
    pub async fn get<T: DeserializeOwned>(&self, endpoint: &str) -> anyhow::Result<T> {
        self.get_path(&format!("{PREFIX}/{endpoint}")).await
    }

    /// `GET` of a path of the server.
    async fn get_path<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.server);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        answer(response).await
    }

    /// `DELETE /api/v1/<endpoint>` with `body`.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let url = format!("{}{PREFIX}/{endpoint}", self.server);
        let response = self
            .http
            .delete(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_string(body)?)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        answer(response).await
    }

    pub async fn task(&self, id: &str) -> anyhow::Result<Task> {
        self.get_path(&task_path(id)).await
    }

    /// Polls a task until it has finished; a terminal on stderr sees its progress meanwhile.
    pub async fn wait(&self, id: &str) -> anyhow::Result<Task> {
        let started = Instant::now();
        let show = std::io::stderr().is_terminal();
        let mut shown = false;
        loop {
            let task = self.task(id).await?;
            if task.state.is_finished() {
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

/// The body of a successful answer, or an error saying why not.
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let refusal = serde_json::from_str::<ApiError>(&text).ok();
        match (status.as_u16(), refusal) {
            (401, _) => bail!("the server refused the admin token"),
            (404, None) => bail!("the server has no admin API (start it with --admin-token-file)"),
            (_, Some(refusal)) => bail!("{status}: {}", refusal.error),
            (_, None) => bail!("{status}: {}", text.trim()),
        }
    }
    serde_json::from_str(&text)
        .with_context(|| format!("an answer this client cannot read: {text}"))
}

/// One line on where a task is.
pub fn progress_line(task: &Task) -> String {
    let state = task.state;
    match task.prefetch_counts() {
        Some(p) => format!(
            "{state}: {} of {} paths done, {} fetched, {} not found or failed",
            p.paths_done, p.paths_known, p.fetched, p.not_found_or_failed,
        ),
        None => state.to_string(),
    }
}

/// Prints a task; true when it succeeded and, for a prefetch, every path is now cached.
pub fn print_task(task: &Task) -> bool {
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("task {} ({})", task.id, task.kind);
    println!("  state:    {}", task.state);
    println!("  created:  {}", text(&task.created_at));
    if task.started_at.is_some() {
        println!(
            "  started:  {} on {} (attempt {})",
            text(&task.started_at),
            text(&task.runner),
            task.attempts
        );
    }
    if task.finished_at.is_some() {
        println!("  finished: {}", text(&task.finished_at));
    }
    match task.state {
        TaskState::Succeeded => match task.kind {
            TaskKind::Prefetch => task.prefetch_report().is_none_or(|r| print_prefetch(&r)),
            TaskKind::Gc => {
                if let Some(report) = task.gc_report() {
                    print_gc(&report);
                }
                true
            }
        },
        TaskState::Failed => {
            println!("  error:    {}", text(&task.error));
            false
        }
        TaskState::Pending | TaskState::Running => {
            println!("  progress: {}", progress_line(task));
            true
        }
    }
}

/// Whether a task succeeded and, for a prefetch, got every path.
pub fn task_complete(task: &Task) -> bool {
    task.state != TaskState::Failed
        && (task.kind != TaskKind::Prefetch
            || task.result.is_none()
            || task.prefetch_report().is_none_or(|r| prefetch_complete(&r)))
}

/// Prints a GC report.
pub fn print_gc(report: &GcReport) {
    if !report.ran {
        println!("GC did not run: another GC held the lock");
        return;
    }
    println!(
        "GC evicted {} narinfos and {} NARs ({} bytes, {} of them orphans) and {} unfetched narinfos; {} bytes stored now",
        report.narinfos_evicted,
        report.nars_evicted,
        report.bytes_evicted,
        report.orphans_collected,
        report.unfetched_collected,
        report.size_after
    );
    println!(
        "pins: {} paths pinned, {} narinfos kept for them; {} evicted for --max-age",
        report.pinned_paths, report.pinned_kept, report.aged_out
    );
}

/// Whether a prefetch report has every path cached.
pub fn prefetch_complete(report: &PrefetchReport) -> bool {
    report.not_found.is_empty() && report.failed.is_empty()
}

/// Prints a prefetch report; true when every path is now cached.
pub fn print_prefetch(report: &PrefetchReport) -> bool {
    for p in &report.not_found {
        println!("not found upstream: {p}");
    }
    for f in &report.failed {
        println!("failed: {}: {}", f.path, f.reason);
    }
    println!(
        "{} fetched, {} cached already, {} not found, {} failed",
        report.fetched.len(),
        report.cached.len(),
        report.not_found.len(),
        report.failed.len()
    );
    prefetch_complete(report)
}
