//! Redlock over one or more independent Redis masters: a lock is held when a majority of them
//! (N/2 + 1) accepted `SET key token NX PX ttl` within the TTL less a clock-drift allowance.
//! Release and extension are compare-and-delete / compare-and-extend Lua scripts keyed by the
//! random token, so a holder can never release or prolong a lock that has passed to someone else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bb8_redis::bb8::Pool;
use bb8_redis::redis;
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;

use super::{drift, Guard, Held, Lock, LockError};

const RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
const EXTEND: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;
/// First retry pause; doubled up to `MAX_BACKOFF`, with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

struct Master {
    pool: Pool<RedisConnectionManager>,
}

/// What one master answered to an attempt.
enum Vote {
    Granted,
    Refused,
    Unreachable,
}

pub struct RedisLock {
    masters: Arc<Vec<Master>>,
    /// Bound on each command to one master, so a hung master costs little.
    op_timeout: Duration,
    /// `nixcache:<namespace>:lock:`, before every lock name: caches sharing a Redis do not
    /// contend for each other's locks.
    prefix: String,
}

impl RedisLock {
    /// Pools for each master URL. Connections are made on demand: a master that is down at start
    /// only counts as a missing vote.
    pub fn new(urls: &[String], op_timeout: Duration, namespace: &str) -> Result<Self, LockError> {
        if urls.is_empty() {
            return Err(LockError::Unavailable("no Redis masters configured".into()));
        }
        let masters = urls
            .iter()
            .map(|u| {
                let manager = RedisConnectionManager::new(u.as_str())
                    .map_err(|e| LockError::Unavailable(redact(&e.to_string(), u)))?;
                let pool = Pool::builder()
                    .max_size(16)
                    .min_idle(Some(0))
                    .connection_timeout(op_timeout)
                    .build_unchecked(manager);
                Ok(Master { pool })
            })
            .collect::<Result<Vec<_>, LockError>>()?;
        Ok(Self {
            masters: Arc::new(masters),
            op_timeout,
            prefix: format!("nixcache:{namespace}:lock:"),
        })
    }

    fn quorum(&self) -> usize {
        self.masters.len() / 2 + 1
    }

    /// Runs one command on one master within the operation timeout; `None` when the master
    /// could not be reached or answered with an error.
    async fn on_master<T: redis::FromRedisValue>(
        master: &Master,
        op_timeout: Duration,
        cmd: redis::Cmd,
    ) -> Option<T> {
        let run = async {
            // A multiplexed connection is a cheap handle: clone it out of the pool's guard.
            let mut conn: MultiplexedConnection = (*master.pool.get().await.ok()?).clone();
            cmd.query_async::<T>(&mut conn).await.ok()
        };
        tokio::time::timeout(op_timeout, run).await.ok().flatten()
    }

    async fn try_set(&self, key: &str, token: &str, ttl: Duration) -> Vec<Vote> {
        let ms = ttl.as_millis().max(1) as u64;
        let attempts = self.masters.iter().map(|m| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(token).arg("NX").arg("PX").arg(ms);
            let r = Self::on_master::<Option<String>>(m, self.op_timeout, cmd).await;
            match r {
                Some(Some(_)) => Vote::Granted,
                Some(None) => Vote::Refused,
                None => Vote::Unreachable,
            }
        });
        futures_util::future::join_all(attempts).await
    }

    /// Runs a token-checked script on every master; the number that applied it.
    async fn script_all(
        masters: &[Master],
        op_timeout: Duration,
        script: &str,
        key: &str,
        token: &str,
        arg: Option<u64>,
    ) -> usize {
        let runs = masters.iter().map(|m| {
            // EVAL each time: the scripts are tiny, and EVALSHA would need a fallback on restart.
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script).arg(1).arg(key).arg(token);
            if let Some(a) = arg {
                cmd.arg(a);
            }
            Self::on_master::<i64>(m, op_timeout, cmd)
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .filter(|r| *r == Some(1))
            .count()
    }
}

fn redact(text: &str, url: &str) -> String {
    match reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(pw) if !pw.is_empty() => text.replace(&pw, "REDACTED"),
        _ => text.to_string(),
    }
}

fn new_token() -> String {
    let mut t = [0u8; 20];
    // A token only has to be unique among contenders; the clock is a fallback of last resort.
    if getrandom::fill(&mut t).is_err() {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        t[..16].copy_from_slice(&n.to_le_bytes());
    }
    t.iter().map(|b| format!("{b:02x}")).collect()
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    d.mul_f64(0.5 + frac)
}

struct RedisGuard {
    masters: Arc<Vec<Master>>,
    op_timeout: Duration,
    /// The lock's name (for errors) and its key in Redis.
    name: String,
    key: String,
    token: String,
    quorum: usize,
}

#[async_trait]
impl Held for RedisGuard {
    async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        let start = Instant::now();
        let ms = ttl.as_millis().max(1) as u64;
        let n = RedisLock::script_all(
            &self.masters,
            self.op_timeout,
            EXTEND,
            &self.key,
            &self.token,
            Some(ms),
        )
        .await;
        if n >= self.quorum && start.elapsed() + drift(ttl) < ttl {
            Ok(())
        } else {
            Err(LockError::Lost(self.name.clone()))
        }
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let (masters, op_timeout, key, token) = (
            self.masters.clone(),
            self.op_timeout,
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        // Released in the background; if that fails, the TTL releases it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                RedisLock::script_all(&masters, op_timeout, RELEASE, &key, &token, None).await;
            });
        }
    }
}

#[async_trait]
impl Lock for RedisLock {
    async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Guard>, LockError> {
        let key = format!("{}{name}", self.prefix);
        let deadline = Instant::now() + wait;
        let mut backoff = MIN_BACKOFF;
        loop {
            let token = new_token();
            let start = Instant::now();
            let votes = self.try_set(&key, &token, ttl).await;
            let granted = votes.iter().filter(|v| matches!(v, Vote::Granted)).count();
            let unreachable = votes
                .iter()
                .filter(|v| matches!(v, Vote::Unreachable))
                .count();
            let elapsed = start.elapsed();
            if granted >= self.quorum() && elapsed + drift(ttl) < ttl {
                return Ok(Some(Box::new(RedisGuard {
                    masters: self.masters.clone(),
                    op_timeout: self.op_timeout,
                    name: name.to_string(),
                    key,
                    token,
                    quorum: self.quorum(),
                })));
            }
            // Undo partial grants before anyone else can be blocked by them.
            if granted > 0 {
                Self::script_all(&self.masters, self.op_timeout, RELEASE, &key, &token, None).await;
            }
            if self.masters.len() - unreachable < self.quorum() {
                return Err(LockError::Unavailable(format!(
                    "{unreachable} of {} Redis masters unreachable; a lock needs {}",
                    self.masters.len(),
                    self.quorum()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(jitter(backoff).min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
