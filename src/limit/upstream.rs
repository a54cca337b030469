//! The upstream budget: Palette limits each source IP per resource prefix, and behind the
//! gateway every tool shares one IP. Each prefix gets a GCRA bucket; a request over budget waits
//! (by timer) in a bounded queue served round-robin across clients, up to `max_wait`; the waiting
//! requests serve each other (the first one keeps the schedule), so no task is spawned. A 429 that
//! Palette sends anyway halves that prefix's rate, which recovers step by step.
//!
//! The GCRA is written here rather than taken from `governor` because its rate must change at
//! run time (slow-down and recovery) without losing the bucket's state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cluster::{Admission, Cluster, LimitKey, LimitsAnswer};
use crate::config::{ClientId, Rate, UpstreamLimits, CATCH_ALL};
use crate::path::CheckedPath;

#[derive(Debug)]
enum Seg {
    Literal(String),
    Any,
}

/// A request over budget could not be served within `max_wait`, or the queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// When a retry could be served.
    pub retry_after: Duration,
}

/// Budget granted to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// How long it waited.
    pub waited: Duration,
    /// What Redis said about the request's shared client limits, asked in the same call as
    /// its budget slot: `None` when it had none, or when the slot was granted on the local
    /// share (then the limits are still to be taken there). When a limit refused, no slot
    /// was taken and the request must be refused.
    pub limits: Option<LimitsAnswer>,
}

/// Every prefix's bucket.
#[derive(Debug, Default)]
pub struct UpstreamBudget {
    /// Rules with their bucket, most specific first.
    rules: Vec<(Vec<Seg>, Arc<Bucket>)>,
    catch_all: Option<Arc<Bucket>>,
    max_wait: Duration,
}

impl UpstreamBudget {
    /// Builds the budget; buckets of `previous` with the same prefix and rate keep their state.
    pub fn build(limits: &UpstreamLimits, previous: Option<&UpstreamBudget>) -> Self {
        let reuse = |prefix: &str, rate: Rate| -> Arc<Bucket> {
            previous
                .and_then(|p| {
                    p.buckets()
                        .find(|b| &*b.label == prefix && b.base_rate == rate && b.max_queue == limits.max_queue)
                        .cloned()
                })
                .unwrap_or_else(|| Arc::new(Bucket::new(prefix, rate, limits.max_queue)))
        };
        let mut rules = Vec::new();
        let mut catch_all = None;
        for r in &limits.rules {
            if r.prefix == CATCH_ALL {
                catch_all = Some(reuse(CATCH_ALL, r.rate));
                continue;
            }
            let segs = r.prefix[1..]
                .split('/')
                .map(|s| if s.starts_with(':') { Seg::Any } else { Seg::Literal(s.to_string()) })
                .collect::<Vec<_>>();
            rules.push((segs, reuse(&r.prefix, r.rate)));
        }
        // Most specific first: more segments, then more literal segments.
        rules.sort_by_key(|(segs, _)| {
            std::cmp::Reverse((segs.len(), segs.iter().filter(|s| matches!(s, Seg::Literal(_))).count()))
        });
        UpstreamBudget { rules, catch_all, max_wait: limits.max_wait }
    }

    fn buckets(&self) -> impl Iterator<Item = &Arc<Bucket>> {
        self.rules.iter().map(|(_, b)| b).chain(self.catch_all.iter())
    }

    /// The bucket a request to `path` draws from; `None` when no budget applies.
    pub fn bucket_for(&self, path: &CheckedPath) -> Option<&Arc<Bucket>> {
        self.rules
            .iter()
            .find(|(segs, _)| {
                let mut path_segs = path.segments();
                // A prefix covers itself with or without a trailing '/' and what is below it;
                // `:name` is one real segment, never the empty one a trailing '/' leaves
                // (`/v1/spectroclusters/` is not under `/v1/spectroclusters/:uid`).
                segs.iter().all(|s| match (s, path_segs.next()) {
                    (Seg::Literal(l), Some(p)) => l == p,
                    (Seg::Any, Some(p)) => !p.is_empty(),
                    (_, None) => false,
                })
            })
            .map(|(_, b)| b)
            .or(self.catch_all.as_ref())
    }

