//! Upstream TLS session resumption, bounded by the verification it rests on.
//!
//! Why it exists: a full upstream handshake costs a certificate-chain verification and a
//! handshake signature per connection. nginx resumes upstream sessions
//! (`proxy_ssl_session_reuse`), and so does mcpwatchd, but a resumed session skips
//! certificate verification, so here a session is only as good as the full verification it
//! descends from. A ticket (TLS 1.3) or session (TLS 1.2) is used only while:
//! - the full verification it descends from is still the latest one for that name (a new
//!   full handshake, e.g. one that met a replaced certificate, retires every older ticket);
//! - that verification is younger than `max_age` (`[tls] upstream_resumption_secs`);
//! - the certificate it verified has not expired since.
//!
//! Tickets a resumed connection receives descend from the same verification, so a chain
//! of resumptions never outlives `max_age`. Bounded: at most [`MAX_SERVERS`] names (the
//! oldest goes) with at most [`MAX_TICKETS`] TLS 1.3 tickets each.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;

/// Most server names remembered.
pub const MAX_SERVERS: usize = 256;
/// Most TLS 1.3 tickets kept per name (servers send two by default).
pub const MAX_TICKETS: usize = 8;

/// The session store of the verified upstream config (see the module doc).
#[derive(Debug)]
pub struct SessionStore {
    max_age: Duration,
    servers: Mutex<Servers>,
}

#[derive(Debug, Default)]
struct Servers {
    map: HashMap<ServerName<'static>, Server>,
    /// Names in the order they were first stored (eviction order).
    order: VecDeque<ServerName<'static>>,
    /// Numbers full verifications: a ticket carries the one it descends from.
    generation: u64,
}

#[derive(Debug, Default)]
struct Server {
    verified: Option<Verified>,
    kx_hint: Option<NamedGroup>,
    tls12: Option<(u64, Tls12ClientSessionValue)>,
    tls13: VecDeque<(u64, Tls13ClientSessionValue)>,
}

/// The latest full verification of a name.
#[derive(Debug)]
struct Verified {
    generation: u64,
    at: Instant,
    /// The verified certificate's notAfter (None: unreadable, then only `max_age` bounds).
    not_after: Option<SystemTime>,
}

impl SessionStore {
    pub fn new(max_age: Duration) -> SessionStore {
        SessionStore { max_age, servers: Mutex::new(Servers::default()) }
    }

    /// Records a successful full verification of `name`'s certificate `end_entity` (DER):
    /// tickets from before it are retired, tickets stored from now on descend from it.
    pub fn verified(&self, name: &ServerName<'_>, end_entity: &[u8]) {
        let not_after = x509_parser::parse_x509_certificate(end_entity)
            .ok()
            .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let mut s = self.lock();
        s.generation += 1;
        let generation = s.generation;
        let server = s.entry(name.to_owned());
        server.verified = Some(Verified { generation, at: Instant::now(), not_after });
        server.tls12 = None;
        server.tls13.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Servers> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a session stored under `generation` may still be resumed.
    fn usable(&self, server: &Server, generation: u64) -> bool {
        server.verified.as_ref().is_some_and(|v| {
            v.generation == generation
                && v.at.elapsed() < self.max_age
                && v.not_after.is_none_or(|t| SystemTime::now() < t)
        })
    }
}

impl Servers {
    fn entry(&mut self, name: ServerName<'static>) -> &mut Server {
        if !self.map.contains_key(&name) {
            while self.map.len() >= MAX_SERVERS {
                let Some(old) = self.order.pop_front() else { break };
                self.map.remove(&old);
            }
            self.order.push_back(name.clone());
        }
        self.map.entry(name).or_default()
    }

    /// The generation a session stored now for `name` descends from (None: the name was
    /// never verified, so nothing is stored).
    fn current(&self, name: &ServerName<'_>) -> Option<u64> {
        Some(self.map.get(name)?.verified.as_ref()?.generation)
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.lock().entry(name).kx_hint = Some(group);
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.lock().map.get(name)?.kx_hint
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let mut s = self.lock();
        if let Some(g) = s.current(&name) {
            s.entry(name).tls12 = Some((g, value));
        }
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let mut s = self.lock();
        let server = s.map.get_mut(&name.to_owned())?;
        match &server.tls12 {
            Some((g, v)) if self.usable(server, *g) => Some(v.clone()),
            Some(_) => {
                server.tls12 = None;
                None
            }
            None => None,
        }
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        if let Some(server) = self.lock().map.get_mut(name) {
            server.tls12 = None;
        }
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut s = self.lock();
        if let Some(g) = s.current(&name) {
            let server = s.entry(name);
            if server.tls13.len() >= MAX_TICKETS {
                server.tls13.pop_front();
            }
            server.tls13.push_back((g, value));
        }
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let mut s = self.lock();
        let server = s.map.get_mut(name)?;
        let (g, v) = server.tls13.pop_back()?;
        if self.usable(server, g) {
            return Some(v);
        }
        // Older ones are no better: a ticket is never usable again once it is not.
        server.tls13.clear();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ServerName<'static> {
        ServerName::try_from(n.to_string()).expect("name")
    }

    #[test]
    fn names_are_bounded_oldest_first() {
        let store = SessionStore::new(Duration::from_secs(60));
        for i in 0..MAX_SERVERS + 10 {
            store.set_kx_hint(name(&format!("h{i}.example")), NamedGroup::X25519);
        }
        assert_eq!(store.lock().map.len(), MAX_SERVERS);
        assert!(store.kx_hint(&name("h0.example")).is_none(), "the oldest name went");
        assert!(store.kx_hint(&name(&format!("h{}.example", MAX_SERVERS + 9))).is_some());
    }

    #[test]
    fn a_ticket_lives_only_as_long_as_its_verification() {
        let store = SessionStore::new(Duration::from_millis(200));
        let n = name("a.example");
        store.verified(&n, b"not a certificate");
        let g = store.lock().current(&n).expect("verified");
        {
            let s = store.lock();
            assert!(store.usable(&s.map[&n], g), "fresh");
        }
        store.verified(&n, b"not a certificate");
        {
            let s = store.lock();
            assert!(!store.usable(&s.map[&n], g), "a newer full verification retires it");
            let g2 = s.current(&n).expect("verified");
            assert!(store.usable(&s.map[&n], g2));
        }
        std::thread::sleep(Duration::from_millis(250));
        let s = store.lock();
        let g2 = s.current(&n).expect("verified");
        assert!(!store.usable(&s.map[&n], g2), "older than max_age");
    }
}
