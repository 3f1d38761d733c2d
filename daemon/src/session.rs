//! Cross-connection MCP conversation state.
//!
//! Most correlation is local to one POST (its response body or SSE stream answers the
//! requests it carried). Two things span connections and live here:
//! - legacy HTTP+SSE (2024-11-05): the client POSTs to the URI announced in the GET
//!   stream's `endpoint` event and the responses come back on that GET stream;
//! - server-to-client requests (sampling, elicitation, roots) sent on an SSE stream and
//!   answered by the client in a later POST.
//!
//! Plus the protocol version negotiated per session, the fate of each request id
//! (forwarded or refused by mcpwatch: a server answering an id it never got, or one
//! the client never sent, is dropped), and which process opened each session (a
//! session id presented by another process is refused). Every map is bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mcpwatch_api::{AuditRecord, ProcessInfo};
use mcpwatch_mcp::IdKey;

use crate::tally::Tally;

/// Which side sent a parked request. Client and server number their requests each on
/// their own (both start at 1), so their pending ids are kept apart: a server's
/// `sampling/createMessage` id 1 waiting for the client is not the client's `tools/call`
/// id 1 waiting for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Client,
    Server,
}

impl Asker {
    fn key(self, id: &IdKey) -> String {
        let side = match self {
            Asker::Client => 'c',
            Asker::Server => 's',
        };
        format!("{side} {id}")
    }
}

/// A map that forgets its oldest insertions beyond a capacity.
///
/// Each insertion carries a generation, and the eviction order names (key, generation):
/// a key removed and inserted again is not evicted by its old place in the order (which
/// would let whoever controls the keys choose to push out the newest entry instead of the
/// oldest). Callers whose entries are security state that must not be pushed out (pending
/// calls whose ids are checked for reuse) refuse a new entry when [`BoundedMap::is_full`]
/// instead of inserting.
pub struct BoundedMap<K, V> {
    map: HashMap<K, (u64, V)>,
    order: VecDeque<(K, u64)>,
    capacity: usize,
    next: u64,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedMap { map: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1), next: 0 }
    }

    /// Insert; returns values evicted to make room, and the value `k` held before (it is
    /// replaced, not lost: the caller closes what it stood for).
    pub fn insert(&mut self, k: K, v: V) -> Vec<V> {
        self.insert_entries(k, v).into_iter().map(|(_, v)| v).collect()
    }

    /// [`BoundedMap::insert`], returning the keys with the values.
    pub fn insert_entries(&mut self, k: K, v: V) -> Vec<(K, V)> {
        let mut evicted = Vec::new();
        let generation = self.next;
        self.next += 1;
        if let Some((_, old)) = self.map.insert(k.clone(), (generation, v)) {
            evicted.push((k.clone(), old));
        }
        self.order.push_back((k, generation));
        while self.map.len() > self.capacity {
            let Some((old, g)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|(at, _)| *at == g) {
                evicted.extend(self.map.remove(&old).map(|(_, v)| (old, v)));
            }
        }
        // Keep `order` from growing with keys already removed or inserted again.
        if self.order.len() > self.capacity * 2 {
            let map = &self.map;
            self.order.retain(|(k, g)| map.get(k).is_some_and(|(at, _)| at == g));
        }
        evicted
    }

    /// Would an insertion of a new key push another entry out?
    pub fn is_full(&self) -> bool {
        self.map.len() >= self.capacity
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Looked up by any borrowed form of the key (`&str` for `String` keys: no allocation).
    pub fn get<Q: Eq + Hash + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.get(k).map(|(_, v)| v)
    }

    pub fn get_mut<Q: Eq + Hash + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.get_mut(k).map(|(_, v)| v)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove and return every value whose key satisfies `f`.
    pub fn drain_where(&mut self, mut f: impl FnMut(&K) -> bool) -> Vec<V> {
        let keys: Vec<K> = self.map.keys().filter(|k| f(k)).cloned().collect();
        keys.iter().filter_map(|k| self.map.remove(k)).map(|(_, v)| v).collect()
    }
}

/// A message awaiting its response, with its open audit record.
#[derive(Debug, Clone)]
pub struct Pending {
    pub record: AuditRecord,
    pub started: Instant,
    /// `tools/list` without a cursor: the result replaces the tool list.
    pub first_page: bool,
}

/// What a message waiting for its answer within one exchange is keyed by.
#[derive(Debug, Clone)]
pub enum PendingKey {
    /// A request, by the key of its JSON-RPC id (`Id::key`), with its in-flight mark in a
    /// session (see [`Sessions::fly`]) when it has one: the mark goes when the key does
    /// (the answer came, or the exchange ended).
    Id(IdKey, Option<Arc<Flight>>),
    /// A notification (answered by the HTTP status alone), by its record id.
    Notification(String),
    /// A message mcpwatch could not parse, by its record id: an error with a null id answers it.
    Invalid(String),
}

/// A client request of a Streamable HTTP session that the server has and has not answered:
/// while one lives its id is in flight ([`Sessions::in_flight`]), whatever became of the
/// bounded id fates since. A reuse of an id in flight is what the TypeScript SDK re-points
/// to the newer stream, so the first call's answer would be judged as the second's; that
/// must hold however many other ids the host sent meanwhile.
pub struct Flight {
    marks: Arc<Mutex<HashMap<u64, u32>>>,
    key: u64,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flight")
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Ok(mut m) = self.marks.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Where a legacy client's POSTs belong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRoute {
    /// Inventory endpoint of the server (the SSE URL).
    pub endpoint: String,
    /// Correlation key shared by the POSTs and the GET stream.
    pub conversation: String,
    pub session_id: Option<String>,
}

pub struct Sessions {
    inner: Mutex<Inner>,
    owners: Mutex<Owners>,
    /// Keys the `ids` table: a per-process random SipHash key, so the peer whose ids these
    /// are cannot choose two that share a slot.
    id_hasher: std::hash::RandomState,
    /// Client ids in flight (keyed like `ids`) → how many live [`Flight`]s hold them. Not
    /// bounded by eviction: an entry lives exactly as long as a waiting call of a live
    /// exchange, and those are bounded by the connection and body limits.
    flights: Arc<Mutex<HashMap<u64, u32>>>,
    /// In-flight marks of calls whose exchange ended unanswered (the client went away, or
    /// the server ended the stream): the server may still be working on them and answer on
    /// another stream, so their ids stay in use for [`ORPHAN_TTL`]. Oldest first; at most
    /// [`MAX_ORPHANS`].
    orphans: Mutex<VecDeque<(Instant, Arc<Flight>)>>,
}