    /// The bucket the gateway's own logins and refreshes draw from (`/v1/auth` in Palette's
    /// preset), if any rule covers them.
    pub fn auth_bucket(&self) -> Option<&Arc<Bucket>> {
        let login = crate::path::check("/v1/auth/authenticate").ok()?;
        self.bucket_for(&login)
    }

    /// The longest a request waits for budget.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Every prefix's budget as it stands now (the status page).
    pub fn status(&self) -> Vec<BucketStatus> {
        self.buckets().map(|b| b.status()).collect()
    }

    /// Shares every bucket through `cluster` (`[cluster]`), or through nothing: every caller of
    /// a bucket (requests, the gateway's own logins) then decides the same way.
    pub(crate) fn share_through(&self, cluster: Option<&Cluster>) {
        for b in self.buckets() {
            b.cluster.store(cluster.map(|c| Arc::new(c.clone())));
        }
    }
}

/// One prefix's budget as it stands now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BucketStatus {
    /// The prefix (its metric label).
    pub prefix: String,
    /// The configured rate, requests per second.
    pub per_second: f64,
    /// The configured burst.
    pub burst: u32,
    /// The rate now: lower than `per_second` for a while after Palette's 429s.
    pub current_per_second: f64,
    /// Requests waiting for budget now.
    pub queued: usize,
}

/// What the schedule keeper's shared step came to.
enum Lead {
    /// A waiter was answered (maybe the keeper itself): a slot granted, or refused by its own
    /// shared client limits.
    Granted,
    /// The local guard allows the next slot only then.
    NotBefore(Instant),
    /// Redis has no slot within the keeper's wait.
    Refused(Duration),
    /// Redis did not answer.
    Unavailable,
}

/// What a bucket divides its rate and burst by: 1 alone or while Redis answers, the local
/// share while it does not.
fn share_of(cluster: Option<&Cluster>) -> u32 {
    match cluster {
        Some(c) if !c.is_up() => c.local_share(),
        _ => 1,
    }
}

/// After a slow-down, the rate doubles back towards the configured one every this long.
const RECOVERY_STEP: Duration = Duration::from_secs(5);
/// A prefix is slowed to at most 1/64 of its configured rate.
const MAX_SLOWDOWN: u32 = 64;

/// One prefix's budget.
#[derive(Debug)]
pub struct Bucket {
    label: Arc<str>,
    base_rate: Rate,
    max_queue: usize,
    state: Mutex<State>,
    /// The budget shared with other replicas, if any (set by [`UpstreamBudget::share_through`]).
    cluster: ArcSwapOption<Cluster>,
}

#[derive(Debug)]
struct State {
    /// Current emission interval (the configured one, or longer after Palette's 429s).
    interval: Duration,
    /// GCRA theoretical arrival time.
    tat: Instant,
    /// Waiting requests per client, served round-robin.
    queues: VecDeque<(ClientId, VecDeque<Arc<Ticket>>)>,
    queued: usize,
    /// The waiter that keeps the schedule: it sleeps until the next slot and grants it (to
    /// whoever is next round-robin, maybe itself). Every other waiter just waits for its grant.
    leader: Option<u64>,
    next_ticket: u64,
    slowed_at: Option<Instant>,
    /// The local share this replica keeps to (1 unless Redis is configured and unavailable).
    share: u32,
}

/// One waiting request.
#[derive(Debug)]
struct Ticket {
    id: u64,
    /// Set (under the bucket's lock) when budget is granted to it.
    granted: AtomicBool,
    /// Woken when granted, or when made the leader.
    wake: Notify,
    /// The request's shared client limits, taken in Redis with its slot.
    keys: Vec<LimitKey>,
    /// Redis's answer about `keys`, set before `granted`.
    verdict: Mutex<Option<LimitsAnswer>>,
}

impl Ticket {
    fn acquired(&self, started: Instant) -> Acquired {
        let limits = self.verdict.lock().unwrap_or_else(|p| p.into_inner()).take();
        Acquired { waited: started.elapsed(), limits }
    }
}

