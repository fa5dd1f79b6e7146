//! Runner-to-runner messages (Effect's `Runners` over its RPC protocol): volatile requests go to
//! the runner that owns their entity, their replies come back, and so do interrupts.
//!
//! HTTP/2 in clear text with prior knowledge, served by axum and sent by reqwest; bodies are
//! `MessagePack` (serde). Three routes:
//!
//! - `POST /plait/v1/send`: a batch of requests (offered to the mailboxes here, one answer
//!   each: taken, or the mailbox's refusal) and of interrupts of requests sent before.
//! - `POST /plait/v1/replies`: a long poll for the replies of the requests a caller sent here.
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
//! request taken by a runner that then stops answering is sent again to the shard's next
//! owner: volatile requests are delivered at least once across runner failures, as in Effect.

use std::{
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
use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::cluster::mailbox::{Address, Message, Refusal};

/// Largest request body the server reads, and so the largest batch a sender makes.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// A long poll is answered after this at the latest, empty if nothing came.
const POLL_HOLD: Duration = Duration::from_secs(10);
/// A caller that has not polled for this long is gone: its unread replies are dropped.
const CALLER_GONE: Duration = Duration::from_mins(2);
/// Polls that fail in a row before the runner counts as unavailable.
const POLL_FAILURES: u32 = 3;
/// Interrupts are sent this many times at most (Effect: 3 retries).
const INTERRUPT_TRIES: u32 = 4;
const MSGPACK: &str = "application/msgpack";

/// What the transport tells the process's work source.
pub trait Inbox: Send + Sync {
    /// Requests from another process, for entities here: one answer each.
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
    Client(String),
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
}

#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    /// The final reply (an encoded exit).
    Exit(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The entity's shard moved away before it ran to the end: send it again.
    Moved,
}

#[derive(Debug, Serialize, Deserialize)]
struct Replies {
    replies: Vec<(i64, Outcome)>,
}

/// A request being sent: its envelope, and whether its caller waits for a reply.
#[derive(Clone, Debug)]
struct Sent {
    envelope: Envelope,
    discard: bool,
    /// When it first could not be delivered (no owner, refused as not assigned, its runner
    /// unreachable), and the last runner that could not be reached.
    failing_since: Option<Instant>,
    unreachable: Option<String>,
}

impl Sent {
    /// It could not be delivered this time (`runner`: because that runner is unreachable).
    fn failed(&mut self, runner: Option<&str>) {
        self.failing_since.get_or_insert_with(Instant::now);
        if let Some(runner) = runner {
            self.unreachable = Some(runner.to_owned());
        }
    }
}

/// The sending side: requests to route, those taken and awaiting a reply, by runner.
#[derive(Default)]
struct Outbound {
    /// To route and send at the next round.
    unsent: Vec<Sent>,
    /// To try again after `send_retry`.
    retry: Vec<Sent>,
    /// Taken by a runner, waiting for its reply there: by runner address, by request id.
    awaiting: FxHashMap<String, FxHashMap<i64, Sent>>,
    /// Runners with a long poll running.
    polling: Vec<String>,
}

/// The serving side: replies for callers elsewhere, and the requests they sent here.
#[derive(Default)]
struct Inbound {
    callers: FxHashMap<String, Caller>,
    /// Requests from other processes in the mailboxes here: their caller and entity.
    origins: FxHashMap<i64, (String, Address)>,
}

struct Caller {
    replies: Vec<(i64, Outcome)>,
    wake: Arc<Notify>,
    seen: Instant,
}

impl Caller {
    fn new() -> Self {
        Self {
            replies: Vec::new(),
            wake: Arc::new(Notify::new()),
            seen: Instant::now(),
        }
    }
}

struct Shared {
    /// This process among the callers of other runners.
    me: String,
    client: reqwest::Client,
    route: Route,
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
}

/// A process's end of the runners' messages. See the [module documentation](self).
pub struct Transport {
    shared: Arc<Shared>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.shared.me)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Starts the transport of process `me`: its sender, and (with `listen`) its server.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`TransportError`] when the address cannot be bound or the client made.
    pub async fn start(
        me: String,
        listen: Option<&str>,
        route: Route,
        inbox: Arc<dyn Inbox>,
        send_retry: Duration,
        give_up: Duration,
    ) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| TransportError::Client(err.to_string()))?;
        let listener = match listen {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(
                |source| TransportError::Listen {
                    address: address.to_owned(),
                    source,
                },
            )?),
            None => None,
        };
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            me,
            client,
            route,
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

    /// Sends volatile requests to the runners of their entities (`discard`: the caller waits
    /// only until a mailbox took it). Their replies and refusals come through the [`Inbox`].
    pub fn send(&self, messages: Vec<(Message, bool)>) {
        let mut refused = Vec::new();
        {
            let mut outbound = self.shared.outbound();
            for (message, discard) in messages {
                let size = message.payload.len();
                if size > MAX_BODY / 2 {
                    refused.push((
                        message.request_id,
                        Some(Refusal::TooLarge {
                            size,
                            limit: MAX_BODY / 2,
                        }),
                    ));
                    continue;
                }
                outbound.unsent.push(Sent {
                    envelope: Envelope {
                        request_id: message.request_id,
                        entity_type: message.address.entity_type,
                        entity_id: message.address.entity_id,
                        tag: message.tag,
                        payload: message.payload,
                    },
                    discard,
                    failing_since: None,
                    unreachable: None,
                });
            }
        }
        if !refused.is_empty() {
            self.shared.inbox.routed(refused);
        }
        self.shared.wake.notify_one();
    }

    /// The callers of these requests gave up: they are not sent any more, and the runners
    /// that took them are told.
    pub fn interrupt(&self, ids: &[i64]) {
        let mut told: FxHashMap<String, Vec<i64>> = FxHashMap::default();
        {
            let mut outbound = self.shared.outbound();
            for id in ids {
                outbound.unsent.retain(|s| s.envelope.request_id != *id);
                outbound.retry.retain(|s| s.envelope.request_id != *id);
                for (runner, awaiting) in &mut outbound.awaiting {
                    if awaiting.remove(id).is_some() {
                        told.entry(runner.clone()).or_default().push(*id);
                    }
                }
            }
        }
        for (runner, ids) in told {
            let shared = Arc::clone(&self.shared);
            self.shared.runtime.spawn(async move {
                let batch = SendBatch {
                    from: shared.me.clone(),
                    requests: Vec::new(),
                    interrupts: ids,
                };
                for _ in 0..INTERRUPT_TRIES {
                    if call::<_, SendAnswers>(&shared, &runner, "send", &batch)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(shared.send_retry).await;
                }
            });
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
                continue;
            };
            let caller = inbound.callers.entry(from).or_insert_with(Caller::new);
            caller.replies.push((id, outcome));
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

    /// Requests of other processes in the mailboxes here.
    pub fn serving(&self) -> usize {
        self.shared.inbound().origins.len()
    }

    /// Stops serving and sending.
    pub fn close(&self) {
        self.shared.stop.send_replace(true);
        self.shared.wake.notify_one();
        for caller in self.shared.inbound().callers.values() {
            caller.wake.notify_one();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sends what is unsent, a batch per runner, until the transport closes.
async fn send_loop(shared: Arc<Shared>) {
    let mut stopped = shared.stop.subscribe();
    let mut next_retry: Option<Instant> = None;
    loop {
        if shared.stopped() {
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
        for sent in unsent {
            match (shared.route)(&sent.envelope.entity_id) {
                Some(runner) => by_runner.entry(runner).or_default().push(sent),
                None => unrouted.push(sent),
            }
        }
        if !unrouted.is_empty() {
            retry(&shared, unrouted, None);
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

/// Batches of at most about [`MAX_BODY`] / 2 bytes of payload.
fn chunks(batch: Vec<Sent>) -> Vec<Vec<Sent>> {
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for sent in batch {
        let length = sent.envelope.payload.len() + 128;
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
        from: shared.me.clone(),
        requests: batch.iter().map(|s| s.envelope.clone()).collect(),
        interrupts: Vec::new(),
    };
    let answers = match call::<_, SendAnswers>(&shared, &runner, "send", &body).await {
        Ok(answers) if answers.answers.len() == batch.len() => answers.answers,
        Ok(_) | Err(_) => {
            // Unavailable (Effect's RunnerUnavailable): routed again after `send_retry`.
            log::debug!(target: "plait.cluster", "runner {runner} unavailable for {} requests", batch.len());
            retry(&shared, batch, Some(&runner));
            return;
        }
    };
    let mut routed = Vec::new();
    let mut again = Vec::new();
    let mut poll = false;
    {
        let mut outbound = shared.outbound();
        for (sent, answer) in batch.into_iter().zip(answers) {
            match answer {
                None if sent.discard => routed.push((sent.envelope.request_id, None)),
                None => {
                    outbound
                        .awaiting
                        .entry(runner.clone())
                        .or_default()
                        .insert(sent.envelope.request_id, sent);
                    poll = true;
                }
                Some(Refusal::NotAssigned { .. }) => again.push(sent),
                Some(refusal) => routed.push((sent.envelope.request_id, Some(refusal))),
            }
        }
        poll &= !outbound.polling.contains(&runner);
        if poll {
            outbound.polling.push(runner.clone());
        }
    }
    if !again.is_empty() {
        retry(&shared, again, None);
    }
    if !routed.is_empty() {
        shared.inbox.routed(routed);
    }
    if poll {
        tokio::spawn(poll_replies(shared, runner));
    }
}

/// Requests to route and send again after `send_retry`; those failing for longer than
/// `give_up` are refused instead: `Unavailable` (with the runner last unreachable, if any).
fn retry(shared: &Shared, sent: Vec<Sent>, unreachable: Option<&str>) {
    let mut given_up = Vec::new();
    {
        let mut outbound = shared.outbound();
        for mut each in sent {
            each.failed(unreachable);
            if each
                .failing_since
                .is_some_and(|t| t.elapsed() >= shared.give_up)
            {
                given_up.push((
                    each.envelope.request_id,
                    Some(Refusal::Unavailable {
                        runner: each.unreachable,
                        after_ms: u64::try_from(shared.give_up.as_millis()).unwrap_or(u64::MAX),
                    }),
                ));
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
                outbound.awaiting.remove(&runner);
                outbound.polling.retain(|r| *r != runner);
                return;
            }
        }
        let poll = Poll {
            from: shared.me.clone(),
        };
        match call::<_, Replies>(&shared, &runner, "replies", &poll).await {
            Ok(replies) => {
                failures = 0;
                let mut values = Vec::new();
                let mut again = Vec::new();
                {
                    let mut outbound = shared.outbound();
                    let awaiting = outbound.awaiting.entry(runner.clone()).or_default();
                    for (id, outcome) in replies.replies {
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
                if failures >= POLL_FAILURES {
                    // The runner is gone: its requests go to the shards' next owners.
                    log::info!(target: "plait.cluster", "runner {runner} unavailable ({err}): its requests are sent again");
                    let lost: Vec<Sent> = {
                        let mut outbound = shared.outbound();
                        outbound.polling.retain(|r| *r != runner);
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
) -> Result<R, String> {
    let body = rmp_serde::to_vec_named(body).map_err(|err| err.to_string())?;
    let response = shared
        .client
        .post(format!("http://{runner}/plait/v1/{route}"))
        .header(header::CONTENT_TYPE, MSGPACK)
        .timeout(POLL_HOLD + Duration::from_secs(20))
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
    let addresses: Vec<(i64, Address)> = batch
        .requests
        .iter()
        .map(|e| {
            (
                e.request_id,
                Address {
                    entity_type: e.entity_type.clone(),
                    entity_id: e.entity_id.clone(),
                },
            )
        })
        .collect();
    {
        // Recorded first: a reply may come before the answer below is made.
        let mut inbound = shared.inbound();
        for (id, address) in &addresses {
            inbound
                .origins
                .insert(*id, (batch.from.clone(), address.clone()));
        }
        inbound
            .callers
            .entry(batch.from.clone())
            .or_insert_with(Caller::new)
            .seen = Instant::now();
    }
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
            persisted: false,
            forwarded: true,
        })
        .collect();
    let answers: Vec<Option<Refusal>> = shared
        .inbox
        .offer_remote(messages)
        .into_iter()
        .map(Result::err)
        .collect();
    {
        let mut inbound = shared.inbound();
        for ((id, _), answer) in addresses.iter().zip(&answers) {
            if answer.is_some() {
                inbound.origins.remove(id);
            }
        }
    }
    msgpack(&SendAnswers { answers })
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
            if !caller.replies.is_empty() || shared.stopped() || now >= deadline {
                let replies = std::mem::take(&mut caller.replies);
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

    /// A work source stand-in that runs every request at once: it answers `echo:<payload>`.
    struct Echo {
        transport: Mutex<Option<Arc<Transport>>>,
        replies: Mutex<Vec<(i64, Vec<u8>)>>,
        routed: Mutex<Vec<(i64, Option<Refusal>)>>,
        got: Notify,
        refuse: Option<Refusal>,
    }

    impl Echo {
        fn new(refuse: Option<Refusal>) -> Arc<Self> {
            Arc::new(Self {
                transport: Mutex::new(None),
                replies: Mutex::new(Vec::new()),
                routed: Mutex::new(Vec::new()),
                got: Notify::new(),
                refuse,
            })
        }
    }

    impl Inbox for Echo {
        fn offer_remote(&self, messages: Vec<Message>) -> Vec<Result<(), Refusal>> {
            if let Some(refusal) = &self.refuse {
                return messages.iter().map(|_| Err(refusal.clone())).collect();
            }
            let transport = self.transport.lock().unwrap().clone().unwrap();
            let replies: Vec<(i64, Vec<u8>)> = messages
                .iter()
                .map(|m| (m.request_id, [b"echo:".as_slice(), &m.payload].concat()))
                .collect();
            let answers = messages.iter().map(|_| Ok(())).collect();
            tokio::spawn(async move { transport.reply(replies) });
            answers
        }
        fn interrupt_remote(&self, _requests: Vec<(i64, Address)>) {}
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
        }
    }

    async fn pair(refuse: Option<Refusal>) -> (Arc<Transport>, Arc<Echo>, Arc<Transport>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let server_inbox = Echo::new(refuse);
        let route: Route = Arc::new(|_: &str| None);
        let server = Arc::new(
            Transport::start(
                "server".into(),
                Some(&address),
                route,
                server_inbox.clone(),
                Duration::from_millis(20),
                Duration::from_secs(10),
            )
            .await
            .unwrap(),
        );
        *server_inbox.transport.lock().unwrap() = Some(Arc::clone(&server));
        let client_inbox = Echo::new(None);
        let to = address.clone();
        let route: Route = Arc::new(move |_: &str| Some(to.clone()));
        let client = Arc::new(
            Transport::start(
                "client".into(),
                None,
                route,
                client_inbox.clone(),
                Duration::from_millis(20),
                Duration::from_secs(10),
            )
            .await
            .unwrap(),
        );
        (client, client_inbox, server)
    }

    #[tokio::test]
    async fn requests_cross_and_their_replies_come_back() {
        let (client, inbox, _server) = pair(None).await;
        client.send((1..=200).map(|id| (message(id), false)).collect());
        tokio::time::timeout(Duration::from_secs(10), async {
            while inbox.replies.lock().unwrap().len() < 200 {
                inbox.got.notified().await;
            }
        })
        .await
        .unwrap();
        let mut replies = inbox.replies.lock().unwrap().clone();
        replies.sort();
        assert_eq!(replies[0], (1, b"echo:1".to_vec()));
        assert_eq!(replies[199], (200, b"echo:200".to_vec()));
    }

    #[tokio::test]
    async fn a_refusal_other_than_not_assigned_reaches_the_sender() {
        let full = Refusal::MailboxFull {
            entity_type: "Echo".into(),
            entity_id: "e1".into(),
        };
        let (client, inbox, _server) = pair(Some(full.clone())).await;
        client.send(vec![(message(1), false)]);
        tokio::time::timeout(Duration::from_secs(10), async {
            while inbox.routed.lock().unwrap().is_empty() {
                inbox.got.notified().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(*inbox.routed.lock().unwrap(), vec![(1, Some(full))]);
    }

    #[tokio::test]
    async fn an_unreachable_runner_is_tried_again_until_it_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let client_inbox = Echo::new(None);
        let to = address.clone();
        let route: Route = Arc::new(move |_: &str| Some(to.clone()));
        let client = Transport::start(
            "client".into(),
            None,
            route,
            client_inbox.clone(),
            Duration::from_millis(20),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        client.send(vec![(message(7), false)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(client_inbox.replies.lock().unwrap().is_empty());
        // The runner comes up: the retried request reaches it.
        let server_inbox = Echo::new(None);
        let route: Route = Arc::new(|_: &str| None);
        let server = Arc::new(
            Transport::start(
                "server".into(),
                Some(&address),
                route,
                server_inbox.clone(),
                Duration::from_millis(20),
                Duration::from_secs(10),
            )
            .await
            .unwrap(),
        );
        *server_inbox.transport.lock().unwrap() = Some(server);
        tokio::time::timeout(Duration::from_secs(10), async {
            while client_inbox.replies.lock().unwrap().is_empty() {
                client_inbox.got.notified().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            *client_inbox.replies.lock().unwrap(),
            vec![(7, b"echo:7".to_vec())]
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
            },
            discard: false,
            failing_since: None,
            unreachable: None,
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
