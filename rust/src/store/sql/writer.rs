//! The writer: group commits, retries and fencing, once for every backend.
//!
//! One writer per store takes the first batch waiting plus every batch queued behind it (up to
//! [`MAX_OPS_PER_TRANSACTION`] ops), has the backend apply them all, in order, in one
//! transaction, and answers each batch. What goes wrong is handled here:
//!
//! - a **transient** failure (the database unreachable or busy) is retried with backoff from
//!   50 ms to 2 s until the transaction commits or the store closes (then the batches are
//!   abandoned: they may or may not have been applied);
//! - a transaction of several batches that the database **refuses** is retried batch by batch,
//!   so that a bad batch fails alone;
//! - a commit **fenced** by the database (the lease it carries is not held) lets the backend
//!   renew the lease once: renewed on the same epoch, the commit is retried; taken over, the
//!   write fails with [`SqlError::Fenced`].
//!
//! A backend only implements [`Transactions`]: one try at one transaction, and the hooks to get
//! over a failure. The loop is async: PostgreSQL's writer is a tokio task, SQLite's runs on its
//! own thread under a current-thread runtime, so that its commits (synchronous rusqlite calls)
//! still cost one thread hop in and one out.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{config, connect::EngineLock, Failure, SqlError};
use crate::store::{Op, OpResult};

/// First wait before retrying after a connection error.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between retries.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(2);
/// The writer stops merging queued batches into a transaction past this many ops.
pub(super) const MAX_OPS_PER_TRANSACTION: usize = 8192;

/// A write batch and where its results go.
pub(super) struct Batch {
    pub(super) ops: Vec<Op>,
    pub(super) reply: oneshot::Sender<Result<Vec<OpResult>, SqlError>>,
}

/// One transaction's results, per batch.
pub(super) type Results = Vec<Vec<OpResult>>;

/// What a renewal after a fenced commit came to.
pub(super) enum Renewal {
    /// The lease `lease` is held again on the same epoch: the commit may be retried.
    Renewed {
        /// The lease's name, for the log.
        lease: String,
    },
    /// The lease is lost for good: why.
    Lost(String),
    /// One of several leases (a runner's shard) is lost: the ops that depend on it are answered
    /// [`crate::store::OpResult::Fenced`] from now on, and the commit is retried without them.
    Dropped {
        /// The lease's name, for the log.
        lease: String,
    },
}

/// What a backend does for the writer.
pub(super) trait Transactions {
    /// How a transient failure reads in the log: "a commit {TROUBLE} and is retried".
    const TROUBLE: &'static str;

    /// One try at applying `batches`, in order, in one transaction, and committing it.
    async fn apply(&mut self, batches: &[&[Op]]) -> Result<Results, Failure>;

    /// After a transient failure, before the pause and the next try.
    async fn recover(&mut self) {}

    /// After the database refused a commit as fenced (`refused`: its message): renews the
    /// lease if nobody took it over. An error is the connection failing meanwhile (retried
    /// as a transient failure).
    async fn renew(&mut self, refused: String) -> Result<Renewal, Failure> {
        Ok(Renewal::Lost(refused))
    }

    /// Closes the backend's connections once the writer is done.
    async fn close(self);
}

/// `first` and every batch queued behind it, up to [`MAX_OPS_PER_TRANSACTION`] ops: what one
/// transaction takes.
fn gather(first: Batch, queue: &mut mpsc::UnboundedReceiver<Batch>) -> Vec<Batch> {
    let mut ops = first.ops.len();
    let mut batches = vec![first];
    while ops < MAX_OPS_PER_TRANSACTION {
        match queue.try_recv() {
            Ok(batch) => {
                ops += batch.ops.len();
                batches.push(batch);
            }
            Err(_) => break,
        }
    }
    batches
}

/// Waits between retries: from [`RETRY_FIRST`], doubling up to [`RETRY_MAX`].
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Self(RETRY_FIRST)
    }

    pub(super) fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (delay * 2).min(RETRY_MAX);
        delay
    }
}

/// How the writer words errors (the URL, secrets masked), and the commit count it keeps.
pub(super) struct WriterContext {
    pub(super) url: String,
    pub(super) secrets: Vec<String>,
    pub(super) transactions: Arc<AtomicU64>,
}