impl Bucket {
    pub(crate) fn new(prefix: &str, rate: Rate, max_queue: usize) -> Self {
        Bucket {
            label: Arc::from(prefix),
            base_rate: rate,
            max_queue,
            state: Mutex::new(State {
                interval: interval_of(rate),
                tat: Instant::now(),
                queues: VecDeque::new(),
                queued: 0,
                leader: None,
                next_ticket: 0,
                slowed_at: None,
                share: 1,
            }),
            cluster: ArcSwapOption::empty(),
        }
    }

    /// The cluster this bucket shares its budget through, if any.
    pub(crate) fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.load_full()
    }

    /// The prefix (bounded: a metric label).
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent in a way that
        // matters more than refusing all traffic would; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot now if one is free and nobody waits, for a bucket shared with no cluster:
    /// [`Bucket::acquire`]'s path that never waits, without a future (issue 14). `false`: the
    /// caller waits with [`Bucket::acquire_with`], which decides again.
    pub fn try_acquire_now(&self) -> bool {
        if self.cluster.load().is_some() {
            return false;
        }
        let now = Instant::now();
        let mut st = self.lock();
        st.catch_up(self.base_rate, share_of(None), now);
        st.grant_at_once(self.base_rate, now)
    }

    /// Waits for budget for one request of `client`, at most `max_wait`. Returns how long it
    /// waited. No task is spawned: the waiting futures serve each other (see [`State::leader`]).
    /// Shared through the bucket's cluster, if it has one.
    pub async fn acquire(self: &Arc<Self>, client: ClientId, max_wait: Duration) -> Result<Duration, Busy> {
        self.acquire_with(client, max_wait, Vec::new()).await.map(|a| a.waited)
    }

    /// [`Bucket::acquire`] for a request with shared client limits still to take (`keys`):
    /// while Redis answers they are taken in the same call as the slot (see [`Acquired`]).
    pub async fn acquire_with(
        self: &Arc<Self>,
        client: ClientId,
        max_wait: Duration,
        keys: Vec<LimitKey>,
    ) -> Result<Acquired, Busy> {
        let cluster = self.cluster();
        self.acquire_in(cluster.as_deref(), client, max_wait, keys).await
    }

    /// [`Bucket::acquire`] with the budget shared through `cluster` (when configured): while
    /// Redis answers, the waiter keeping the schedule reserves each slot in Redis before it
    /// grants it, round-robin as ever; while it does not, the bucket runs on the local share
    /// (rate and burst divided by [`Cluster::local_share`]).
    pub async fn acquire_in(
        self: &Arc<Self>,
        cluster: Option<&Cluster>,
        client: ClientId,
        max_wait: Duration,
        keys: Vec<LimitKey>,
    ) -> Result<Acquired, Busy> {
        let started = Instant::now();
        let shared = cluster.is_some_and(Cluster::is_up);
        if let Some(c) = cluster.filter(|_| !shared) {
            c.local_decision("upstream");
        }
        let ticket = {
            let mut st = self.lock();
            st.catch_up(self.base_rate, share_of(cluster), started);
            // Shared: every request goes through the queue, so that Redis is asked in fair order.
            if !shared && st.grant_at_once(self.base_rate, started) {
                return Ok(Acquired { waited: Duration::ZERO, limits: None });
            }
            let estimate = st.estimate(self.base_rate, client, started);
            if st.queued >= self.max_queue || estimate > max_wait {
                return Err(Busy { retry_after: estimate });
            }
            let ticket = Arc::new(Ticket {
                id: st.next_ticket,
                granted: AtomicBool::new(false),
                wake: Notify::new(),
                keys,
                verdict: Mutex::new(None),
            });
            st.next_ticket = st.next_ticket.wrapping_add(1);
            match st.queues.iter_mut().find(|(c, _)| *c == client) {
                Some((_, q)) => q.push_back(ticket.clone()),
                None => st.queues.push_back((client, VecDeque::from([ticket.clone()]))),
            }
            st.queued += 1;
            if st.leader.is_none() {
                st.leader = Some(ticket.id);
            }
            ticket
        };
        // Leaves the queue (and hands the lead on) however this future ends: granted, timed
        // out, or dropped because the client went away.
        let _leave = Leave { bucket: self, ticket: &ticket };
        let deadline = started + max_wait;
        loop {
            let leading = self.lock().leader == Some(ticket.id);
            let mut next_slot = None;
            match cluster.filter(|c| leading && c.is_up()) {
                Some(c) => match self.lead_shared(c, deadline).await {
                    Lead::Granted => {
                        if ticket.granted.load(Ordering::Acquire) {
                            return Ok(ticket.acquired(started));
                        }
                        // Granted to another client's turn: go on keeping the schedule.
                        continue;
                    }
                    Lead::NotBefore(at) => next_slot = Some(at),
                    Lead::Refused(retry_after) => return Err(Busy { retry_after }),
                    // Redis just went away: the next round dispatches on the local share.
                    Lead::Unavailable => continue,
                },
                None if leading => {
                    let mut st = self.lock();
                    st.share = share_of(cluster);
                    next_slot = st.dispatch(self.base_rate, Instant::now());
                }
                None => {}
            }
            if ticket.granted.load(Ordering::Acquire) {
                return Ok(ticket.acquired(started));
            }
            let wake_at = next_slot.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                _ = ticket.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        let st = self.lock();
        if ticket.granted.load(Ordering::Acquire) {
            return Ok(ticket.acquired(started));
        }
        Err(Busy { retry_after: st.estimate(self.base_rate, client, Instant::now()) })
    }

    /// The schedule keeper's step while Redis answers: once the local guard (the full rate)
    /// allows, reserve the next slot in Redis for the next waiter round-robin, together with
    /// its shared client limits (one call), sleep until it, and grant it. A waiter whose own
    /// limits refused is answered with that and takes no slot. A reservation lost because its
    /// waiter went away meanwhile only slows the prefix down a little.
    async fn lead_shared(&self, cluster: &Cluster, deadline: Instant) -> Lead {
        let now = Instant::now();
        let (interval, tolerance, next, keys) = {
            let mut st = self.lock();
            st.catch_up(self.base_rate, 1, now);
            if let Some(at) = st.ready_at(self.base_rate, now) {
                return Lead::NotBefore(at);
            }
            let Some(next) = st.queues.front().and_then(|(_, q)| q.front()).map(|t| t.id) else {
                return Lead::Granted;
            };
            let keys = st.queues.front().and_then(|(_, q)| q.front()).map(|t| t.keys.clone()).unwrap_or_default();
            (st.interval, st.tolerance(self.base_rate), next, keys)
        };
        let left = deadline.saturating_duration_since(now);
        match cluster.admit(&self.label, interval, tolerance, left, &keys).await {
            (Admission::Granted(wait), verdict) => {
                // A timer, even of zero, costs a tick of tokio's millisecond wheel.
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let mut st = self.lock();
                if let Some(t) = st.remove(next) {
                    *t.verdict.lock().unwrap_or_else(|p| p.into_inner()) = verdict;
                    t.granted.store(true, Ordering::Release);
                    t.wake.notify_one();
                }
                st.take(Instant::now());
                Lead::Granted
            }
            (Admission::Denied(_), Some(verdict)) if verdict.refused.is_some() => {
                let mut st = self.lock();
                if let Some(t) = st.remove(next) {
                    *t.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
                    t.granted.store(true, Ordering::Release);
                    t.wake.notify_one();
                }
                Lead::Granted
            }
            (Admission::Denied(retry_after), _) => Lead::Refused(retry_after),
            (Admission::Unavailable, _) => Lead::Unavailable,
        }
    }

    /// Palette answered 429 for this prefix: halve its rate (recovering over time) and drop
    /// the burst credit, so the next request waits one slowed interval. Returns the new rate,
    /// for the log.
    pub fn throttled(&self) -> f64 {
        let mut st = self.lock();
        let now = Instant::now();
        let max = interval_of(self.base_rate) * MAX_SLOWDOWN;
        st.interval = (st.interval * 2).min(max);
        st.slowed_at = Some(now);
        // Palette just said "too many": whatever burst credit was left is not real. A slowed
        // bucket has no burst (see `tolerance`), so the next grant is one interval from now.
        st.tat = st.tat.max(now + st.interval);
        1.0 / st.interval.as_secs_f64()
    }

    /// Rate, slow-down and queue as they stand now.
    pub fn status(&self) -> BucketStatus {
        let mut st = self.lock();
        st.recover(self.base_rate, Instant::now());
        BucketStatus {
            prefix: self.label.to_string(),
            per_second: self.base_rate.per_second,
            burst: self.base_rate.burst,
            current_per_second: 1.0 / st.interval.as_secs_f64(),
            queued: st.queued,
        }
    }

    /// The current rate (after any slow-down).
    pub fn current_rate(&self) -> f64 {
        1.0 / self.lock().interval.as_secs_f64()
    }
}