/// How long the id of a call left unanswered stays in use.
pub const ORPHAN_TTL: std::time::Duration = std::time::Duration::from_secs(600);
const MAX_ORPHANS: usize = 65_536;

/// What became of a client request id in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFate {
    Forwarded,
    /// mcpwatch answered it; the server never saw it.
    Refused,
}

/// The process that opened an MCP session: thread-group id plus its start time (so a
/// recycled pid is another process) and uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub tgid: u32,
    /// Clock ticks after boot (`/proc/<pid>/stat` field 22); `None` if unreadable.
    pub start_time: Option<u64>,
    pub uid: u32,
}

impl Owner {
    /// Does the process still run (the same one: a recycled pid has another start time)?
    /// An unknown start time cannot be told from a recycled pid: taken as alive. A zombie
    /// (exited, not yet reaped) is dead: otherwise a parent that never reaps could keep
    /// thousands of exited processes' bindings from the sweep and so push a live
    /// process's binding out (`mcpwatch_intercept::process::is_alive_by_stat` judges the
    /// state, from the one read of `stat`).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.tgid)) else { return false };
        (self.start_time.is_none() || stat_start_time(&stat) == self.start_time) && mcpwatch_intercept::process::is_alive_by_stat(self.tgid, &stat)
    }

    /// The owner `p` describes. Its start time comes from the `connect` hook when it
    /// read one (no `/proc` read per connection), else from `/proc/<pid>/stat`.
    pub fn of(p: &ProcessInfo) -> Owner {
        let start_time = p.start_ticks.or_else(|| std::fs::read_to_string(format!("/proc/{}/stat", p.tgid)).ok().and_then(|t| stat_start_time(&t)));
        Owner { tgid: p.tgid, start_time, uid: p.uid }
    }

    pub fn label(&self) -> String {
        format!("pid {} (uid {})", self.tgid, self.uid)
    }

    /// The same process: same tgid and uid, and the same start time where both are
    /// known (a process that exited before its start time was read is still itself).
    pub fn same_process(&self, other: &Owner) -> bool {
        self.tgid == other.tgid && self.uid == other.uid && (self.start_time.is_none() || other.start_time.is_none() || self.start_time == other.start_time)
    }
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Most sessions one process may own before its oldest binding is forgotten, so that a
/// process opening sessions in a loop cannot push other processes' bindings out.
const MAX_SESSIONS_PER_OWNER: usize = 256;
const MAX_SESSION_BINDINGS: usize = 65_536;

/// Why [`Sessions::park_client`] handed a call back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparked {
    /// The table is full, or the caller's uid holds its half.
    Full,
    /// The conversation's stream has ended: no answer could come.
    StreamGone,
}

/// A legacy route could not be remembered: `limits.max_legacy_streams` streams are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limits.max_legacy_streams = {0} legacy HTTP+SSE streams are already open")]
pub struct LegacyRoutesFull(pub usize);

/// Where a remembered legacy route is stored, so its stream can remove it when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRouteKey {
    key: (String, String, String),
    conversation: String,
}

/// (destination `ip:port`, [`session_key`] of the session id) → owner.
struct Owners {
    by_session: BoundedMap<(String, String), Owner>,
    by_owner: HashMap<Owner, VecDeque<(String, String)>>,
    /// Bindings made since the last sweep for exited owners: a sweep reads every owner's
    /// `/proc` entry, so it runs at most once per [`SWEEP_EVERY`] bindings.
    since_sweep: usize,
}

/// Bindings between two sweeps of exited owners when the bindings are full.
const SWEEP_EVERY: usize = MAX_SESSION_BINDINGS / 16;

struct Inner {
    /// (conversation, JSON-RPC id text) → pending message.
    pending: BoundedMap<(String, String), Pending>,
    /// The server's requests parked for the client's answer, apart from the client's
    /// calls: a flood of them (the server's choice) evicts only its own kind, never a
    /// client call whose id is checked for reuse.
    server_pending: BoundedMap<(String, String), Pending>,
    /// Client calls in `pending` by the uid of the process that made them (`None`: not
    /// known). One uid may hold at most half the table ([`Sessions::park_client`]), so a
    /// process whose own server never answers cannot fill it and refuse every other
    /// user's legacy calls.
    parks_by_uid: Tally<Option<u32>>,
    /// [`legacy_key`] (dst, host, canonical path and session) → legacy route. A route
    /// lives exactly as long as the GET stream that announced it and is never evicted:
    /// a forgotten route would let its POSTs be judged as some other endpoint. When
    /// `max_legacy` streams are open, a new stream is refused instead.
    legacy: HashMap<(String, String, String), LegacyRoute>,
    /// Conversations with at least one route in `legacy`, by how many: a client call is
    /// parked only in a conversation whose stream is still open ([`Sessions::park_client`]).
    live_conversations: Tally<String>,
    max_legacy: usize,
    /// (endpoint, session id) → protocol version.
    versions: BoundedMap<(String, String), String>,
    /// keyed hash of (conversation, JSON-RPC id text) → what mcpwatch did with that
    /// request. A hash, not the two strings (kept twice by the map and its eviction
    /// order): at the `max_pending_calls` bound that was ~9 MiB of the daemon's memory.
    ids: BoundedMap<u64, IdFate>,
}

impl Inner {
    fn parks(&self, asker: Asker) -> &BoundedMap<(String, String), Pending> {
        match asker {
            Asker::Client => &self.pending,
            Asker::Server => &self.server_pending,
        }
    }

    fn parks_mut(&mut self, asker: Asker) -> &mut BoundedMap<(String, String), Pending> {
        match asker {
            Asker::Client => &mut self.pending,
            Asker::Server => &mut self.server_pending,
        }
    }

    /// Inserts into `asker`'s parks, keeping [`Inner::parks_by_uid`] in step.
    fn insert_park(&mut self, asker: Asker, key: (String, String), p: Pending) -> Vec<Pending> {
        let uid = park_uid(&p);
        let out = self.parks_mut(asker).insert(key, p);
        if asker == Asker::Client {
            self.parks_by_uid.add(uid, 1);
            self.unpark_count(&out);
        }
        out
    }

