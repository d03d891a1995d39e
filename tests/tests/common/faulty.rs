//! An upstream that misbehaves on purpose: a minimal HTTP/1.1 file server over a binary cache
//! directory whose answers can corrupt, cut, slow, strip signatures or hang.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// NAR bodies have one byte flipped in the middle.
    CorruptNar,
    /// NAR responses announce the full Content-Length, send half, and close.
    TruncateNar,
    /// narinfos are served without their `Sig:` lines.
    Unsigned,
    /// narinfos come from the cache signed by the untrusted key.
    UntrustedSig,
    /// Requests are read and never answered.
    Hang,
    /// Every connection is closed as soon as its request has arrived, unanswered: to a client,
    /// the server is down.
    Down,
    /// narinfos (and 404s for them) are answered after this pause.
    SlowNarinfo(Duration),
    /// NARs are sent in 64 KiB pieces with this pause between them.
    SlowNar(Duration),
    /// Both: a byte flipped in the middle, sent slowly.
    SlowCorruptNar(Duration),
    /// NAR requests are answered `302 Found` to `<this URL>/r<path>`. (Every server here
    /// serves `/r/<path>` as `/<path>`, so a redirect to one of them is followed by the file.)
    Redirect(String),
}

struct State {
    cache: PathBuf,
    untrusted: PathBuf,
    mode: Mutex<Mode>,
    hits: Mutex<HashMap<String, usize>>,
    first_hit: Mutex<HashMap<String, std::time::Instant>>,
    /// The `Authorization` value every request must carry (else 401), when set.
    required_auth: Mutex<Option<String>>,
    /// Every `Authorization` value received.
    authorizations: Mutex<Vec<String>>,
}

pub struct FaultyUpstream {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyUpstream {
    pub async fn start(cache: PathBuf, untrusted: PathBuf, mode: Mode) -> Self {
        Self::start_on("127.0.0.1".parse().expect("ip"), cache, untrusted, mode).await
    }

    /// Listens on `ip` (any free port) instead of loopback.
    pub async fn start_on(
        ip: std::net::IpAddr,
        cache: PathBuf,
        untrusted: PathBuf,
        mode: Mode,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State {
            cache,
            untrusted,
            mode: Mutex::new(mode),
            hits: Mutex::new(HashMap::new()),
            first_hit: Mutex::new(HashMap::new()),
            required_auth: Mutex::new(None),
            authorizations: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { url, state, task }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode") = mode;
    }

    /// How many times `path` (e.g. `/nar/x.nar.xz`) was requested.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests without this `Authorization` value are answered 401 (none: no credentials needed).
    pub fn require_auth(&self, value: Option<&str>) {
        *self.state.required_auth.lock().expect("auth") = value.map(str::to_string);
    }

    /// The `Authorization` values received, in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.authorizations.lock().expect("auth").clone()
    }

    /// When the first request for `path` arrived.
    pub fn first_hit(&self, path: &str) -> Option<std::time::Instant> {
        self.state
            .first_hit
            .lock()
            .expect("hits")
            .get(path)
            .copied()
    }

    /// How many requests arrived, for any path.
    pub fn total_hits(&self) -> usize {
        self.state.hits.lock().expect("hits").values().sum()
    }
}

async fn serve(mut conn: TcpStream, state: Arc<State>) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        *state
            .hits
            .lock()
            .expect("hits")
            .entry(path.clone())
            .or_default() += 1;
        state
            .first_hit
            .lock()
            .expect("hits")
            .entry(path.clone())
            .or_insert_with(std::time::Instant::now);
        let auth = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        });
        if let Some(a) = &auth {
            state.authorizations.lock().expect("auth").push(a.clone());
        }
        let required = state.required_auth.lock().expect("auth").clone();
        if required.is_some() && auth != required {
            let refusal = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n";
            if conn.write_all(refusal.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let mode = state.mode.lock().expect("mode").clone();
        match mode {
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(600)).await;
                return;
            }
            Mode::Down => return,
            Mode::SlowNarinfo(pause) if path.ends_with(".narinfo") => {
                tokio::time::sleep(pause).await
            }
            _ => {}
        }
        let rel = path.trim_start_matches('/');
        let (redirected, rel) = match rel.strip_prefix("r/") {
            Some(rest) => (true, rest),
            None => (false, rel),
        };
        if let Mode::Redirect(target) = &mode {
            if rel.starts_with("nar/") && !redirected {
                let head = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {target}/r/{rel}\r\nContent-Length: 0\r\n\r\n"
                );
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let is_narinfo = rel.ends_with(".narinfo");
        let dir = if is_narinfo && mode == Mode::UntrustedSig {
            &state.untrusted
        } else {
            &state.cache
        };
        let Ok(mut body) = std::fs::read(dir.join(rel)) else {
            let _ = conn
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
            continue;
        };
        if is_narinfo && mode == Mode::Unsigned {
            let text = String::from_utf8_lossy(&body).into_owned();
            body = text
                .lines()
                .filter(|l| !l.starts_with("Sig:"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .into_bytes();
        }
        let is_nar = rel.starts_with("nar/");
        if is_nar && matches!(mode, Mode::CorruptNar | Mode::SlowCorruptNar(_)) {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n", body.len());
        if conn.write_all(header.as_bytes()).await.is_err() {
            return;
        }
        match mode {
            Mode::TruncateNar if is_nar => {
                let _ = conn.write_all(&body[..body.len() / 2]).await;
                let _ = conn.shutdown().await;
                return;
            }
            Mode::SlowNar(pause) | Mode::SlowCorruptNar(pause) if is_nar => {
                for chunk in body.chunks(64 * 1024) {
                    if conn.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
            _ => {
                if conn.write_all(&body).await.is_err() {
                    return;
                }
            }
        }
    }
}