fn interval_of(rate: Rate) -> Duration {
    Duration::from_secs_f64(1.0 / rate.per_second)
}

impl State {
    /// The GCRA burst window: the configured burst at the configured rate, and none at all
    /// while the prefix is slowed down (a window of `interval * (burst - 1)` would grow as the
    /// rate shrinks and let a burst through right after Palette's 429).
    fn tolerance(&self, rate: Rate) -> Duration {
        let base = interval_of(rate);
        if self.interval > base {
            Duration::ZERO
        } else {
            base * self.share * rate.burst.div_ceil(self.share).max(1).saturating_sub(1)
        }
    }

    /// The interval between grants: the current one, times the share.
    fn spacing(&self) -> Duration {
        self.interval * self.share
    }

    /// `None` when a request may go now, else when it may.
    fn ready_at(&self, rate: Rate, now: Instant) -> Option<Instant> {
        let earliest = self.tat.checked_sub(self.tolerance(rate)).unwrap_or(now);
        (earliest > now).then_some(earliest)
    }

    /// Brings the schedule to `now` before a decision: this replica's `share` of the budget,
    /// and the rate recovered since a 429 slowed it.
    fn catch_up(&mut self, rate: Rate, share: u32, now: Instant) {
        self.share = share;
        self.recover(rate, now);
    }