    /// Client calls that left `pending` (answered, drained, replaced, evicted).
    fn unpark_count(&mut self, gone: &[Pending]) {
        for p in gone {
            self.parks_by_uid.sub(&park_uid(p), 1);
        }
    }
}

/// Whose call a parked message is: the uid of the process that sent it, when known.
fn park_uid(p: &Pending) -> Option<u32> {
    p.record.process.as_ref().map(|pi| pi.uid)
}

impl Sessions {
    /// Bounds: `max_pending` parked messages and id fates, `max_legacy` open legacy streams.
    pub fn new(max_pending: usize, max_legacy: usize) -> Sessions {
        Sessions {
            inner: Mutex::new(Inner {
                pending: BoundedMap::new(max_pending),
                server_pending: BoundedMap::new(max_pending),
                parks_by_uid: Tally::default(),
                legacy: HashMap::new(),
                live_conversations: Tally::default(),
                max_legacy: max_legacy.max(1),
                versions: BoundedMap::new(4096),
                ids: BoundedMap::new(max_pending),
            }),
            owners: Mutex::new(Owners { by_session: BoundedMap::new(MAX_SESSION_BINDINGS), by_owner: HashMap::new(), since_sweep: SWEEP_EVERY }),
            id_hasher: std::hash::RandomState::new(),
            flights: Arc::default(),
            orphans: Mutex::new(VecDeque::new()),
        }
    }

    fn id_key(&self, conversation: &str, id: &IdKey) -> u64 {
        use std::hash::BuildHasher as _;
        self.id_hasher.hash_one((conversation, id.as_str()))
    }

    /// Remember what happened to a client request id. A refusal never overwrites
    /// `Forwarded`: the id reached the server once, so a later use of it (refused as a
    /// reuse) leaves it a reuse for every use after, and the server's answer to the first
    /// call is still an answer to a sent id.
    pub fn note_id(&self, conversation: &str, id: &IdKey, fate: IdFate) {
        if let Ok(mut i) = self.inner.lock() {
            let key = self.id_key(conversation, id);
            if fate == IdFate::Refused && i.ids.get(&key) == Some(&IdFate::Forwarded) {
                return;
            }
            i.ids.insert(key, fate);
        }
    }

