//! Runner-to-runner messages (Effect's `Runners` over its RPC protocol): requests go to the
//! runner that owns their entity, their replies come back, and so do interrupts. Persisted
//! requests travel this way too once their sender saved them, but only once: any failure leaves
//! them to storage (see [`Transport::send`]).
//!
//! HTTP/2 in clear text with prior knowledge, served by axum and sent by reqwest; bodies are
//! `MessagePack` (serde). Three routes:
//!
//! - `POST /plait/v1/send`: a batch of requests (offered to the mailboxes here, one answer
//!   each: taken, or the mailbox's refusal) and of interrupts of requests sent before.
//! - `POST /plait/v1/replies`: a long poll for the replies of the requests a caller sent here.
//!   Each reply has a sequence number; a poll acknowledges what the caller got, and the server
//!   drops replies only once acknowledged, so a poll answer lost on the way loses nothing.
//!   Replies travel on a poll rather than on the response of their request, so a batch of
//!   requests is one HTTP request however long its handlers take, and a client-only process,
//!   which listens nowhere, gets its replies the same way.
//! - `GET /plait/v1/ping`: alive (Effect's `Ping`).
//!
//! Routing follows Effect's `sendOutgoing`: the owner of a request's shard is read from the
//! rings at each try; a request refused as not assigned (its shard is moving), or whose runner
//! cannot be reached, is tried again every `send_retry`. Effect retries without limit; here a
//! request undelivered for `give_up` (twice the shard lease: longer than a failover takes) is
//! answered `Unavailable`, so that a caller whose runner vanished for good hears of it. A
//! request the rings give to this very process (it holds the shard, or is about to) is offered
//! to its own mailboxes, not sent over the network. A request taken by a runner that then stops
//! answering is sent again to the shard's next owner: volatile requests are delivered at least
//! once across runner failures, as in Effect.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::cluster::mailbox::{Address, Message, Refusal};

/// Largest request body the server reads, and so the largest batch a sender makes.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// A long poll is answered after this at the latest, empty if nothing came.
const POLL_HOLD: Duration = Duration::from_secs(5);
/// A send is answered at once (its requests are offered, not run): a runner that takes longer
/// is hung.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// A caller that has not polled for this long is gone: its unread replies are dropped.
const CALLER_GONE: Duration = Duration::from_mins(2);
/// Polls that fail in a row before a runner still in the rings counts as unavailable (one
/// suffices for a runner the rings left).
const POLL_FAILURES: u32 = 3;
/// Interrupts are sent this many times at most (Effect: 3 retries).
const INTERRUPT_TRIES: u32 = 4;
/// How long a closing server waits for its callers to take the replies it holds.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const MSGPACK: &str = "application/msgpack";

/// What the transport tells the process's work source.
pub trait Inbox: Send + Sync {
    /// Requests for entities here (from another process, or routed here by this one): one
    /// answer each.
    fn offer_remote(&self, messages: Vec<Message>) -> Vec<Result<(), Refusal>>;
    /// Callers elsewhere gave up on these requests (taken here before).
    fn interrupt_remote(&self, requests: Vec<(i64, Address)>);
    /// Final replies of requests this process sent to other runners.
    fn remote_replies(&self, replies: Vec<(i64, Vec<u8>)>);
    /// Requests this process sent that were taken (`None`; for those sent with `discard`) or
    /// refused for good.
    fn routed(&self, requests: Vec<(i64, Option<Refusal>)>);
}

/// Where an entity's requests go now: the address of its shard's owner by the rings.
pub type Route = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
/// Whether a runner (by address) is in the rings now.
pub type InRings = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client could not be made.
    #[error("cannot make the runners' HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// How a process takes part: who it is, where it listens, how it finds runners.
pub struct Endpoint {
    /// This process among the callers of other runners (unique per process).
    pub name: String,
    /// This process's own runner address (requests routed to it stay here).
    pub address: Option<String>,
    /// Where it listens, if it serves.
    pub listen: Option<String>,
    /// The owner of an entity's shard by the rings.
    pub route: Route,
    /// Whether a runner is in the rings.
    pub in_rings: InRings,
}

