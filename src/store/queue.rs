//! What both durable stores (SQLite, PostgreSQL) share: the queue of write jobs in front of one
//! writer that commits them in batches (group commit), how a job is answered, the writer's
//! counters, and the [`Store`](super::Store) methods answered by the queue alone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{Append, Appended, Holding, Membership, Pruned, ReadState, Retention, RoomState};
use crate::error::StoreError;
use crate::{Error, Result};

/// Most jobs one transaction commits.
pub(crate) const MAX_BATCH: usize = 512;

/// Jobs that may wait for the writer; beyond that an append is refused (back-pressure).
const QUEUE: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) enum Job {
    Append(Append, oneshot::Sender<Result<Appended>>),
    Ensure(String, oneshot::Sender<Result<RoomState>>),
    Wipe(String, oneshot::Sender<Result<RoomState>>),
    /// One bounded round of retention (see [`Store::prune`](super::Store::prune)).
    Prune(PruneJob, oneshot::Sender<Result<Pruned>>),
    /// Binds a nick (case-folded) to a key hash unless it is bound already, and says what it
    /// is bound to (see [`Store::take_nick`](super::Store::take_nick)).
    Bind(String, String, oneshot::Sender<Result<Holding>>),
    /// Changes a known user's (case-folded nick) hold on a room (see
    /// [`Store::membership`](super::Store::membership)).
    Member(
        String,
        String,
        Membership,
        oneshot::Sender<Result<ReadState>>,
    ),
    /// Answered once every job queued before it is committed.
    Flush(oneshot::Sender<Result<()>>),
}

/// The arguments of one [`Store::prune`](super::Store::prune) call.
#[derive(Debug, Clone)]
pub(crate) struct PruneJob {
    pub(crate) retention: Retention,
    pub(crate) now_ms: i64,
    pub(crate) from: String,
    pub(crate) limit: usize,
}

/// A job's result, held until its transaction commits.
pub(crate) enum Done {
    Append(Result<Appended>),
    Pruned(Result<Pruned>),
    State(Result<RoomState>),
    Held(Result<Holding>),
    Member(Result<ReadState>),
    Flushed(Result<()>),
}

/// The sending side of the writer's queue, and the counters its writer keeps.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    jobs: mpsc::Sender<Job>,
    stats: Arc<StoreStats>,
}

fn stopped() -> Error {
    Error::Store(StoreError::Stopped)
}

impl Queue {
    /// A queue and the receiver its writer drains.
    pub(crate) fn new() -> (Self, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let stats = Arc::default();
        (Self { jobs, stats }, rx)
    }

    /// The writer's counters (the writer is given a clone to keep them in).
    pub(crate) fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// A handle that does not keep the writer running.
    pub(crate) fn downgrade(&self) -> mpsc::WeakSender<Job> {
        self.jobs.downgrade()
    }

    /// Queues a job and waits for its answer.
    pub(crate) async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(job(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Queues an append *now*, so the order of calls is the order of seqs. A full queue is
    /// refused at once rather than waited for: the client gets `internal` and retries with its
    /// cid.
    pub(crate) fn append(
        &self,
        append: Append,
    ) -> impl Future<Output = Result<Appended>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self
            .jobs
            .try_send(Job::Append(append, tx))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => Error::Store(StoreError::Overloaded),
                mpsc::error::TrySendError::Closed(_) => stopped(),
            });
        async move {
            queued?;
            rx.await.map_err(|_| stopped())?
        }
    }

    /// Queues a wipe of `room` and waits for it to be committed.
    pub(crate) async fn wipe(&self, room: &str) -> Result<RoomState> {
        self.submit(|tx| Job::Wipe(room.to_owned(), tx)).await
    }

    /// Queues the binding of `nick` to `hash` and waits for it to be committed.
    pub(crate) async fn bind(&self, nick: &str, hash: String) -> Result<Holding> {
        self.submit(|tx| Job::Bind(nick.to_owned(), hash, tx)).await
    }

    /// Queues a change to a known user's hold on a room and waits for it to be committed.
    pub(crate) async fn membership(
        &self,
        nick: &str,
        room: &str,
        change: Membership,
    ) -> Result<ReadState> {
        let nick = nick.to_ascii_lowercase();
        self.submit(|tx| Job::Member(nick, room.to_owned(), change, tx))
            .await
    }

    /// Waits until everything queued before is committed (or has failed).
    pub(crate) async fn flush(&self) -> Result<()> {
        self.submit(Job::Flush).await
    }
}

/// The [`Store`](super::Store) methods that a store on the writer queue (a `queue: Queue` field)
/// answers from the queue alone: `append`, `wipe`, `flush` and `write_metrics`. Used inside
/// `impl Store for …`, so that the stores on the queue do not each write them again.
macro_rules! store_methods_on_the_queue {
    () => {
        fn append(
            &self,
            append: $crate::store::Append,
        ) -> impl ::std::future::Future<Output = $crate::Result<$crate::store::Appended>>
        + Send
        + 'static {
            self.queue.append(append)
        }

        async fn wipe(&self, room: &str) -> $crate::Result<$crate::store::RoomState> {
            self.queue.wipe(room).await
        }

        async fn membership(
            &self,
            nick: &str,
            room: &str,
            change: $crate::store::Membership,
        ) -> $crate::Result<$crate::store::ReadState> {
            self.queue.membership(nick, room, change).await
        }

        async fn flush(&self) -> $crate::Result<()> {
            self.queue.flush().await
        }

        fn write_metrics(&self, out: &mut String) {
            self.queue.stats().write_metrics(out);
        }
    };
}
pub(crate) use store_methods_on_the_queue;