    /// Keep the in-flight mark of a call its exchange left unanswered for [`ORPHAN_TTL`].
    pub fn orphan(&self, flight: Arc<Flight>) {
        let now = Instant::now();
        let Ok(mut o) = self.orphans.lock() else { return };
        while o.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= ORPHAN_TTL) || o.len() >= MAX_ORPHANS {
            o.pop_front();
        }
        o.push_back((now, flight));
    }

    /// Take a client request id for a new call, in one step: `None` when it is in use (in
    /// flight; over legacy SSE parked; in a Streamable HTTP session forwarded before), else
    /// its in-flight mark. Checked and marked under one lock, so two requests racing with
    /// one id never both pass.
    pub fn claim(&self, conversation: &str, id: &IdKey, legacy: bool) -> Option<Arc<Flight>> {
        let key = self.id_key(conversation, id);
        let mut flights = self.flights.lock().ok()?;
        if flights.contains_key(&key) {
            return None;
        }
        {
            let i = self.inner.lock().ok()?;
            let used = if legacy {
                i.pending.get(&(conversation.to_string(), Asker::Client.key(id))).is_some()
            } else {
                i.ids.get(&key) == Some(&IdFate::Forwarded)
            };
            if used {
                return None;
            }
        }
        *flights.entry(key).or_default() += 1;
        Some(Arc::new(Flight { marks: self.flights.clone(), key }))
    }

    /// Is a call with this id forwarded in the conversation and not yet answered?
    #[cfg(test)]
    fn in_flight(&self, conversation: &str, id: &IdKey) -> bool {
        let key = self.id_key(conversation, id);
        self.flights.lock().is_ok_and(|m| m.contains_key(&key))
    }

    /// What happened to a client request id, if it was seen.
    pub fn id_fate(&self, conversation: &str, id: &IdKey) -> Option<IdFate> {
        let key = self.id_key(conversation, id);
        self.inner.lock().ok()?.ids.get(&key).copied()
    }

    /// Is a request `asker` sent with this id parked in the conversation?
    pub fn is_parked(&self, conversation: &str, asker: Asker, id: &IdKey) -> bool {
        self.inner.lock().is_ok_and(|i| i.parks(asker).get(&(conversation.to_string(), asker.key(id))).is_some())
    }

    /// Bind a session (seen in an `initialize` response) to the process that opened it.
    pub fn bind_session(&self, dst: &str, session: &str, owner: Owner) {
        self.bind_session_with(dst, session, owner, Owner::is_alive);
    }

    /// [`Sessions::bind_session`] with the liveness test given (tests).
    fn bind_session_with(&self, dst: &str, session: &str, owner: Owner, alive: impl Fn(&Owner) -> bool) {
        let key = (dst.to_string(), session_key(session));
        // Full. Never the oldest binding of all: a flood of sessions from short-lived
        // processes would push out a live process's binding, and its session could then
        // be presented by anyone, unjudged. First what no longer counts: keys bound to
        // someone else since or unbound, and the bindings of processes that have exited
        // (all at once: the next binds find room; at most once per SWEEP_EVERY bindings).
        // Then, only if every owner lives, the oldest binding of the process holding the
        // most. The sweep reads `/proc` for every owner (65,536 at most): that happens
        // with the lock released, since every session lookup on every proxy thread takes
        // it, and an attacker who can make sweeps due would otherwise stall them all.
        let Ok(mut guard) = self.owners.lock() else { return };
        if guard.by_session.len() >= MAX_SESSION_BINDINGS && guard.by_session.get(&key).is_none() && guard.since_sweep >= SWEEP_EVERY {
            let o = &mut *guard;
            o.since_sweep = 0;
            let live = &o.by_session;
            o.by_owner.retain(|own, keys| {
                keys.retain(|k| live.get(k) == Some(own));
                !keys.is_empty()
            });
            let candidates: Vec<Owner> = o.by_owner.keys().filter(|own| **own != owner).cloned().collect();
            drop(guard);
            let gone: Vec<Owner> = candidates.into_iter().filter(|own| !alive(own)).collect();
            let Ok(relocked) = self.owners.lock() else { return };
            guard = relocked;
            let o = &mut *guard;
            for own in gone {
                // Only keys still bound to it: one rebound meanwhile belongs to someone else.
                for k in o.by_owner.remove(&own).unwrap_or_default() {
                    if o.by_session.get(&k) == Some(&own) {
                        o.by_session.remove(&k);
                    }
                }
            }
        }
        let o = &mut *guard;
        if o.by_session.len() >= MAX_SESSION_BINDINGS
            && o.by_session.get(&key).is_none()
            && let Some(who) = o.by_owner.iter().max_by_key(|(_, keys)| keys.len()).map(|(who, _)| who.clone())
            && let Some(keys) = o.by_owner.get_mut(&who)
        {
            // Its oldest key that is still its own (a stale one frees nothing, and the
            // insert below would then evict the oldest binding of all).
            while let Some(old) = keys.pop_front() {
                if o.by_session.get(&old) == Some(&who) {
                    o.by_session.remove(&old);
                    break;
                }
            }
        }
        // A session bound again to another process leaves the previous one's list.
        if let Some(prev) = o.by_session.get(&key).filter(|prev| **prev != owner).cloned()
            && let Some(keys) = o.by_owner.get_mut(&prev)
        {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                o.by_owner.remove(&prev);
            }
        }
        let mine = o.by_owner.entry(owner.clone()).or_default();
        if mine.len() >= MAX_SESSIONS_PER_OWNER
            && let Some(old) = mine.pop_front()
            && o.by_session.get(&old) == Some(&owner)
        {
            o.by_session.remove(&old);
        }
        mine.push_back(key.clone());
        let _ = o.by_session.insert(key, owner);
        o.since_sweep = o.since_sweep.saturating_add(1);
        if o.by_owner.len() > MAX_SESSION_BINDINGS {
            let live = &o.by_session;
            o.by_owner.retain(|own, keys| {
                keys.retain(|k| live.get(k) == Some(own));
                !keys.is_empty()
            });
        }
    }

    /// The process that opened this session, if mcpwatch saw it opened.
    pub fn session_owner(&self, dst: &str, session: &str) -> Option<Owner> {
        self.owners.lock().ok()?.by_session.get(&(dst.to_string(), session_key(session))).cloned()
    }

    pub fn unbind_session(&self, dst: &str, session: &str) {
        if let Ok(mut o) = self.owners.lock() {
            let key = (dst.to_string(), session_key(session));
            // Out of its owner's list too: a process that closes sessions must not look
            // like the one holding the most when room is made.
            if let Some(owner) = o.by_session.remove(&key)
                && let Some(keys) = o.by_owner.get_mut(&owner)
            {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    o.by_owner.remove(&owner);
                }
            }
        }
    }

    /// Park a request `asker` sent until its response arrives on another connection.
    /// Returns messages evicted by the bound or replaced under the same id (the caller
    /// closes their records).
    pub fn park(&self, conversation: &str, asker: Asker, id: &IdKey, p: Pending) -> Vec<Pending> {
        match self.inner.lock() {
            Ok(mut i) => i.insert_park(asker, (conversation.to_string(), asker.key(id)), p),
            Err(_) => vec![p],
        }
    }

    /// [`Sessions::park`] for a client's request, whose id is checked for reuse against the
    /// parks: when the table is full it is handed back (`Err`) for the caller to refuse,
    /// never parked at the expense of an older call. An evicted call's id would be free
    /// to reuse while the server still works on it, and its answer taken for the new
    /// call's. Nor may one uid hold more than half the table: past that its next call is
    /// handed back too, and other users' calls still park. Nor is a call parked in a
    /// conversation whose stream has ended (its route is gone): the stream's drain has
    /// run or is about to, and a park after it would wait forever, held against its uid.
    pub fn park_client(&self, conversation: &str, id: &IdKey, p: Pending) -> Result<Vec<Pending>, (Box<Pending>, Unparked)> {
        let Ok(mut i) = self.inner.lock() else { return Err((Box::new(p), Unparked::Full)) };
        if i.live_conversations.get(conversation) == 0 {
            return Err((Box::new(p), Unparked::StreamGone));
        }
        let key = (conversation.to_string(), Asker::Client.key(id));
        if i.pending.get(&key).is_none() {
            let share = (i.pending.capacity() / 2).max(1);
            if i.pending.is_full() || i.parks_by_uid.get(&park_uid(&p)) >= share {
                return Err((Box::new(p), Unparked::Full));
            }
        }
        Ok(i.insert_park(Asker::Client, key, p))
    }

    /// The parked request `asker` sent with this id, answered now.
    pub fn take(&self, conversation: &str, asker: Asker, id: &IdKey) -> Option<Pending> {
        let mut i = self.inner.lock().ok()?;
        let p = i.parks_mut(asker).remove(&(conversation.to_string(), asker.key(id)))?;
        if asker == Asker::Client {
            i.unpark_count(std::slice::from_ref(&p));
        }
        Some(p)
    }

    /// Everything still waiting in a conversation (its stream ended).
    pub fn drain(&self, conversation: &str) -> Vec<Pending> {
        match self.inner.lock() {
            Ok(mut i) => {
                let mut all = i.pending.drain_where(|(c, _)| c == conversation);
                i.unpark_count(&all);
                all.extend(i.server_pending.drain_where(|(c, _)| c == conversation));
                all
            }
            Err(_) => Vec::new(),
        }
    }

    pub fn pending_len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.pending.len() + i.server_pending.len())
    }

    /// Remember the route a legacy stream announced, until [`Sessions::remove_legacy_route`]
    /// (its stream ended). Nothing is evicted to make room: when `max_legacy` routes
    /// are held, the route is refused and the caller ends the stream before the client
    /// learns the message URL. A route re-announced under the same key replaces the old one.
    pub fn add_legacy_route(&self, dst: &str, host: &str, path_and_query: &str, route: LegacyRoute) -> Result<LegacyRouteKey, LegacyRoutesFull> {
        let mut i = self.inner.lock().map_err(|_| LegacyRoutesFull(0))?;
        let key = legacy_key(dst, host, path_and_query);
        if i.legacy.len() >= i.max_legacy && !i.legacy.contains_key(&key) {
            return Err(LegacyRoutesFull(i.max_legacy));
        }
        let conversation = route.conversation.clone();
        i.live_conversations.add(conversation.clone(), 1);
        if let Some(old) = i.legacy.insert(key.clone(), route) {
            i.live_conversations.sub(&old.conversation, 1);
        }
        Ok(LegacyRouteKey { key, conversation })
    }

    /// Forget a route when the stream that announced it ends (unless a later stream has
    /// announced the same URL since).
    pub fn remove_legacy_route(&self, route: &LegacyRouteKey) {
        if let Ok(mut i) = self.inner.lock()
            && i.legacy.get(&route.key).is_some_and(|r| r.conversation == route.conversation)
        {
            i.legacy.remove(&route.key);
            i.live_conversations.sub(&route.conversation, 1);
        }
    }

    /// Legacy routes remembered now (one per open legacy stream).
    pub fn legacy_routes(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.legacy.len())
    }

    /// The legacy route a POST belongs to, by the same canonical key the announcement
    /// was stored under ([`legacy_key`]): a spelling of the message URL the server still
    /// routes to the session finds it.
    pub fn legacy_route(&self, dst: &std::net::SocketAddr, host: &str, path_and_query: &str) -> Option<LegacyRoute> {
        let i = self.inner.lock().ok()?;
        if i.legacy.is_empty() {
            return None; // no legacy HTTP+SSE session open: no key to build
        }
        i.legacy.get(&legacy_key(&dst.to_string(), host, path_and_query)).cloned()
    }

    pub fn set_version(&self, endpoint: &str, session: &str, version: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.versions.insert((endpoint.to_string(), session.to_string()), version.to_string());
        }
    }

    pub fn version(&self, endpoint: &str, session: &str) -> Option<String> {
        let i = self.inner.lock().ok()?;
        if i.versions.is_empty() {
            return None;
        }
        i.versions.get(&(endpoint.to_string(), session.to_string())).cloned()
    }

    pub fn end_session(&self, endpoint: &str, session: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.versions.remove(&(endpoint.to_string(), session.to_string()));
        }
    }
}