/// A request as it travels.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Envelope {
    request_id: i64,
    entity_type: String,
    entity_id: String,
    tag: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    /// The caller waits for no reply (only for a mailbox to take it).
    discard: bool,
    /// Saved by its sender before it was sent (claimed, for a short while): sent once, and
    /// delivered by storage if that fails.
    #[serde(default)]
    persisted: bool,
    /// When a persisted one was saved (the owner checks its claim still stands).
    #[serde(default)]
    saved_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SendBatch {
    /// The sending process (where its replies wait).
    from: String,
    requests: Vec<Envelope>,
    interrupts: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SendAnswers {
    /// Per request: `None` taken, else why not.
    answers: Vec<Option<Refusal>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Poll {
    from: String,
    /// The caller got every reply up to this sequence number.
    ack: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Outcome {
    /// The final reply (an encoded exit).
    Exit(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The entity's shard moved away before it ran to the end: send it again.
    Moved,
}

#[derive(Debug, Serialize, Deserialize)]
struct Replies {
    /// `(sequence number, request id, outcome)`.
    replies: Vec<(u64, i64, Outcome)>,
}

/// A request being sent: its envelope, and how its delivery has gone so far.
#[derive(Clone, Debug)]
struct Sent {
    envelope: Envelope,
    /// When it first could not be delivered (no owner, refused as not assigned, its runner
    /// unreachable) since it was last taken, and the last runner that could not be reached.
    failing_since: Option<Instant>,
    unreachable: Option<String>,
    /// Its runner answered the send (took it): an interrupt can reach it there.
    answered: bool,
}

impl Sent {
    /// It could not be delivered this time (`runner`: because that runner is unreachable).
    fn failed(&mut self, runner: Option<&str>) {
        self.failing_since.get_or_insert_with(Instant::now);
        if let Some(runner) = runner {
            self.unreachable = Some(runner.to_owned());
        }
    }

    /// A runner took it: a later failure counts from then.
    fn taken(&mut self) {
        self.failing_since = None;
        self.unreachable = None;
        self.answered = true;
    }
}

/// The sending side: requests to route, those sent and awaiting a reply, by runner.
#[derive(Default)]
struct Outbound {
    /// To route and send at the next round.
    unsent: Vec<Sent>,
    /// To try again after `send_retry`.
    retry: Vec<Sent>,
    /// Sent to a runner (the answer may be on its way), waiting for its reply there: by
    /// runner address, by request id. Entered before the send, so that a reply polled before
    /// the send's answer arrives finds its request.
    awaiting: FxHashMap<String, FxHashMap<i64, Sent>>,
    /// Runners with a long poll running.
    polling: FxHashSet<String>,
    /// Requests whose caller gave up while their send was unanswered, or while they were
    /// between the sets above: sent no more, and the runner that takes one is told.
    interrupted: FxHashSet<i64>,
}

/// The serving side: replies for callers elsewhere, and the requests they sent here.
#[derive(Default)]
struct Inbound {
    callers: FxHashMap<String, Caller>,
    /// Requests from other processes in the mailboxes here: their caller and entity.
    origins: FxHashMap<i64, (String, Address)>,
}

struct Caller {
    /// Replies not yet acknowledged, with their sequence numbers.
    replies: VecDeque<(u64, i64, Outcome)>,
    next_seq: u64,
    wake: Arc<Notify>,
    seen: Instant,
}

impl Caller {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            next_seq: 1,
            wake: Arc::new(Notify::new()),
            seen: Instant::now(),
        }
    }
}

struct Shared {
    endpoint: Endpoint,
    client: reqwest::Client,
    inbox: Arc<dyn Inbox>,
    send_retry: Duration,
    /// How long a request may go undelivered before its caller gets `Unavailable`.
    give_up: Duration,
    /// The runtime it runs on (its methods are called from other threads too).
    runtime: tokio::runtime::Handle,
    outbound: Mutex<Outbound>,
    inbound: Mutex<Inbound>,
    /// Wakes the sender: requests to send.
    wake: Notify,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn outbound(&self) -> MutexGuard<'_, Outbound> {
        self.outbound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn inbound(&self) -> MutexGuard<'_, Inbound> {
        self.inbound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn unavailable(&self, sent: &Sent) -> Refusal {
        Refusal::Unavailable {
            runner: sent.unreachable.clone(),
            after_ms: u64::try_from(self.give_up.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A process's end of the runners' messages. See the [module documentation](self).
pub struct Transport {
    shared: Arc<Shared>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("name", &self.shared.endpoint.name)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Starts the transport of a process: its sender, and (if the endpoint listens) its
    /// server. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`TransportError`] when the address cannot be bound or the client made.
    pub async fn start(
        endpoint: Endpoint,
        inbox: Arc<dyn Inbox>,
        send_retry: Duration,
        give_up: Duration,
    ) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(TransportError::Client)?;
        let listener = match &endpoint.listen {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(
                |source| TransportError::Listen {
                    address: address.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            endpoint,
            client,
            inbox,
            send_retry: send_retry.max(Duration::from_millis(1)),
            give_up,
            runtime: tokio::runtime::Handle::current(),
            outbound: Mutex::new(Outbound::default()),
            inbound: Mutex::new(Inbound::default()),
            wake: Notify::new(),
            stop,
        });
        if let Some(listener) = listener {
            let app = Router::new()
                .route("/plait/v1/send", post(serve_send))
                .route("/plait/v1/replies", post(serve_replies))
                .route("/plait/v1/ping", get(|| async { "ok" }))
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .with_state(Arc::clone(&shared));
            let mut stopped = shared.stop.subscribe();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(err) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    log::warn!(target: "plait.cluster", "the runners' server stopped: {err}");
                }
            });
        }
        tokio::spawn(send_loop(Arc::clone(&shared)));
        Ok(Self { shared })
    }

    /// Sends requests to the runners of their entities (`discard`: the caller waits only until
    /// a mailbox took it). Their replies and refusals come through the [`Inbox`].
    ///
    /// A persisted request (saved by its sender first) is sent once: refused, or its runner
    /// unreachable or gone, or its shard moved before it ran, it is answered `Unavailable`
    /// at once, for its caller to leave it to storage, where it is delivered exactly once.
    pub fn send(&self, messages: Vec<(Message, bool)>) {
        let mut refused = Vec::new();
        {
            let mut outbound = self.shared.outbound();
            for (message, discard) in messages {
                let size = message.payload.len();
                let sent = Sent {
                    envelope: Envelope {
                        request_id: message.request_id,
                        entity_type: message.address.entity_type,
                        entity_id: message.address.entity_id,
                        tag: message.tag,
                        payload: message.payload,
                        discard,
                        persisted: message.persisted,
                        saved_ms: message.saved_ms,
                    },
                    failing_since: None,
                    unreachable: None,
                    answered: false,
                };
                if self.shared.stopped() {
                    refused.push((message.request_id, Some(self.shared.unavailable(&sent))));
                } else if size > MAX_BODY / 2 {
                    let limit = MAX_BODY / 2;
                    refused.push((message.request_id, Some(Refusal::TooLarge { size, limit })));
                } else {
                    outbound.unsent.push(sent);
                }
            }
        }
        if !refused.is_empty() {
            self.shared.inbox.routed(refused);
        }
        self.shared.wake.notify_one();
    }

    /// The callers of these requests gave up: they are not sent any more, and the runners
    /// that took them (or are about to) are told.
    pub fn interrupt(&self, ids: &[i64]) {
        let mut told: FxHashMap<String, Vec<i64>> = FxHashMap::default();
        {
            let mut outbound = self.shared.outbound();
            let outbound = &mut *outbound;
            let mut left: FxHashSet<i64> = ids.iter().copied().collect();
            for sent in outbound.unsent.iter().chain(&outbound.retry) {
                left.remove(&sent.envelope.request_id);
            }
            let wanted: FxHashSet<i64> = ids.iter().copied().collect();
            outbound
                .unsent
                .retain(|s| !wanted.contains(&s.envelope.request_id));
            outbound
                .retry
                .retain(|s| !wanted.contains(&s.envelope.request_id));
            for (runner, awaiting) in &mut outbound.awaiting {
                for id in ids {
                    match awaiting.remove(id) {
                        Some(sent) if sent.answered => {
                            told.entry(runner.clone()).or_default().push(*id);
                            left.remove(id);
                        }
                        // Its send is unanswered: the answer tells whether to tell.
                        Some(_) => {
                            outbound.interrupted.insert(*id);
                            left.remove(id);
                        }
                        None => {}
                    }
                }
            }
            // Found nowhere: between two of the sets (a move being routed again), caught where
            // it lands; or answered already, and then the entry goes with its next sighting.
            outbound.interrupted.extend(left);
        }
        for (runner, ids) in told {
            tell_interrupted(&self.shared, runner, ids);
        }
    }

    /// The final replies of requests other processes sent here: each goes to its caller.
    pub fn reply(&self, replies: Vec<(i64, Vec<u8>)>) {
        self.answer(
            replies
                .into_iter()
                .map(|(id, value)| (id, Outcome::Exit(value))),
        );
    }

    /// Requests other processes sent here whose shard moved away before they finished: their
    /// callers send them again, to the new owner.
    pub fn moved(&self, ids: &[i64]) {
        self.answer(ids.iter().map(|id| (*id, Outcome::Moved)));
    }

    fn answer(&self, outcomes: impl Iterator<Item = (i64, Outcome)>) {
        let mut inbound = self.shared.inbound();
        let mut woken = Vec::new();
        for (id, outcome) in outcomes {
            let Some((from, _)) = inbound.origins.remove(&id) else {
                continue; // sent with discard, or its caller gave up
            };
            let caller = inbound.callers.entry(from).or_insert_with(Caller::new);
            let seq = caller.next_seq;
            caller.next_seq += 1;
            caller.replies.push_back((seq, id, outcome));
            woken.push(Arc::clone(&caller.wake));
        }
        drop(inbound);
        for wake in woken {
            wake.notify_one();
        }
    }

    /// Whether the runner at `address` answers a ping within `timeout` (Effect's `Ping`).
    pub async fn ping(&self, address: &str, timeout: Duration) -> bool {
        let answer = self
            .shared
            .client
            .get(format!("http://{address}/plait/v1/ping"))
            .timeout(timeout)
            .send()
            .await;
        answer.is_ok_and(|response| response.status().is_success())
    }

    /// Stops sending, and serving once the callers took the replies held here (for a short
    /// while at most).
    pub async fn close(&self) {
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline
            && self
                .shared
                .inbound()
                .callers
                .values()
                .any(|caller| !caller.replies.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop();
    }

    fn stop(&self) {
        self.shared.stop.send_replace(true);
        self.shared.wake.notify_one();
        for caller in self.shared.inbound().callers.values() {
            caller.wake.notify_one();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tells `runner` that the callers of `ids` gave up (a few tries, then it is let go).
fn tell_interrupted(shared: &Arc<Shared>, runner: String, ids: Vec<i64>) {
    let batch = SendBatch {
        from: shared.endpoint.name.clone(),
        requests: Vec::new(),
        interrupts: ids,
    };
    let shared = Arc::clone(shared);
    let runtime = shared.runtime.clone();
    runtime.spawn(async move {
        for _ in 0..INTERRUPT_TRIES {
            let told = call::<_, SendAnswers>(&shared, &runner, "send", &batch, SEND_TIMEOUT);
            if told.await.is_ok() {
                return;
            }
            tokio::time::sleep(shared.send_retry).await;
        }
    });
}

/// Sends what is unsent, a batch per runner, until the transport closes.
async fn send_loop(shared: Arc<Shared>) {
    let mut stopped = shared.stop.subscribe();
    let mut next_retry: Option<Instant> = None;
    loop {
        if shared.stopped() {
            give_up_all(&shared);
            return;
        }
        let sleep = next_retry.map_or(Duration::from_hours(1), |at| {
            at.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = stopped.changed() => {}
        }
        let now = Instant::now();
        let unsent = {
            let mut outbound = shared.outbound();
            if next_retry.is_some_and(|at| at <= now) {
                next_retry = None;
                let retry = std::mem::take(&mut outbound.retry);
                outbound.unsent.extend(retry);
            }
            std::mem::take(&mut outbound.unsent)
        };
        let mut by_runner: FxHashMap<String, Vec<Sent>> = FxHashMap::default();
        let mut unrouted = Vec::new();
        let mut here = Vec::new();
        for sent in unsent {
            match (shared.endpoint.route)(&sent.envelope.entity_id) {
                Some(runner) if Some(&runner) == shared.endpoint.address.as_ref() => {
                    here.push(sent);
                }
                Some(runner) => by_runner.entry(runner).or_default().push(sent),
                None => unrouted.push(sent),
            }
        }
        if !unrouted.is_empty() {
            retry(&shared, unrouted, None);
        }
        if !here.is_empty() {
            offer_here(&shared, here);
        }
        for (runner, batch) in by_runner {
            for chunk in chunks(batch) {
                tokio::spawn(send_batch(Arc::clone(&shared), runner.clone(), chunk));
            }
        }
        if next_retry.is_none() && !shared.outbound().retry.is_empty() {
            next_retry = Some(Instant::now() + shared.send_retry);
        }
    }
}

/// The transport stopped: what it still holds to send, or awaits, is answered `Unavailable`.
fn give_up_all(shared: &Shared) {
    let pending: Vec<Sent> = {
        let mut outbound = shared.outbound();
        let mut pending: Vec<Sent> = std::mem::take(&mut outbound.unsent);
        pending.append(&mut outbound.retry);
        for (_, awaiting) in outbound.awaiting.drain() {
            pending.extend(awaiting.into_values());
        }
        pending
    };
    if !pending.is_empty() {
        let refused = pending
            .iter()
            .map(|sent| (sent.envelope.request_id, Some(shared.unavailable(sent))))
            .collect();
        shared.inbox.routed(refused);
    }
}

/// Requests the rings give to this process: offered to its own mailboxes (as the caller's
/// first offer was, before its shard was held here); still refused as not assigned, they are
/// tried again.
fn offer_here(shared: &Shared, here: Vec<Sent>) {
    let messages = here
        .iter()
        .map(|sent| Message {
            request_id: sent.envelope.request_id,
            address: Address {
                entity_type: sent.envelope.entity_type.clone(),
                entity_id: sent.envelope.entity_id.clone(),
            },
            tag: sent.envelope.tag.clone(),
            payload: sent.envelope.payload.clone(),
            persisted: sent.envelope.persisted,
            forwarded: false,
            saved_ms: sent.envelope.saved_ms,
        })
        .collect();
    let answers = shared.inbox.offer_remote(messages);
    let mut routed = Vec::new();
    let mut again = Vec::new();
    for (sent, answer) in here.into_iter().zip(answers) {
        match answer {
            // Taken here: the caller hears as from any local request.
            Ok(()) if sent.envelope.discard => routed.push((sent.envelope.request_id, None)),
            Ok(()) => {}
            Err(Refusal::NotAssigned { .. }) => again.push(sent),
            Err(refusal) => routed.push((sent.envelope.request_id, Some(refusal))),
        }
    }
    if !again.is_empty() {
        retry(shared, again, None);
    }
    if !routed.is_empty() {
        shared.inbox.routed(routed);
    }
}

/// Batches of at most about [`MAX_BODY`] / 2 bytes.
fn chunks(batch: Vec<Sent>) -> Vec<Vec<Sent>> {
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for sent in batch {
        let envelope = &sent.envelope;
        let length = envelope.payload.len()
            + envelope.entity_type.len()
            + envelope.entity_id.len()
            + envelope.tag.len()
            + 64;
        if size + length > MAX_BODY / 2 && size > 0 {
            chunks.push(Vec::new());
            size = 0;
        }
        size += length;
        if let Some(last) = chunks.last_mut() {
            last.push(sent);
        }
    }
    chunks
}

async fn send_batch(shared: Arc<Shared>, runner: String, batch: Vec<Sent>) {
    let body = SendBatch {
        from: shared.endpoint.name.clone(),
        requests: batch.iter().map(|s| s.envelope.clone()).collect(),
        interrupts: Vec::new(),
    };
    // Awaited before the send: a reply polled before the answer comes finds its request.
    let poll = {
        let mut outbound = shared.outbound();
        let awaiting = outbound.awaiting.entry(runner.clone()).or_default();
        for sent in batch.iter().filter(|s| !s.envelope.discard) {
            awaiting.insert(sent.envelope.request_id, sent.clone());
        }
        let start =
            batch.iter().any(|s| !s.envelope.discard) && !outbound.polling.contains(&runner);
        if start {
            outbound.polling.insert(runner.clone());
        }
        start
    };
    if poll {
        tokio::spawn(poll_replies(Arc::clone(&shared), runner.clone()));
    }
    let answered = call::<_, SendAnswers>(&shared, &runner, "send", &body, SEND_TIMEOUT).await;
    let answers = match answered {
        Ok(answers) if answers.answers.len() == batch.len() => answers.answers,
        Ok(_) | Err(_) => {
            // Unavailable (Effect's RunnerUnavailable): routed again after `send_retry`, but
            // not those answered meanwhile (the runner took them after all).
            log::debug!(target: "plait.cluster", "runner {runner} unavailable for {} requests", batch.len());
            let still = take_awaiting(&shared, &runner, &batch);
            retry(&shared, still, Some(&runner));
            return;
        }
    };
    let mut routed = Vec::new();
    let mut again = Vec::new();
    let mut interrupted = Vec::new();
    {
        let mut outbound = shared.outbound();
        let outbound = &mut *outbound;
        let awaiting = outbound.awaiting.entry(runner.clone()).or_default();
        for (sent, answer) in batch.into_iter().zip(answers) {
            let id = sent.envelope.request_id;
            let gave_up = outbound.interrupted.remove(&id);
            match answer {
                // Its caller gave up while the send was on its way: the runner is told.
                None if gave_up => interrupted.push(id),
                None if sent.envelope.discard => routed.push((id, None)),
                None => {
                    if let Some(awaited) = awaiting.get_mut(&id) {
                        awaited.taken();
                    }
                }
                Some(_) if gave_up => {}
                Some(refusal) => {
                    if awaiting.remove(&id).is_some() || sent.envelope.discard {
                        match refusal {
                            Refusal::NotAssigned { .. } => again.push(sent),
                            refusal => routed.push((id, Some(refusal))),
                        }
                    }
                }
            }
        }
    }
    if !interrupted.is_empty() {
        tell_interrupted(&shared, runner, interrupted);
    }
    if !again.is_empty() {
        retry(&shared, again, None);
    }
    if !routed.is_empty() {
        shared.inbox.routed(routed);
    }
}

/// Takes the requests of `batch` still awaited from `runner` out of its awaited ones (and the
/// discarded ones, which are never awaited).
fn take_awaiting(shared: &Shared, runner: &str, batch: &[Sent]) -> Vec<Sent> {
    let mut outbound = shared.outbound();
    for sent in batch {
        // Interrupted while its send failed: nothing to send, nobody to tell.
        if outbound.interrupted.remove(&sent.envelope.request_id) {
            if let Some(awaiting) = outbound.awaiting.get_mut(runner) {
                awaiting.remove(&sent.envelope.request_id);
            }
        }
    }
    let awaiting = outbound.awaiting.get_mut(runner);
    let mut still = Vec::new();
    match awaiting {
        Some(awaiting) => {
            for sent in batch {
                if sent.envelope.discard {
                    still.push(sent.clone());
                } else if let Some(awaited) = awaiting.remove(&sent.envelope.request_id) {
                    still.push(awaited);
                }
            }
        }
        None => still.extend(batch.iter().filter(|s| s.envelope.discard).cloned()),
    }
    still
}

/// Requests to route and send again after `send_retry`; those failing for longer than
/// `give_up` are refused instead: `Unavailable` (with the runner last unreachable, if any).
/// Persisted requests are refused so at once: they are stored, and their caller leaves them
/// to the storage read of whoever owns their shard (sending them again could deliver one
/// twice). Those whose caller gave up are dropped.
fn retry(shared: &Shared, sent: Vec<Sent>, unreachable: Option<&str>) {
    let mut given_up = Vec::new();
    {
        let mut outbound = shared.outbound();
        for mut each in sent {
            if outbound.interrupted.remove(&each.envelope.request_id) {
                continue;
            }
            each.failed(unreachable);
            if each.envelope.persisted
                || each
                    .failing_since
                    .is_some_and(|t| t.elapsed() >= shared.give_up)
            {
                given_up.push((each.envelope.request_id, Some(shared.unavailable(&each))));
            } else {
                outbound.retry.push(each);
            }
        }
    }
    if !given_up.is_empty() {
        shared.inbox.routed(given_up);
    }
    shared.wake.notify_one();
}

/// Reads the replies a runner holds for this process while requests await them there.
async fn poll_replies(shared: Arc<Shared>, runner: String) {
    let mut failures = 0;
    let mut ack = 0;
    loop {
        if shared.stopped() {
            return;
        }
        {
            let mut outbound = shared.outbound();
            if outbound
                .awaiting
                .get(&runner)
                .is_none_or(FxHashMap::is_empty)
            {
                // Decided under the lock that `send_batch` fills it under: a request awaited
                // after this starts a poll of its own.
                outbound.awaiting.remove(&runner);
                outbound.polling.remove(&runner);
                return;
            }
        }
        let poll = Poll {
            from: shared.endpoint.name.clone(),
            ack,
        };
        let hold = POLL_HOLD + Duration::from_secs(3);
        match call::<_, Replies>(&shared, &runner, "replies", &poll, hold).await {
            Ok(replies) => {
                failures = 0;
                let mut values = Vec::new();
                let mut again = Vec::new();
                {
                    let mut outbound = shared.outbound();
                    let outbound = &mut *outbound;
                    let awaiting = outbound.awaiting.entry(runner.clone()).or_default();
                    for (seq, id, outcome) in replies.replies {
                        ack = ack.max(seq);
                        outbound.interrupted.remove(&id);
                        let Some(sent) = awaiting.remove(&id) else {
                            continue; // interrupted meanwhile, or answered already
                        };
                        match outcome {
                            Outcome::Exit(value) => values.push((id, value)),
                            Outcome::Moved => again.push(sent),
                        }
                    }
                }
                if !again.is_empty() {
                    retry(&shared, again, None);
                }
                if !values.is_empty() {
                    shared.inbox.remote_replies(values);
                }
            }
            Err(err) => {
                failures += 1;
                let left_rings = !(shared.endpoint.in_rings)(&runner);
                if failures >= POLL_FAILURES || left_rings {
                    // The runner is gone: its requests go to the shards' next owners.
                    log::info!(target: "plait.cluster", "runner {runner} unavailable ({err}): its requests are sent again");
                    let lost: Vec<Sent> = {
                        let mut outbound = shared.outbound();
                        outbound.polling.remove(&runner);
                        outbound
                            .awaiting
                            .remove(&runner)
                            .map(|awaiting| awaiting.into_values().collect())
                            .unwrap_or_default()
                    };
                    retry(&shared, lost, Some(&runner));
                    return;
                }
                tokio::time::sleep(shared.send_retry).await;
            }
        }
    }
}

async fn call<B: Serialize, R: DeserializeOwned>(
    shared: &Shared,
    runner: &str,
    route: &str,
    body: &B,
    timeout: Duration,
) -> Result<R, String> {
    let body = rmp_serde::to_vec_named(body).map_err(|err| err.to_string())?;
    let response = shared
        .client
        .post(format!("http://{runner}/plait/v1/{route}"))
        .header(header::CONTENT_TYPE, MSGPACK)
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|err| err.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ));
    }
    rmp_serde::from_slice(&bytes).map_err(|err| err.to_string())
}

fn msgpack<T: Serialize>(value: &T) -> Response {
    match rmp_serde::to_vec_named(value) {
        Ok(body) => ([(header::CONTENT_TYPE, MSGPACK)], body).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, (StatusCode, String)> {
    rmp_serde::from_slice(body).map_err(|err| {
        (
            StatusCode::BAD_REQUEST,
            format!("not a plait runner message: {err}"),
        )
    })
}

async fn serve_send(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let batch: SendBatch = match decode(&body) {
        Ok(batch) => batch,
        Err(refused) => return refused.into_response(),
    };
    if shared.stopped() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the runner is stopping").into_response();
    }
    if !batch.interrupts.is_empty() {
        let interrupted: Vec<(i64, Address)> = {
            let mut inbound = shared.inbound();
            batch
                .interrupts
                .iter()
                .filter_map(|id| inbound.origins.remove(id).map(|(_, a)| (*id, a)))
                .collect()
        };
        if !interrupted.is_empty() {
            shared.inbox.interrupt_remote(interrupted);
        }
    }
    if batch.requests.is_empty() {
        return msgpack(&SendAnswers {
            answers: Vec::new(),
        });
    }
    // Recorded first: a reply may come before the answer below is made. A request already
    // recorded for the same caller (sent again after a lost answer) keeps its record.
    let recorded: Vec<Recorded> = {
        let mut inbound = shared.inbound();
        let recorded = batch
            .requests
            .iter()
            .map(|e| {
                if e.discard {
                    return Recorded::Discarded;
                }
                match inbound.origins.get(&e.request_id) {
                    Some((from, _)) if *from == batch.from => Recorded::Before,
                    Some(_) => Recorded::Other,
                    None => {
                        let address = Address {
                            entity_type: e.entity_type.clone(),
                            entity_id: e.entity_id.clone(),
                        };
                        inbound
                            .origins
                            .insert(e.request_id, (batch.from.clone(), address));
                        Recorded::Now
                    }
                }
            })
            .collect();
        inbound
            .callers
            .entry(batch.from.clone())
            .or_insert_with(Caller::new)
            .seen = Instant::now();
        recorded
    };
    let ids: Vec<i64> = batch.requests.iter().map(|e| e.request_id).collect();
    let messages = batch
        .requests
        .into_iter()
        .map(|e| Message {
            request_id: e.request_id,
            address: Address {
                entity_type: e.entity_type,
                entity_id: e.entity_id,
            },
            tag: e.tag,
            payload: e.payload,
            persisted: e.persisted,
            forwarded: true,
            saved_ms: e.saved_ms,
        })
        .collect();
    let offered = shared.inbox.offer_remote(messages);
    let mut answers = Vec::with_capacity(offered.len());
    {
        let mut inbound = shared.inbound();
        for ((id, recorded), offer) in ids.iter().zip(&recorded).zip(offered) {
            answers.push(match (offer, recorded) {
                // Taken; or the same caller's request, running here already: taken too.
                (Ok(()), _) | (Err(Refusal::AlreadyProcessing { .. }), Recorded::Before) => None,
                (Err(refusal), recorded) => {
                    if *recorded == Recorded::Now {
                        inbound.origins.remove(id);
                    }
                    Some(refusal)
                }
            });
        }
    }
    msgpack(&SendAnswers { answers })
}

/// What `serve_send` found of a request's record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// Sent with discard: no reply goes back.
    Discarded,
    /// Recorded by this call.
    Now,
    /// Recorded before for the same caller.
    Before,
    /// Recorded for another caller (an id collision): refused as the mailbox says.
    Other,
}

async fn serve_replies(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let poll: Poll = match decode(&body) {
        Ok(poll) => poll,
        Err(refused) => return refused.into_response(),
    };
    let deadline = Instant::now() + POLL_HOLD;
    loop {
        let wake = {
            let mut inbound = shared.inbound();
            let now = Instant::now();
            inbound
                .callers
                .retain(|from, caller| *from == poll.from || now - caller.seen < CALLER_GONE);
            let caller = inbound
                .callers
                .entry(poll.from.clone())
                .or_insert_with(Caller::new);
            caller.seen = now;
            while caller
                .replies
                .front()
                .is_some_and(|(seq, ..)| *seq <= poll.ack)
            {
                caller.replies.pop_front();
            }
            if !caller.replies.is_empty() || shared.stopped() || now >= deadline {
                let replies = caller.replies.iter().cloned().collect();
                return msgpack(&Replies { replies });
            }
            Arc::clone(&caller.wake)
        };
        let _ = tokio::time::timeout_at(deadline.into(), wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A work source stand-in. It answers `echo:<payload>` to every request at once (from a
    /// task, so a reply may overtake the send's answer), unless it refuses them all or holds
    /// them (never answering: for interrupts).
    struct Echo {
        transport: Mutex<Option<Arc<Transport>>>,
        offered: Mutex<Vec<Message>>,
        interrupted: Mutex<Vec<i64>>,
        replies: Mutex<Vec<(i64, Vec<u8>)>>,
        routed: Mutex<Vec<(i64, Option<Refusal>)>>,
        got: Notify,
        refuse: Option<Refusal>,
        hold: bool,
    }

    impl Echo {
        fn new(refuse: Option<Refusal>, hold: bool) -> Arc<Self> {
            Arc::new(Self {
                transport: Mutex::new(None),
                offered: Mutex::new(Vec::new()),
                interrupted: Mutex::new(Vec::new()),
                replies: Mutex::new(Vec::new()),
                routed: Mutex::new(Vec::new()),
                got: Notify::new(),
                refuse,
                hold,
            })
        }

        async fn until(&self, what: impl Fn(&Self) -> bool) {
            tokio::time::timeout(Duration::from_secs(10), async {
                while !what(self) {
                    tokio::select! {
                        () = self.got.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            })
            .await
            .expect("within 10 s");
        }
    }

    impl Inbox for Echo {
        fn offer_remote(&self, messages: Vec<Message>) -> Vec<Result<(), Refusal>> {
            self.offered
                .lock()
                .unwrap()
                .extend(messages.iter().cloned());
            if let Some(refusal) = &self.refuse {
                return messages.iter().map(|_| Err(refusal.clone())).collect();
            }
            let answers = messages.iter().map(|_| Ok(())).collect();
            if !self.hold {
                let transport = self.transport.lock().unwrap().clone().unwrap();
                let replies: Vec<(i64, Vec<u8>)> = messages
                    .iter()
                    .map(|m| (m.request_id, [b"echo:".as_slice(), &m.payload].concat()))
                    .collect();
                tokio::spawn(async move { transport.reply(replies) });
            }
            answers
        }
        fn interrupt_remote(&self, requests: Vec<(i64, Address)>) {
            let ids = requests.into_iter().map(|(id, _)| id);
            self.interrupted.lock().unwrap().extend(ids);
            self.got.notify_one();
        }
        fn remote_replies(&self, replies: Vec<(i64, Vec<u8>)>) {
            self.replies.lock().unwrap().extend(replies);
            self.got.notify_one();
        }
        fn routed(&self, requests: Vec<(i64, Option<Refusal>)>) {
            self.routed.lock().unwrap().extend(requests);
            self.got.notify_one();
        }
    }

    fn message(id: i64) -> Message {
        Message {
            request_id: id,
            address: Address {
                entity_type: "Echo".into(),
                entity_id: format!("e{id}"),
            },
            tag: "say".into(),
            payload: format!("{id}").into_bytes(),
            persisted: false,
            forwarded: false,
            saved_ms: None,
        }
    }

    fn endpoint(name: &str, address: Option<&str>, listen: bool, to: Option<String>) -> Endpoint {
        Endpoint {
            name: name.into(),
            address: address.map(str::to_owned),
            listen: if listen {
                address.map(str::to_owned)
            } else {
                None
            },
            route: Arc::new(move |_: &str| to.clone()),
            in_rings: Arc::new(|_: &str| true),
        }
    }

    async fn start(endpoint: Endpoint, inbox: &Arc<Echo>, give_up: Duration) -> Arc<Transport> {
        let inbox_for_transport: Arc<dyn Inbox> = inbox.clone();
        let transport = Arc::new(
            Transport::start(
                endpoint,
                inbox_for_transport,
                Duration::from_millis(20),
                give_up,
            )
            .await
            .unwrap(),
        );
        *inbox.transport.lock().unwrap() = Some(Arc::clone(&transport));
        transport
    }

    /// A loopback address nothing listens on (the port was free a moment ago).
    async fn free_address() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    async fn pair(server: Arc<Echo>) -> (Arc<Transport>, Arc<Echo>, Arc<Transport>) {
        let address = free_address().await;
        let give_up = Duration::from_secs(10);
        let listening = start(
            endpoint("server", Some(&address), true, None),
            &server,
            give_up,
        )
        .await;
        let client_inbox = Echo::new(None, false);
        let client = start(
            endpoint("client", None, false, Some(address)),
            &client_inbox,
            give_up,
        )
        .await;
        (client, client_inbox, listening)
    }

    #[tokio::test]
    async fn requests_cross_and_their_replies_come_back() {
        let (client, inbox, _server) = pair(Echo::new(None, false)).await;
        client.send((1..=200).map(|id| (message(id), false)).collect());
        inbox
            .until(|i| i.replies.lock().unwrap().len() == 200)
            .await;
        let mut replies = inbox.replies.lock().unwrap().clone();
        replies.sort();
        assert_eq!(replies[0], (1, b"echo:1".to_vec()));
        assert_eq!(replies[199], (200, b"echo:200".to_vec()));
    }

    #[tokio::test]
    async fn a_discarded_request_is_routed_once_taken_and_gets_no_reply() {
        let server = Echo::new(None, false);
        let (client, inbox, _server) = pair(Arc::clone(&server)).await;
        client.send(vec![(message(5), true)]);
        inbox.until(|i| !i.routed.lock().unwrap().is_empty()).await;
        assert_eq!(*inbox.routed.lock().unwrap(), vec![(5, None)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(inbox.replies.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refusal_other_than_not_assigned_reaches_the_sender() {
        let full = Refusal::MailboxFull {
            entity_type: "Echo".into(),
            entity_id: "e1".into(),
        };
        let (client, inbox, _server) = pair(Echo::new(Some(full.clone()), false)).await;
        client.send(vec![(message(1), false)]);
        inbox.until(|i| !i.routed.lock().unwrap().is_empty()).await;
        assert_eq!(*inbox.routed.lock().unwrap(), vec![(1, Some(full))]);
    }

    #[tokio::test]
    async fn an_interrupt_reaches_the_runner_that_took_the_request() {
        let server = Echo::new(None, true);
        let (client, _inbox, _server) = pair(Arc::clone(&server)).await;
        client.send(vec![(message(3), false)]);
        server
            .until(|s| !s.offered.lock().unwrap().is_empty())
            .await;
        // Once the send's answer is in, the interrupt goes at once; before, with the answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.interrupt(&[3]);
        server
            .until(|s| !s.interrupted.lock().unwrap().is_empty())
            .await;
        assert_eq!(*server.interrupted.lock().unwrap(), vec![3]);
    }

    #[tokio::test]
    async fn a_request_routed_to_this_process_is_offered_here_without_the_network() {
        let here = Echo::new(None, true);
        let address = free_address().await;
        let me = endpoint("me", Some(&address), false, Some(address.clone()));
        let transport = start(me, &here, Duration::from_secs(10)).await;
        transport.send(vec![(message(8), false), (message(9), true)]);
        here.until(|h| h.offered.lock().unwrap().len() == 2).await;
        let offered = here.offered.lock().unwrap().clone();
        assert!(
            offered.iter().all(|m| !m.forwarded),
            "offered as local requests"
        );
        here.until(|h| !h.routed.lock().unwrap().is_empty()).await;
        assert_eq!(*here.routed.lock().unwrap(), vec![(9, None)]);
    }

    #[tokio::test]
    async fn an_unreachable_runner_is_tried_again_until_it_listens() {
        let address = free_address().await;
        let client_inbox = Echo::new(None, false);
        let client = start(
            endpoint("client", None, false, Some(address.clone())),
            &client_inbox,
            Duration::from_secs(10),
        )
        .await;
        client.send(vec![(message(7), false)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(client_inbox.replies.lock().unwrap().is_empty());
        // The runner comes up: the retried request reaches it.
        let server = Echo::new(None, false);
        let _listening = start(
            endpoint("server", Some(&address), true, None),
            &server,
            Duration::from_secs(10),
        )
        .await;
        client_inbox
            .until(|i| !i.replies.lock().unwrap().is_empty())
            .await;
        assert_eq!(
            *client_inbox.replies.lock().unwrap(),
            vec![(7, b"echo:7".to_vec())]
        );
    }

    fn persisted(id: i64) -> Message {
        Message {
            persisted: true,
            ..message(id)
        }
    }

    #[tokio::test]
    async fn a_persisted_request_arrives_persisted_and_its_reply_comes_back() {
        let server = Echo::new(None, false);
        let (client, inbox, _server) = pair(Arc::clone(&server)).await;
        client.send(vec![(persisted(11), false)]);
        inbox.until(|i| !i.replies.lock().unwrap().is_empty()).await;
        assert_eq!(
            *inbox.replies.lock().unwrap(),
            vec![(11, b"echo:11".to_vec())]
        );
        let offered = server.offered.lock().unwrap().clone();
        assert!(offered.iter().all(|m| m.persisted && m.forwarded));
    }

    #[tokio::test]
    async fn a_persisted_request_refused_as_not_assigned_is_left_to_storage_not_sent_again() {
        let moving = Refusal::NotAssigned {
            shard: "default:1".into(),
            entity_type: "Echo".into(),
            entity_id: "e12".into(),
        };
        let server = Echo::new(Some(moving), false);
        let (client, inbox, _server) = pair(Arc::clone(&server)).await;
        client.send(vec![(persisted(12), false)]);
        inbox.until(|i| !i.routed.lock().unwrap().is_empty()).await;
        let routed = inbox.routed.lock().unwrap().clone();
        assert!(
            matches!(routed.as_slice(), [(12, Some(Refusal::Unavailable { .. }))]),
            "{routed:?}"
        );
        // A volatile request would be sent again every 20 ms: this one went once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.offered.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_persisted_request_for_an_unreachable_runner_is_refused_at_once() {
        let address = free_address().await;
        let inbox = Echo::new(None, false);
        let client = start(
            endpoint("client", None, false, Some(address.clone())),
            &inbox,
            Duration::from_secs(10),
        )
        .await;
        client.send(vec![(persisted(13), false)]);
        // Well before the give-up time (10 s) of a volatile request.
        inbox.until(|i| !i.routed.lock().unwrap().is_empty()).await;
        assert_eq!(
            *inbox.routed.lock().unwrap(),
            vec![(
                13,
                Some(Refusal::Unavailable {
                    runner: Some(address),
                    after_ms: 10_000
                })
            )]
        );
    }

    #[tokio::test]
    async fn a_runner_unreachable_for_the_give_up_time_is_reported_unavailable() {
        let address = free_address().await;
        let inbox = Echo::new(None, false);
        let client = start(
            endpoint("client", None, false, Some(address.clone())),
            &inbox,
            Duration::from_millis(300),
        )
        .await;
        client.send(vec![(message(4), false)]);
        inbox.until(|i| !i.routed.lock().unwrap().is_empty()).await;
        assert_eq!(
            *inbox.routed.lock().unwrap(),
            vec![(
                4,
                Some(Refusal::Unavailable {
                    runner: Some(address),
                    after_ms: 300
                })
            )]
        );
    }

    #[test]
    fn big_batches_are_cut() {
        let sent = |size: usize| Sent {
            envelope: Envelope {
                request_id: 1,
                entity_type: String::new(),
                entity_id: String::new(),
                tag: String::new(),
                payload: vec![0; size],
                discard: false,
                persisted: false,
                saved_ms: None,
            },
            failing_since: None,
            unreachable: None,
            answered: false,
        };
        let batch = vec![
            sent(MAX_BODY / 4),
            sent(MAX_BODY / 4),
            sent(MAX_BODY / 4),
            sent(1),
        ];
        let cut = chunks(batch);
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 2]);
    }
}