    /// Takes a slot at `now` if one is free and no request is queued for one.
    fn grant_at_once(&mut self, rate: Rate, now: Instant) -> bool {
        let free = self.queued == 0 && self.ready_at(rate, now).is_none();
        if free {
            self.take(now);
        }
        free
    }

    fn take(&mut self, now: Instant) {
        self.tat = self.tat.max(now) + self.spacing();
    }

    fn recover(&mut self, rate: Rate, now: Instant) {
        if let Some(at) = self.slowed_at {
            if now.duration_since(at) >= RECOVERY_STEP {
                let base = interval_of(rate);
                self.interval = (self.interval / 2).max(base);
                self.slowed_at = (self.interval > base).then_some(now);
            }
        }
    }

    /// How long a new request of `client` would wait: round-robin serves every other waiting
    /// client up to as many requests as `client` will have queued.
    fn estimate(&self, rate: Rate, client: ClientId, now: Instant) -> Duration {
        let own = self.queues.iter().find(|(c, _)| *c == client).map_or(0, |(_, q)| q.len()) + 1;
        let ahead: usize = self.queues.iter().filter(|(c, _)| *c != client).map(|(_, q)| q.len().min(own)).sum();
        let first = self.ready_at(rate, now).map_or(Duration::ZERO, |at| at - now);
        first + self.spacing() * u32::try_from(ahead + own - 1).unwrap_or(u32::MAX)
    }

    /// Takes the waiter `id` out of the queue, keeping the round-robin order: the next one
    /// round-robin (the usual case) as [`State::pop_next`] would; `None` if it left.
    fn remove(&mut self, id: u64) -> Option<Arc<Ticket>> {
        if self.queues.front().and_then(|(_, q)| q.front()).is_some_and(|t| t.id == id) {
            return self.pop_next();
        }
        let i = self.queues.iter().position(|(_, q)| q.iter().any(|t| t.id == id))?;
        let (_, q) = self.queues.get_mut(i)?;
        let at = q.iter().position(|t| t.id == id)?;
        let ticket = q.remove(at)?;
        self.queued -= 1;
        if q.is_empty() {
            self.queues.remove(i);
        }
        Some(ticket)
    }

    /// The next waiter, round-robin across clients.
    fn pop_next(&mut self) -> Option<Arc<Ticket>> {
        let (client, mut q) = self.queues.pop_front()?;
        let next = q.pop_front();
        if next.is_some() {
            self.queued -= 1;
        }
        if !q.is_empty() {
            self.queues.push_back((client, q));
        }
        next
    }

