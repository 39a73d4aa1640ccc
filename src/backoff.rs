//! Waiting between attempts: exponential back-off, and a connection to a server that is made
//! on first use and made again after it breaks, without hammering a server that is down.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::{Error, Result};

/// A delay that doubles after each failure, from `min` up to `max`, and starts over after a
/// success.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait after this failure (the next one waits twice as long).
    pub(crate) fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(self.max);
        delay
    }

    /// [`Backoff::failed`]'s delay spread over half to one and a half times itself (±50 %
    /// jitter), so that clients dropped together do not come back together.
    pub(crate) fn failed_jittered(&mut self) -> Duration {
        let base = self.failed().as_millis() as u64;
        let jitter = crate::clock::now_us() % (base + 1);
        Duration::from_millis(base / 2 + jitter)
    }

    /// Starts over from the shortest delay.
    pub(crate) fn succeeded(&mut self) {
        self.next = self.min;
    }
}

/// The delays of links to the shared store and the broker: 0.1 s doubling to 5 s.
pub(crate) const LINK: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A connection `C` made on first use and again after it breaks. While its server is down,
/// [`Reconnecting::get`] fails at once until the back-off has passed, so callers get an error
/// quickly and the server is not flooded with attempts.
#[derive(Debug)]
pub(crate) struct Reconnecting<C> {
    /// What is connected to, for errors and logs ("PostgreSQL at postgres://…").
    what: String,
    state: Mutex<State<C>>,
}

#[derive(Debug)]
struct State<C> {
    conn: Option<C>,
    /// No attempt before this, after a failed one.
    next_try: Option<Instant>,
    backoff: Backoff,
}

impl<C: Clone> Reconnecting<C> {
    pub(crate) fn new(what: String) -> Self {
        Self {
            what,
            state: Mutex::new(State {
                conn: None,
                next_try: None,
                backoff: LINK,
            }),
        }
    }

    /// The connection if it is `alive`, or a new one from `connect`.
    pub(crate) async fn get<E: Into<Error>, F: Future<Output = std::result::Result<C, E>>>(
        &self,
        alive: impl Fn(&C) -> bool,
        connect: impl FnOnce() -> F,
    ) -> Result<C> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.conn {
            if alive(conn) {
                return Ok(conn.clone());
            }
            tracing::warn!(link = %self.what, "lost the connection; reconnecting");
            state.conn = None;
        }
        if state.next_try.is_some_and(|at| Instant::now() < at) {
            return Err(Error::Store(StoreError::Unreachable(self.what.clone())));
        }
        match connect().await {
            Ok(conn) => {
                if state.next_try.take().is_some() {
                    tracing::info!(link = %self.what, "reconnected");
                }
                state.backoff.succeeded();
                state.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(err) => {
                state.next_try = Some(Instant::now() + state.backoff.failed());
                Err(Error::Store(StoreError::Reconnect {
                    what: self.what.clone(),
                    source: Box::new(err.into()),
                }))
            }
        }
    }

    /// Forgets the connection (it failed mid-use), so that the next `get` makes a new one.
    pub(crate) async fn reset(&self) {
        self.state.lock().await.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u64> = (0..4).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connect_is_not_retried_before_the_back_off() {
        let link: Reconnecting<u32> = Reconnecting::new("test server".into());
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let refuse = || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err::<u32, _>(Error::Config("refused".into()))
        };
        let err = link.get(|_| true, refuse).await.unwrap_err().to_string();
        assert!(err.contains("cannot reach test server: refused"), "{err}");
        let err = link.get(|_| true, refuse).await.unwrap_err().to_string();
        assert!(err.contains("unreachable"), "{err}");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(
            link.get(|_| true, || async { Ok::<_, Error>(7) })
                .await
                .unwrap(),
            7
        );
        // A live connection is handed out again; a dead one is replaced.
        assert_eq!(
            link.get(|_| true, || async { Ok::<_, Error>(8) })
                .await
                .unwrap(),
            7
        );
        assert_eq!(
            link.get(|c| *c != 7, || async { Ok::<_, Error>(8) })
                .await
                .unwrap(),
            8
        );
    }
}
