//! Retention: a task that deletes what `--retention-age` / `--retention-messages` say goes,
//! once at start and then every `prune_interval`, through [`prune_all`] (bounded store calls,
//! so appends are never held up long). What a resume from before the oldest kept message gets
//! is decided at `join` (`session.rs`, `hub.rs`): `joined` says `truncated`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::config::ChatConfig;
use crate::store::{Store, prune_all};

/// The pruning task of one chat server, if its retention prunes anything.
#[derive(Debug, Default)]
pub(super) struct Pruner {
    task: Mutex<Option<JoinHandle<()>>>,
    /// Messages deleted so far.
    pruned: Arc<AtomicU64>,
}

impl Pruner {
    /// Starts the task (inside a Tokio runtime) when `config` has a retention rule. It holds
    /// the store weakly: it never keeps a stopped server's store (and its data dir) open.
    pub(super) fn start<S: Store>(store: &Arc<S>, config: &ChatConfig) -> Self {
        let pruner = Self::default();
        if config.retention.keeps_all() {
            return pruner;
        }
        let (store, retention, every) = (
            Arc::downgrade(store),
            config.retention,
            config.prune_interval,
        );
        let pruned = pruner.pruned.clone();
        let task = tokio::spawn(run(store, retention, every, pruned));
        *pruner.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        pruner
    }

    /// Messages deleted so far.
    pub(super) fn pruned(&self) -> u64 {
        self.pruned.load(Ordering::Relaxed)
    }

    /// Stops the task and waits until it has let go of the store.
    pub(super) async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

async fn run<S: Store>(
    store: Weak<S>,
    retention: crate::store::Retention,
    every: std::time::Duration,
    pruned: Arc<AtomicU64>,
) {
    // The first tick is at once: a server started after a long stop prunes before anything.
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        match prune_all(&*store, retention).await {
            Ok(0) => {}
            Ok(n) => {
                pruned.fetch_add(n, Ordering::Relaxed);
                info!(deleted = n, "retention pruned old messages");
            }
            Err(err) => warn!(cause = %err, "retention could not prune (tried again later)"),
        }
    }
}