/// Takes the first job and every one waiting behind it, up to [`MAX_BATCH`].
pub(crate) fn take_batch(first: Job, rx: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut jobs = vec![first];
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs
}

/// Answers a committed batch, or every job of a failed one with its error; `started` is when
/// its commit began.
pub(crate) fn answer_batch(
    jobs: Vec<Job>,
    outcome: Result<Vec<Done>>,
    started: Instant,
    stats: &StoreStats,
) {
    let took = started.elapsed();
    debug!(batch = jobs.len(), ?took, "store commit");
    match outcome {
        Ok(done) => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            stats
                .commit_micros
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            for (job, done) in jobs.into_iter().zip(done) {
                answer(job, done);
            }
        }
        Err(err) => {
            tracing::warn!(cause = %err, batch = jobs.len(), "store commit failed");
            stats.failures.fetch_add(1, Ordering::Relaxed);
            let err = Arc::new(err);
            for job in jobs {
                let failed = Error::Store(StoreError::Batch(err.clone()));
                let done = match job {
                    Job::Append(..) => Done::Append(Err(failed)),
                    Job::Ensure(..) | Job::Wipe(..) => Done::State(Err(failed)),
                    Job::Flush(..) => Done::Flushed(Err(failed)),
                    Job::Prune(..) => Done::Pruned(Err(failed)),
                    Job::Bind(..) => Done::Held(Err(failed)),
                    Job::Member(..) => Done::Member(Err(failed)),
                };
                answer(job, done);
            }
        }
    }
}

fn answer(job: Job, done: Done) {
    // A caller that went away no longer needs its answer; what was committed stays committed.
    match (job, done) {
        (Job::Append(_, tx), Done::Append(result)) => {
            let _ = tx.send(result);
        }
        (Job::Ensure(_, tx) | Job::Wipe(_, tx), Done::State(result)) => {
            let _ = tx.send(result);
        }
        (Job::Flush(tx), Done::Flushed(result)) => {
            let _ = tx.send(result);
        }
        (Job::Prune(_, tx), Done::Pruned(result)) => {
            let _ = tx.send(result);
        }
        (Job::Bind(_, _, tx), Done::Held(result)) => {
            let _ = tx.send(result);
        }
        (Job::Member(_, _, _, tx), Done::Member(result)) => {
            let _ = tx.send(result);
        }
        _ => unreachable!("a job is answered with its own kind of result"),
    }
}

/// Counters of the writer, for metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Jobs (appends, room creations, wipes, prunes, nick bindings) committed in them.
    pub jobs: AtomicU64,
    /// Total time spent committing, in microseconds (on SQLite, with the search index's
    /// passes).
    pub commit_micros: AtomicU64,
    /// Batches that failed (rolled back, every job answered with the error).
    pub failures: AtomicU64,
    /// The webhooks, once they are on: the endpoints every append writes an outbox row for
    /// (in its own transaction), and their delivery counters.
    pub(crate) hooks: std::sync::OnceLock<Arc<super::outbox::Hooks>>,
}

impl StoreStats {
    /// Appends the counters (Prometheus text format).
    pub(crate) fn write_metrics(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::metrics::write_all(
            out,
            &[
                (
                    "nanachat_store_commits_total",
                    "counter",
                    "Store transactions committed (group commits).",
                    get(&self.commits),
                ),
                (
                    "nanachat_store_jobs_total",
                    "counter",
                    "Store jobs committed; jobs / commits is the mean batch size.",
                    get(&self.jobs),
                ),
                (
                    "nanachat_store_commit_microseconds_total",
                    "counter",
                    "Time spent committing (on SQLite with the search index's passes); over jobs, a write's cost.",
                    get(&self.commit_micros),
                ),
                (
                    "nanachat_store_failed_batches_total",
                    "counter",
                    "Batches rolled back; each of their jobs was answered with an error.",
                    get(&self.failures),
                ),
            ],
        );
        if let Some(hooks) = self.hooks.get() {
            hooks.write_metrics(out);
        }
    }

    /// The endpoints an append writes webhook events for (none while webhooks are off).
    pub(crate) fn endpoints(&self) -> &[String] {
        self.hooks.get().map_or(&[], |h| h.endpoints.as_slice())
    }

    /// Turns webhooks on (once): every append from now on writes an event per endpoint.
    pub(crate) fn hook(&self, hooks: Arc<super::outbox::Hooks>) -> Result<()> {
        self.hooks
            .set(hooks)
            .map_err(|_| Error::Config("webhooks are on already".into()))
    }
}
