//! Write-behind to a remote (`serve --remote s3://BUCKET/PREFIX`): committed versions (their
//! packs, manifests and events: what `ml-dash push` sends) go up in the background, batched.
//! A thread waits for commits, lets them gather for the push interval, then pushes everything
//! the remote lacks; a failed push is retried with a growing delay (up to a minute). The lag
//! (how long the oldest commit not yet on the remote has waited) is in `GET /health`; at
//! shutdown the thread pushes once more before the process exits.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::{App, ServeError};

#[derive(Default)]
struct State {
    /// When the oldest commit not yet pushed happened.
    dirty_since: Option<Instant>,
    /// Commits so far (a push covers those before it started).
    commits: u64,
    pushing: bool,
    /// The first commit made while a push ran (the next push carries it).
    during_push: Option<Instant>,
    stopping: bool,
    pushes: u64,
    last_ok: Option<SystemTime>,
    last_error: Option<String>,
    last_report: Option<Value>,
}

struct Inner {
    url: String,
    interval: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// The background pusher.
pub struct WriteBehind {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
    remote: Mutex<Option<ml_dash::Remote>>,
}

impl WriteBehind {
    /// Connect to the remote (credentials and endpoint from the environment, as `push`); the
    /// pushing thread starts with `run`.
    pub fn start(
        _store: &ml_dash::Store,
        url: &str,
        interval: Duration,
    ) -> Result<WriteBehind, ServeError> {
        let remote = ml_dash::Remote::open(&ml_dash::RemoteConfig::new(url))?;
        Ok(WriteBehind {
            inner: Arc::new(Inner {
                url: url.to_string(),
                interval,
                state: Mutex::new(State {
                    // Whatever the store holds that the remote lacks goes up first.
                    dirty_since: Some(Instant::now()),
                    ..State::default()
                }),
                cv: Condvar::new(),
            }),
            thread: Mutex::new(None),
            remote: Mutex::new(Some(remote)),
        })
    }

    /// Start the pushing thread (it holds the app weakly: the app owns it).
    pub fn run(&self, app: Weak<App>) {
        let inner = self.inner.clone();
        let Some(remote) = self.remote.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let h = std::thread::Builder::new()
            .name("ml-dash-push".into())
            .spawn(move || pusher(&inner, &remote, &app))
            .expect("spawn the push thread");
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
    }

    /// A version (or a delete or update) was committed.
    pub fn committed(&self) {
        let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        s.commits += 1;
        let now = Instant::now();
        s.dirty_since.get_or_insert(now);
        if s.pushing {
            s.during_push.get_or_insert(now);
        }
        self.inner.cv.notify_all();
    }

    /// What `/health` shows.
    pub fn status(&self) -> Value {
        let s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let lag = s.dirty_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        json!({
            "remote": self.inner.url,
            "lagSeconds": lag,
            "pending": s.dirty_since.is_some(),
            "pushing": s.pushing,
            "pushes": s.pushes,
            "lastPushUnix": s.last_ok.map(unix),
            "lastError": s.last_error,
            "lastReport": s.last_report,
        })
    }

    /// Push what is left and stop the thread (at shutdown).
    pub async fn finish(&self, _store: &ml_dash::Store) {
        {
            let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            s.stopping = true;
            self.inner.cv.notify_all();
        }
        let h = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = h {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pusher(inner: &Inner, remote: &ml_dash::Remote, app: &Weak<App>) {
    let mut backoff = Duration::ZERO;
    loop {
        // Wait for a commit, then for the interval (more commits join the same push).
        let commits = {
            let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if s.stopping && s.dirty_since.is_none() {
                    return;
                }
                if let Some(t) = s.dirty_since {
                    let due = inner.interval.max(backoff);
                    if s.stopping || t.elapsed() >= due {
                        break;
                    }
                    let wait = due - t.elapsed();
                    s = inner
                        .cv
                        .wait_timeout(s, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                } else {
                    s = inner.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            }
            s.pushing = true;
            s.during_push = None;
            s.commits
        };
        let Some(app) = app.upgrade() else { return };
        let r = app.store.push(remote, None);
        drop(app);
        let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pushing = false;
        match r {
            Ok(rep) => {
                backoff = Duration::ZERO;
                s.pushes += 1;
                s.last_ok = Some(SystemTime::now());
                s.last_error = None;
                s.last_report = serde_json::to_value(&rep).ok();
                // Commits made during the push go with the next one.
                s.dirty_since = if s.commits == commits {
                    None
                } else {
                    s.during_push.or(Some(Instant::now()))
                };
                s.during_push = None;
            }
            Err(e) => {
                eprintln!(
                    "ml-dash serve: push to {} failed (will retry): {e}",
                    inner.url
                );
                s.last_error = Some(e.to_string());
                backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if s.stopping {
                    // One attempt at shutdown; the next start pushes the rest.
                    return;
                }
            }
        }
    }
}