/// A session id as servers may look it up, for ownership and routes: percent escapes
/// decoded, ASCII lower-cased, and the spellings Python's `UUID(hex=...)` accepts for one
/// id (`urn:uuid:` prefix, braces, hyphens) removed. The Python SDK's legacy transport
/// finds its session with exactly that parse, so `ABCD-...` reaches the session
/// announced as `abcd...`; an owner check on the raw string would not see it. Ids that
/// differ only in these ways are taken for one (stricter, never looser).
pub fn session_key(id: &str) -> String {
    let mut s = mcpwatch_policy::percent_decode(id, false).to_ascii_lowercase();
    for prefix in ["urn:", "uuid:"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest.to_string();
        }
    }
    s.retain(|c| !matches!(c, '{' | '}' | '-'));
    s
}

/// Every legacy session id a message URL carries (`sessionId` or `session_id`, names and
/// values percent- and `+`-decoded as Starlette and Express decode queries), as
/// [`session_key`]s, without repeats. More than one is a request the daemon and the
/// server could read differently (Starlette takes the last, this code once took the first).
pub fn session_params(path_and_query: &str) -> Vec<String> {
    let Some((_, query)) = path_and_query.split_once('?') else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let k = mcpwatch_policy::percent_decode(k, true);
        if !matches!(k.as_ref(), "sessionId" | "session_id") {
            continue;
        }
        let v = session_key(&mcpwatch_policy::percent_decode(v, true));
        if !v.is_empty() && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The key of a legacy route: destination, Host without port or trailing dot and
/// lower-cased, the path as servers route it (`mcpwatch_policy::canonical_request_path`),
/// and the session the query names (the raw query when it names none).
fn legacy_key(dst: &str, host: &str, path_and_query: &str) -> (String, String, String) {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    // Toward a loopback address every local alias reaches the same socket: the address
    // alone names the server (`proxy::scope` names the endpoint the same way).
    let loopback = dst.parse::<std::net::SocketAddr>().is_ok_and(|d| d.ip().to_canonical().is_loopback());
    let host = if loopback { String::new() } else { mcpwatch_policy::canonical_host(host) };
    let path = mcpwatch_policy::canonical_request_path(path);
    let session = session_params(path_and_query);
    let rest = if session.is_empty() { query.to_string() } else { session.join("&") };
    (dst.to_string(), host, format!("{path}?{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy stream open for `conversation` (its route), so calls can park there.
    fn open_stream(s: &Sessions, conversation: &str) -> LegacyRouteKey {
        let route = LegacyRoute { endpoint: "http://127.0.0.1:8000/sse".into(), conversation: conversation.into(), session_id: None };
        s.add_legacy_route("127.0.0.1:8000", "127.0.0.1", &format!("/messages/?session_id={conversation}"), route).expect("a route")
    }

    /// A flood of sessions from many processes pushes out the flooders' own bindings, never
    /// the one other process's: its session stays judged.
    #[test]
    fn a_session_flood_does_not_push_out_another_processs_binding() {
        let s = Sessions::new(16, 64);
        let who = |tgid: u32| Owner { tgid, start_time: Some(1), uid: 1000 };
        // Every process alive (exited ones are swept first: see below).
        s.bind_session_with("127.0.0.2:8000", "victim-session", who(1), |_| true);
        for i in 0..(MAX_SESSION_BINDINGS as u32 + 5_000) {
            // 64 sessions per attacker process, many processes.
            s.bind_session_with("127.0.0.2:8000", &format!("junk{i}"), who(2 + i / 64), |_| true);
        }
        assert_eq!(s.session_owner("127.0.0.2:8000", "victim-session"), Some(who(1)));
        let o = s.owners.lock().unwrap();
        assert!(o.by_session.len() <= MAX_SESSION_BINDINGS);
    }

    /// Spellings of one session id and of one message URL that servers resolve alike
    /// are one key; a second session in the same URL is reported, not dropped.
    #[test]
    fn session_ids_and_legacy_urls_are_keyed_as_servers_read_them() {
        let hex = "9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";
        for spelling in ["9F1C2D3E4F5A6B7C8D9E0F1A2B3C4D5E", "9f1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e", "{9f1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e}", "urn:uuid:9f1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e", "%39f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"] {
            assert_eq!(session_key(spelling), hex, "{spelling}");
        }
        assert_eq!(session_params(&format!("/messages/?session_id={hex}&x=1")), [hex]);
        assert_eq!(session_params("/messages?sessionId=a&sessionId=A"), ["a"], "one session, spelled twice");
        assert_eq!(session_params(&format!("/messages/?%73ession_id={hex}")), [hex], "Starlette decodes names");
        assert_eq!(session_params(&format!("/messages/?sessionId=mine&session_id={hex}")), ["mine", hex]);
        assert!(session_params("/messages?sessionId=").is_empty() && session_params("/mcp").is_empty());

        let announced = legacy_key("127.0.0.2:8000", "127.0.0.2:8000", &format!("/messages/?session_id={hex}"));
        for variant in [
            format!("/messages?session_id={}", hex.to_uppercase()),
            format!("/%6Dessages/?session_id={hex}"),
            format!("/Messages//?session%5Fid={hex}&x=1"),
        ] {
            assert_eq!(legacy_key("127.0.0.2:8000", "127.0.0.2", &variant), announced, "{variant}");
        }
        assert_ne!(legacy_key("127.0.0.2:8000", "127.0.0.2", "/messages/?session_id=other"), announced);
        // Toward a loopback address the Host does not matter (every local alias reaches it);
        // toward another address it is part of the route.
        assert_eq!(legacy_key("127.0.0.2:8000", "localhost", &format!("/messages/?session_id={hex}")), announced);
        let remote = legacy_key("10.0.0.5:80", "mcp.example", &format!("/messages/?session_id={hex}"));
        assert_eq!(legacy_key("10.0.0.5:80", "MCP.example.", &format!("/messages/?session_id={hex}")), remote);
        assert_ne!(legacy_key("10.0.0.5:80", "other.example", &format!("/messages/?session_id={hex}")), remote);

        let s = Sessions::new(16, 64);
        s.bind_session("127.0.0.2:8000", hex, Owner::of(&mcpwatch_api::ProcessInfo { pid: 7, ..Default::default() }));
        assert!(s.session_owner("127.0.0.2:8000", "9F1C2D3E-4F5A-6B7C-8D9E-0F1A2B3C4D5E").is_some());
    }

    #[test]
    fn bounded_map_evicts_oldest() {
        let mut m = BoundedMap::new(2);
        assert!(m.insert(1, "a").is_empty());
        assert!(m.insert(2, "b").is_empty());
        assert_eq!(m.insert(3, "c"), vec!["a"]);
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&3), Some(&"c"));
        assert_eq!(m.len(), 2);
    }

    /// A key removed and inserted again is the newest entry, not the oldest: its old
    /// place in the order does not evict it (whoever chooses the keys would otherwise
    /// choose which entry goes).
    #[test]
    fn bounded_map_evicts_the_oldest_even_after_a_key_came_back() {
        let mut m = BoundedMap::new(2);
        assert!(m.insert(1, "old-1").is_empty());
        assert!(m.insert(2, "b").is_empty());
        assert_eq!(m.remove(&1), Some("old-1"));
        assert!(m.insert(1, "new-1").is_empty());
        assert_eq!(m.insert(3, "c"), vec!["b"], "2 is the oldest entry now");
        assert_eq!(m.get(&1), Some(&"new-1"));
        // Replaced in place: the old value comes back, and the key is the newest.
        assert_eq!(m.insert(1, "newer-1"), vec!["new-1"]);
        assert_eq!(m.insert(4, "d"), vec!["c"]);
        assert_eq!(m.get(&1), Some(&"newer-1"));
        assert!(m.is_full());
    }

    #[test]
    fn bounded_map_order_does_not_grow_after_removals() {
        let mut m = BoundedMap::new(4);
        for i in 0..1000 {
            m.insert(i, i);
            m.remove(&i);
        }
        assert!(m.order.len() <= 8, "{}", m.order.len());
    }

    #[test]
    fn start_time_from_stat() {
        assert_eq!(stat_start_time("1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 0 0"), Some(987654));
        assert_eq!(stat_start_time("garbage"), None);
    }

    #[test]
    fn session_bindings_are_per_owner_bounded() {
        let s = Sessions::new(16, 64);
        let a = Owner { tgid: 1, start_time: Some(5), uid: 0 };
        let b = Owner { tgid: 2, start_time: Some(6), uid: 0 };
        s.bind_session("d", "victim", a.clone());
        for i in 0..(MAX_SESSIONS_PER_OWNER * 3) {
            s.bind_session("d", &format!("flood-{i}"), b.clone());
        }
        assert_eq!(s.session_owner("d", "victim"), Some(a), "a flood by one process keeps others' bindings");
        assert_eq!(s.session_owner("d", "flood-0"), None);
        assert!(s.owners.lock().unwrap().by_owner[&b].len() <= MAX_SESSIONS_PER_OWNER);
        s.unbind_session("d", "victim");
        assert_eq!(s.session_owner("d", "victim"), None);
    }

    /// When the bindings are full, room is made from processes that have exited, not from
    /// a live one that merely looks big: sessions it closed left its list.
    #[test]
    fn a_flood_of_exited_processes_does_not_push_out_a_live_binding() {
        let s = Sessions::new(16, 64);
        let victim = Owner { tgid: 1, start_time: Some(5), uid: 1000 };
        s.bind_session_with("d", "closed", victim.clone(), |_| true);
        s.unbind_session("d", "closed");
        s.bind_session_with("d", "victim", victim.clone(), |_| true);
        assert_eq!(s.owners.lock().unwrap().by_owner[&victim].len(), 1, "an unbound session leaves its owner's list");
        let alive = |o: &Owner| o.tgid < 10;
        for i in 0..MAX_SESSION_BINDINGS as u32 {
            s.bind_session_with("d", &format!("flood-{i}"), Owner { tgid: 100 + i, start_time: Some(1), uid: 1001 }, alive);
        }
        assert_eq!(s.session_owner("d", "victim"), Some(victim.clone()), "the live process keeps its binding");
        assert!(s.owners.lock().unwrap().by_session.len() < MAX_SESSION_BINDINGS / 2, "the exited processes' bindings went at once");
        // Every owner alive: the one holding the most gives its oldest.
        let s = Sessions::new(16, 64);
        let big = Owner { tgid: 2, start_time: Some(5), uid: 1000 };
        s.bind_session_with("d", "victim", victim.clone(), |_| true);
        for i in 0..MAX_SESSION_BINDINGS as u32 {
            let who = if i % 2 == 0 { big.clone() } else { Owner { tgid: 100 + i, start_time: Some(1), uid: 1001 } };
            s.bind_session_with("d", &format!("s-{i}"), who, |_| true);
        }
        assert_eq!(s.session_owner("d", "victim"), Some(victim));
    }

    fn k(json: &str) -> IdKey {
        mcpwatch_mcp::Id::from_value(&serde_json::from_str(json).unwrap()).unwrap().key()
    }

    #[test]
    fn id_fates_are_per_conversation_and_bounded() {
        let s = Sessions::new(4, 64);
        s.note_id("conv-a", &k("1"), IdFate::Forwarded);
        s.note_id("conv-a", &k("\"1\""), IdFate::Refused);
        assert_eq!(s.id_fate("conv-a", &k("1")), Some(IdFate::Forwarded));
        assert_eq!(s.id_fate("conv-a", &k("1.0")), Some(IdFate::Forwarded), "1.0 is 1 to the server");
        assert_eq!(s.id_fate("conv-a", &k("\"1\"")), Some(IdFate::Refused), "a string id is not the number");
        assert_eq!(s.id_fate("conv-b", &k("1")), None, "another conversation never sent it");
        s.note_id("conv-a", &k("1"), IdFate::Refused);
        assert_eq!(s.id_fate("conv-a", &k("1")), Some(IdFate::Forwarded), "a refused reuse leaves the id sent");
        // (conversation, id) pairs that concatenate alike stay apart.
        s.note_id("conv-a1", &k("1"), IdFate::Refused);
        assert_eq!(s.id_fate("conv-a", &k("11")), None);
        for i in 0..10 {
            s.note_id("conv-c", &k(&i.to_string()), IdFate::Forwarded);
        }
        assert_eq!(s.id_fate("conv-a", &k("1")), None, "the oldest are forgotten at the bound");
        assert_eq!(s.id_fate("conv-c", &k("9")), Some(IdFate::Forwarded));
        assert!(s.inner.lock().unwrap().ids.len() <= 4);
    }

    /// An id stays in flight while its mark lives, however many fates were forgotten.
    #[test]
    fn an_id_in_flight_outlives_the_fate_bound() {
        let s = Sessions::new(4, 64);
        let first = s.claim("conv", &k("9"), false).expect("a new id");
        s.note_id("conv", &k("9"), IdFate::Forwarded);
        assert!(s.claim("conv", &k("9.0"), false).is_none(), "9.0 is 9, in flight");
        for i in 100..200 {
            s.note_id("conv", &k(&i.to_string()), IdFate::Forwarded);
        }
        assert_eq!(s.id_fate("conv", &k("9")), None, "the fate was forgotten at the bound");
        assert!(s.in_flight("conv", &k("9")) && !s.in_flight("other", &k("9")) && !s.in_flight("conv", &k("10")));
        assert!(s.claim("conv", &k("9"), false).is_none(), "still in flight");
        drop(first);
        assert!(!s.in_flight("conv", &k("9")));
        assert!(!s.flights.lock().unwrap().contains_key(&s.id_key("conv", &k("9"))), "no mark is left behind");
        // A call its exchange left unanswered keeps its id in use.
        let third = s.claim("conv", &k("33"), false).expect("a new id");
        s.orphan(third);
        assert!(s.in_flight("conv", &k("33")) && s.claim("conv", &k("33"), false).is_none());
        // Forwarded before and answered: used in a session; over legacy SSE free again.
        s.note_id("conv", &k("150"), IdFate::Forwarded);
        assert!(s.claim("conv", &k("150"), false).is_none());
        assert!(s.claim("conv", &k("150"), true).is_some());
    }

    #[test]
    fn drain_takes_only_one_conversation() {
        let s = Sessions::new(16, 64);
        let p = Pending { record: AuditRecord::default(), started: Instant::now(), first_page: false };
        s.park("a", Asker::Client, &k("1"), p.clone());
        s.park("a", Asker::Client, &k("2"), p.clone());
        s.park("b", Asker::Client, &k("1"), p);
        assert_eq!(s.drain("a").len(), 2);
        assert!(s.take("b", Asker::Client, &k("1")).is_some());
        assert_eq!(s.pending_len(), 0);
    }

    /// The client's id 1 and the server's id 1 are two requests; a second park under
    /// the same id hands the first back (closed by the caller), never drops it unseen.
    #[test]
    fn client_and_server_ids_are_apart_and_a_replaced_park_is_returned() {
        let s = Sessions::new(16, 64);
        let rec = |id: &str| AuditRecord { id: id.into(), ..AuditRecord::default() };
        let p = |id: &str| Pending { record: rec(id), started: Instant::now(), first_page: false };
        assert!(s.park("a", Asker::Client, &k("1"), p("client-1")).is_empty());
        assert!(s.park("a", Asker::Server, &k("1"), p("server-1")).is_empty());
        assert!(s.is_parked("a", Asker::Client, &k("1")) && s.is_parked("a", Asker::Server, &k("1")));
        let replaced = s.park("a", Asker::Client, &k("1"), p("client-1-again"));
        assert_eq!(replaced.iter().map(|p| p.record.id.as_str()).collect::<Vec<_>>(), ["client-1"]);
        assert_eq!(s.take("a", Asker::Server, &k("1")).map(|p| p.record.id), Some("server-1".to_string()));
        assert_eq!(s.take("a", Asker::Client, &k("1")).map(|p| p.record.id), Some("client-1-again".to_string()));
    }

    /// The server's requests fill their own table: a flood of them never pushes out a
    /// client call (whose id would be free again while the server still works on it).
    #[test]
    fn server_requests_never_evict_a_client_park() {
        let s = Sessions::new(4, 64);
        let p = || Pending { record: AuditRecord::default(), started: Instant::now(), first_page: false };
        let _a = open_stream(&s, "a");
        assert!(s.park_client("a", &k("1"), p()).unwrap().is_empty());
        for i in 0..10 {
            let _ = s.park("a", Asker::Server, &k(&format!("\"srv-{i}\"")), p());
        }
        assert!(s.is_parked("a", Asker::Client, &k("1")), "the client's call is still parked");
        assert!(s.claim("a", &k("1"), true).is_none());
    }

    /// A zombie (exited, not reaped by its parent) no longer owns its sessions; a running
    /// process does, and a recycled pid (another start time) does not.
    #[test]
    fn a_zombie_owns_no_session() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let started = stat_start_time(&stat(pid));
        // Not waited for: it stays a zombie until `wait` below.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !stat(pid).rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) {
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!Owner { tgid: pid, start_time: started, uid: 0 }.is_alive(), "a zombie is dead");
        let _ = child.wait();
        let me = std::process::id();
        let mine = stat_start_time(&stat(me));
        assert!(Owner { tgid: me, start_time: mine, uid: 0 }.is_alive());
        assert!(!Owner { tgid: me, start_time: mine.map(|t| t + 1), uid: 0 }.is_alive(), "another start time is another process");
    }

    /// The sweep for exited owners reads `/proc` once per owner (up to 65,536): with the
    /// owners' lock released, so session lookups on other proxy threads go on meanwhile.
    #[test]
    fn the_owner_sweep_reads_proc_without_the_lock() {
        let s = Sessions::new(16, 64);
        for i in 0..MAX_SESSION_BINDINGS as u32 {
            s.bind_session_with("d", &format!("s-{i}"), Owner { tgid: 100 + i, start_time: Some(1), uid: 1001 }, |_| true);
        }
        let checked = std::cell::Cell::new(0usize);
        let alive = |o: &Owner| {
            assert!(s.owners.try_lock().is_ok(), "the owners' lock is held while /proc is read");
            checked.set(checked.get() + 1);
            o.tgid.is_multiple_of(2)
        };
        s.bind_session_with("d", "new", Owner { tgid: 1, start_time: Some(1), uid: 1000 }, alive);
        assert_eq!(checked.get(), MAX_SESSION_BINDINGS, "every other owner was checked");
        let o = s.owners.lock().unwrap();
        assert_eq!(o.by_session.len(), MAX_SESSION_BINDINGS / 2 + 1, "the exited half went, the new binding came");
        assert!(o.by_owner.keys().all(|own| own.tgid.is_multiple_of(2) || own.tgid == 1));
    }

    /// One uid's calls that its server never answers fill at most half the park table:
    /// its next call is refused, another user's still parks, and answered, drained or
    /// replaced calls give their share back.
    #[test]
    fn one_uid_cannot_fill_the_park_table() {
        let s = Sessions::new(8, 64);
        let by = |uid: u32| Pending {
            record: AuditRecord { process: Some(Arc::new(mcpwatch_api::ProcessInfo { uid, ..Default::default() })), ..AuditRecord::default() },
            started: Instant::now(),
            first_page: false,
        };
        for c in ["flood", "victim", "again"] {
            open_stream(&s, c);
        }
        for i in 0..4 {
            assert!(s.park_client("flood", &k(&i.to_string()), by(1000)).is_ok(), "call {i} within the share");
        }
        assert!(s.park_client("flood", &k("4"), by(1000)).is_err(), "past half the table");
        // The same id again replaces its own park: not a new share.
        assert_eq!(s.park_client("flood", &k("3"), by(1000)).expect("a replacement").len(), 1);
        assert!(s.park_client("victim", &k("1"), by(1001)).is_ok(), "another user's call still parks");
        assert!(s.take("flood", Asker::Client, &k("0")).is_some());
        assert!(s.park_client("flood", &k("4"), by(1000)).is_ok(), "an answered call gave its share back");
        assert_eq!(s.drain("flood").len(), 4);
        for i in 10..14 {
            assert!(s.park_client("again", &k(&i.to_string()), by(1000)).is_ok(), "a drained stream gave its shares back");
        }
        assert_eq!(s.pending_len(), 5);
    }

    /// A call is parked only while its conversation's stream is open: one that comes
    /// after the stream ended (and its waiting calls were drained) would wait forever,
    /// counted against its uid's share. Another conversation's stream is not affected.
    #[test]
    fn no_call_parks_after_its_stream_ended() {
        let s = Sessions::new(16, 64);
        let p = || Pending { record: AuditRecord::default(), started: Instant::now(), first_page: false };
        assert!(matches!(s.park_client("never-opened", &k("1"), p()), Err((_, Unparked::StreamGone))));
        let stream = open_stream(&s, "c");
        let _other = open_stream(&s, "d");
        assert!(s.park_client("c", &k("1"), p()).is_ok());
        s.remove_legacy_route(&stream);
        assert_eq!(s.drain("c").len(), 1);
        assert!(matches!(s.park_client("c", &k("2"), p()), Err((_, Unparked::StreamGone))), "parked after its stream ended");
        assert!(s.park_client("d", &k("2"), p()).is_ok(), "the other stream is still open");
        assert_eq!(s.pending_len(), 1);
    }

    /// A legacy route lives as long as its stream: never evicted by other announcements,
    /// refused when the table is full, freed when its stream ends, and not freed by a
    /// stale stream whose URL was announced again since.
    #[test]
    fn legacy_routes_are_held_by_their_streams_not_by_recency() {
        let s = Sessions::new(16, 2);
        let route = |c: &str| LegacyRoute { endpoint: "http://127.0.0.1:8000/sse".into(), conversation: c.into(), session_id: None };
        let mine = s.add_legacy_route("127.0.0.1:8000", "", "/messages/?session_id=aa", route("a")).unwrap();
        let other = s.add_legacy_route("127.0.0.1:8000", "", "/messages/?session_id=bb", route("b")).unwrap();
        let dst: std::net::SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(s.add_legacy_route("127.0.0.1:8000", "", "/messages/?session_id=cc", route("c")), Err(LegacyRoutesFull(2)));
        assert_eq!(s.legacy_route(&dst, "", "/messages/?session_id=AA").map(|r| r.conversation), Some("a".into()));
        s.remove_legacy_route(&other);
        let third = s.add_legacy_route("127.0.0.1:8000", "", "/messages/?session_id=cc", route("c")).unwrap();
        assert_eq!(s.legacy_routes(), 2);
        // Announced again by a later stream: the first stream's end leaves the new route.
        let again = s.add_legacy_route("127.0.0.1:8000", "", "/messages/?session_id=aa", route("a2")).unwrap();
        s.remove_legacy_route(&mine);
        assert_eq!(s.legacy_route(&dst, "", "/messages/?session_id=aa").map(|r| r.conversation), Some("a2".into()));
        s.remove_legacy_route(&again);
        s.remove_legacy_route(&third);
        assert_eq!(s.legacy_routes(), 0);
        assert!(s.legacy_route(&dst, "", "/messages/?session_id=aa").is_none());
    }
}