    /// The leader's job: grants every slot that is due, round-robin, and says when the next
    /// one is (`None` when nobody waits).
    fn dispatch(&mut self, rate: Rate, now: Instant) -> Option<Instant> {
        self.recover(rate, now);
        loop {
            if self.queued == 0 {
                return None;
            }
            if let Some(at) = self.ready_at(rate, now) {
                return Some(at);
            }
            let ticket = self.pop_next()?;
            ticket.granted.store(true, Ordering::Release);
            ticket.wake.notify_one();
            self.take(now);
        }
    }

    /// Takes `ticket` out of the queue if it is still in it (it gave up), and passes the lead
    /// on to the next waiter if it held it.
    fn leave(&mut self, ticket: &Ticket) {
        if !ticket.granted.load(Ordering::Acquire) {
            if let Some(i) = self.queues.iter().position(|(_, q)| q.iter().any(|t| t.id == ticket.id)) {
                if let Some((_, q)) = self.queues.get_mut(i) {
                    q.retain(|t| t.id != ticket.id);
                    self.queued -= 1;
                    if q.is_empty() {
                        self.queues.remove(i);
                    }
                }
            }
        }
        if self.leader == Some(ticket.id) {
            let next = self.queues.front().and_then(|(_, q)| q.front());
            self.leader = next.map(|t| t.id);
            if let Some(t) = next {
                t.wake.notify_one();
            }
        }
    }
}