impl WriterContext {
    fn committed(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    fn scrubbed(&self, message: &str) -> String {
        config::scrub(message.to_owned(), &self.secrets)
    }

    fn refused(&self, message: &str) -> SqlError {
        SqlError::Database {
            url: self.url.clone(),
            message: self.scrubbed(message),
        }
    }

    fn abandoned(&self, message: &str) -> SqlError {
        SqlError::Abandoned {
            url: self.url.clone(),
            message: self.scrubbed(message),
        }
    }

    fn fenced(&self, message: &str) -> SqlError {
        SqlError::Fenced {
            url: self.url.clone(),
            message: self.scrubbed(message),
        }
    }
}

/// The writer of one store, over its backend.
pub(super) struct Writer<B> {
    backend: B,
    context: WriterContext,
    /// Turns true when the store closes; its sender goes when the store is dropped.
    closing: watch::Receiver<bool>,
}

impl<B: Transactions> Writer<B> {
    pub(super) fn new(backend: B, context: WriterContext, closing: watch::Receiver<bool>) -> Self {
        Self {
            backend,
            context,
            closing,
        }
    }

    /// Applies the batches of `queue` until it is closed and drained, closes the backend, and
    /// last sends `lock` to `finished`: once the engine lock goes, no connection of this
    /// writer is open.
    pub(super) async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Batch>,
        lock: EngineLock,
        finished: oneshot::Sender<EngineLock>,
    ) {
        while let Some(first) = queue.recv().await {
            let batches = gather(first, &mut queue);
            let all: Vec<&[Op]> = batches.iter().map(|b| b.ops.as_slice()).collect();
            match self.commit(&all).await {
                Ok(results) => {
                    for (batch, results) in batches.into_iter().zip(results) {
                        let _ = batch.reply.send(Ok(results));
                    }
                }
                Err(SqlError::Database { .. }) if batches.len() > 1 => {
                    // One batch may be at fault: give each its own transaction and outcome.
                    for batch in batches {
                        let outcome = self
                            .commit(&[batch.ops.as_slice()])
                            .await
                            .map(|mut results| results.pop().unwrap_or_default());
                        let _ = batch.reply.send(outcome);
                    }
                }
                Err(err) => {
                    for batch in batches {
                        let _ = batch.reply.send(Err(err.clone()));
                    }
                }
            }
        }
        self.backend.close().await;
        let _ = finished.send(lock);
    }

    /// Whether the store is closing (or gone).
    fn closing(&self) -> bool {
        *self.closing.borrow() || self.closing.has_changed().is_err()
    }

    /// Applies `batches` in one transaction, retrying it on transient failures until it
    /// commits or the store closes.
    async fn commit(&mut self, batches: &[&[Op]]) -> Result<Results, SqlError> {
        let mut backoff = Backoff::new();
        loop {
            let failure = match self.backend.apply(batches).await {
                Ok(results) => {
                    self.context.committed();
                    return Ok(results);
                }
                // Expired without being taken over (this process or its database paused past
                // the expiry): renewing on the same epoch makes the commit good again. A new
                // epoch means another engine took over: nothing more is written.
                Err(Failure::Fenced(refused)) => match self.backend.renew(refused.clone()).await {
                    Ok(Renewal::Renewed { lease }) => {
                        log::warn!(
                            target: "plait.store",
                            "a commit was refused ({}); the lease {lease:?} was renewed and the \
                             commit is retried",
                            self.context.scrubbed(&refused)
                        );
                        continue;
                    }
                    Ok(Renewal::Dropped { lease }) => {
                        log::warn!(
                            target: "plait.store",
                            "a commit was refused: this runner no longer holds {lease:?}; its \
                             writes are fenced and the rest of the commit is retried"
                        );
                        continue;
                    }
                    Ok(Renewal::Lost(why)) => return Err(self.context.fenced(&why)),
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            let Failure::Transient(message) = failure else {
                return Err(self.context.refused(&failure.to_string()));
            };
            self.backend.recover().await;
            if self.closing() {
                return Err(self.context.abandoned(&message));
            }
            log::warn!(
                target: "plait.store",
                "a commit {} and is retried: {}",
                B::TROUBLE,
                self.context.scrubbed(&message)
            );
            let delay = backoff.next();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // Cut short by `close` (or the store dropped): one more try, then abandoned.
                _ = self.closing.wait_for(|closing| *closing) => {}
            }
        }
    }
}