/// Runs [`State::leave`] when a waiting [`Bucket::acquire`] ends, however it ends.
struct Leave<'a> {
    bucket: &'a Bucket,
    ticket: &'a Ticket,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.bucket.lock().leave(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{palette_preset, PrefixLimit};

    fn limits(rules: Vec<PrefixLimit>) -> UpstreamLimits {
        UpstreamLimits { rules, max_wait: Duration::from_secs(2), max_queue: 1000 }
    }

    fn label(b: &UpstreamBudget, path: &str) -> String {
        b.bucket_for(&crate::path::check(path).unwrap()).map(|b| b.label().to_string()).unwrap_or_default()
    }

    #[test]
    fn preset_buckets_match_palette_counting() {
        let b = UpstreamBudget::build(&limits(palette_preset()), None);
        assert_eq!(label(&b, "/v1/spectroclusters/abc"), "/v1/spectroclusters");
        assert_eq!(label(&b, "/v1/spectroclusters/abc/profiles"), "/v1/spectroclusters/:uid/profiles");
        assert_eq!(label(&b, "/v1/spectroclusters/abc/assets/kubeconfig"), "/v1/spectroclusters/:uid/assets");
        assert_eq!(label(&b, "/v1/spectroclusters/acquire"), "/v1/spectroclusters/acquire");
        assert_eq!(label(&b, "/v1/cloudconfigs/aws/x/machinePools"), "/v1/cloudconfigs");
        assert_eq!(label(&b, "/v1/events/components/x"), "/v1/events/components");
        assert_eq!(label(&b, "/v1/events"), "/v1/events");
        assert_eq!(label(&b, "/v1/packs"), "/v1/packs");
        assert_eq!(label(&b, "/v1/auth/user/password/reset"), "/v1/auth/user/password/reset");
        assert_eq!(label(&b, "/v1/whatever/x"), "*", "unknown resources share the catch-all");
        assert_eq!(label(&b, "/team-a"), "*");
        let rate = |p: &str| palette_preset().into_iter().find(|r| r.prefix == p).unwrap().rate.per_second;
        assert_eq!(rate("/v1/spectroclusters"), 50.0);
        assert_eq!(rate("/v1/spectroclusters/:uid/download"), 10.0);
        assert_eq!(rate("/v1/auth/user/password/reset"), 2.0);
        assert_eq!(rate("/v1/users"), 10.0);
    }

    #[test]
    fn budget_prefixes_see_the_trailing_slash() {
        let rule = |prefix: &str| PrefixLimit { prefix: prefix.into(), rate: Rate { per_second: 1.0, burst: 1 } };
        let b = UpstreamBudget::build(&limits(vec![rule("/v1/x"), rule("/v1/x/:id"), rule("*")]), None);
        assert_eq!(label(&b, "/v1/x"), "/v1/x");
        assert_eq!(label(&b, "/v1/x/"), "/v1/x", "a trailing '/' is not an :id segment");
        assert_eq!(label(&b, "/v1/x/a"), "/v1/x/:id");
        assert_eq!(label(&b, "/v1/x/a/"), "/v1/x/:id");
        assert_eq!(label(&b, "/v1/xy/"), "*");
        let b = UpstreamBudget::build(&limits(palette_preset()), None);
        assert_eq!(label(&b, "/v1/notifications/"), "/v1/notifications");
        assert_eq!(label(&b, "/v1/spectroclusters/"), "/v1/spectroclusters");
    }

    #[test]
    fn no_rules_no_budget() {
        let b = UpstreamBudget::build(&limits(vec![]), None);
        assert!(b.bucket_for(&crate::path::check("/v1/x").unwrap()).is_none());
    }

    fn bucket(per_second: f64, burst: u32, max_queue: usize) -> Arc<Bucket> {
        Arc::new(Bucket::new("/t", Rate { per_second, burst }, max_queue))
    }

    #[tokio::test(start_paused = true)]
    async fn burst_passes_then_requests_are_paced() {
        let b = bucket(10.0, 3, 100);
        for _ in 0..3 {
            assert_eq!(b.acquire(ClientId(0), Duration::from_secs(2)).await, Ok(Duration::ZERO));
        }
        let waited = b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        assert!(waited >= Duration::from_millis(99) && waited <= Duration::from_millis(101), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn over_max_wait_is_refused_with_retry_after() {
        let b = bucket(1.0, 1, 100);
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        // The next slot is a second away, the one after two seconds.
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { b.acquire(ClientId(0), Duration::from_millis(1500)).await }));
        }
        let results: Vec<_> = futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(results.iter().filter_map(|r| r.err()).all(|busy| busy.retry_after >= Duration::from_secs(1)));
    }

    /// The burst is taken at once without a future; then nothing until a slot is due, and never
    /// past a request already queued for one.
    #[tokio::test(start_paused = true)]
    async fn a_free_slot_is_taken_at_once_and_only_then() {
        let b = bucket(10.0, 2, 100);
        assert!(b.try_acquire_now() && b.try_acquire_now());
        assert!(!b.try_acquire_now(), "the burst is spent");
        // A waiter queued for the next slot keeps its place against the path without a future.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(ClientId(1), Duration::from_secs(2)).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!b.try_acquire_now(), "a queued request goes first");
        assert_eq!(waiter.await.unwrap(), Ok(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.try_acquire_now());
        assert!(!b.try_acquire_now());
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_refuses_at_once() {
        let b = bucket(1.0, 1, 2);
        b.acquire(ClientId(0), Duration::from_secs(10)).await.unwrap();
        let w1 = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(ClientId(0), Duration::from_secs(10)).await }
        });
        let w2 = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(ClientId(1), Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(b.acquire(ClientId(2), Duration::from_secs(10)).await.is_err());
        assert!(w1.await.unwrap().is_ok() && w2.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_is_fair_across_clients() {
        let b = bucket(10.0, 1, 1000);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Client 0 floods first; clients 1 and 2 arrive after it.
        for (client, n) in [(0usize, 20), (1, 5), (2, 5)] {
            for _ in 0..n {
                let (b, order) = (b.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    if b.acquire(ClientId(client), Duration::from_secs(60)).await.is_ok() {
                        order.lock().unwrap().push(client);
                    }
                }));
                tokio::task::yield_now().await;
            }
        }
        futures_util::future::join_all(tasks).await;
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 30);
        // Within the first 15 grants, the late clients got their 10.
        let early = &order[..16];
        assert!(early.iter().filter(|&&c| c != 0).count() >= 9, "{order:?}");
    }

    /// Waiters are served by their own futures: no task is spawned, even with a queue.
    #[tokio::test(start_paused = true)]
    async fn waiting_spawns_no_task() {
        let b = bucket(10.0, 1, 100);
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        let waiters = futures_util::future::join_all((0..3).map(|c| b.acquire(ClientId(c), Duration::from_secs(2))));
        tokio::pin!(waiters);
        assert!(futures_util::FutureExt::now_or_never(waiters.as_mut()).is_none());
        assert_eq!(tokio::runtime::Handle::current().metrics().num_alive_tasks(), 0);
        let results = waiters.await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    /// The waiter keeping the schedule goes away (its client hung up): the next one takes over
    /// and everyone left is still served, in order.
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_gives_up_hands_the_schedule_on() {
        let b = bucket(10.0, 1, 100);
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        let leader = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(ClientId(0), Duration::from_secs(2)).await }
        });
        tokio::task::yield_now().await;
        let others: Vec<_> = (1..4)
            .map(|c| {
                let b = b.clone();
                tokio::spawn(async move { b.acquire(ClientId(c), Duration::from_secs(2)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        leader.abort();
        for o in others {
            let waited = o.await.unwrap().expect("served after the leader left");
            assert!(waited <= Duration::from_millis(301), "{waited:?}");
        }
        assert_eq!(b.lock().queued, 0);
        assert_eq!(b.lock().leader, None);
    }

    /// A waiter that times out leaves the queue at once (it no longer counts against
    /// `max_queue`).
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_times_out_leaves_the_queue() {
        let b = bucket(1.0, 1, 1);
        b.acquire(ClientId(0), Duration::from_secs(10)).await.unwrap();
        assert!(b.acquire(ClientId(0), Duration::from_millis(1100)).await.is_ok());
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), b.acquire(ClientId(1), Duration::from_secs(10))).await;
        assert!(gave_up.is_err());
        assert_eq!(b.lock().queued, 0);
        assert!(
            b.acquire(ClientId(2), Duration::from_secs(10)).await.is_ok(),
            "the queue still had the one that gave up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_halves_rate_and_recovers() {
        let b = bucket(10.0, 1, 100);
        assert_eq!(b.throttled(), 5.0);
        assert_eq!(b.throttled(), 2.5);
        tokio::time::advance(RECOVERY_STEP).await;
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        assert_eq!(b.current_rate(), 5.0);
        tokio::time::advance(RECOVERY_STEP).await;
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        assert_eq!(b.current_rate(), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_the_next_grant_waits_the_slowed_interval() {
        let b = bucket(10.0, 5, 100);
        // A full burst is available; Palette answers 429 anyway.
        assert_eq!(b.acquire(ClientId(0), Duration::from_secs(2)).await, Ok(Duration::ZERO));
        b.throttled();
        // The 4 requests of burst credit left are gone: the next waits one slowed interval
        // (5/s: 200 ms), and so does each one after it (no burst while slowed).
        for _ in 0..3 {
            let waited = b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
            assert!(waited >= Duration::from_millis(199) && waited <= Duration::from_millis(201), "{waited:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slowing_down_never_widens_the_burst() {
        let b = bucket(10.0, 5, 100);
        for _ in 0..3 {
            b.throttled();
        }
        // 1.25/s now. An idle while (shorter than the recovery step) must not buy a burst of
        // 5 slowed intervals (4 s of Palette's budget in a moment).
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.acquire(ClientId(0), Duration::from_secs(10)).await, Ok(Duration::ZERO));
        let waited = b.acquire(ClientId(0), Duration::from_secs(10)).await.unwrap();
        assert!(waited >= Duration::from_millis(799), "a burst went through while slowed: {waited:?}");
        let st = b.lock();
        assert_eq!(st.tolerance(b.base_rate), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_comes_back_with_the_configured_rate() {
        let b = bucket(10.0, 5, 100);
        b.throttled();
        tokio::time::advance(RECOVERY_STEP).await;
        b.acquire(ClientId(0), Duration::from_secs(2)).await.unwrap();
        assert_eq!(b.current_rate(), 10.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            assert_eq!(b.acquire(ClientId(0), Duration::from_secs(2)).await, Ok(Duration::ZERO));
        }
    }

    #[test]
    fn rebuild_keeps_bucket_state() {
        let l = limits(vec![PrefixLimit { prefix: "/v1/x".into(), rate: Rate { per_second: 1.0, burst: 1 } }]);
        let a = UpstreamBudget::build(&l, None);
        let b = UpstreamBudget::build(&l, Some(&a));
        let p = crate::path::check("/v1/x").unwrap();
        assert!(Arc::ptr_eq(a.bucket_for(&p).unwrap(), b.bucket_for(&p).unwrap()));
    }
}
