//! Per-server-name leaf certificates, minted on demand and cached as ready `ServerConfig`s.
//!
//! The server name comes from the client's ClientHello, so it is attacker-controlled: it is
//! validated here first ([`validate_server_name`]) and anything malformed becomes a clean
//! [`TlsError::BadSni`]. Each leaf gets its own fresh P-256 key (the CA key only signs), a
//! `notBefore` backdated a minute for clients with slightly slow clocks, a short validity, the
//! name as its only SAN (DNS, or IP when the name is an IP literal) and the serverAuth EKU.
//!
//! Minting costs a key generation and a signature, so ready `Arc<ServerConfig>`s are cached,
//! keyed by (name, ALPN list), in a bounded LRU whose entries also expire after a TTL shorter
//! than half the leaf lifetime (a cached leaf always has at least half its life left).
//!
//! The signing CA can be replaced while the daemon runs ([`LeafIssuer::replace_ca`], used by CA
//! rotation): the cache is emptied at once and a leaf minted by the old CA while the switch
//! happened is never cached, so every handshake that starts after the switch gets a leaf from
//! the new CA. Connections already established keep the leaf they were given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use crate::ca::{LocalCa, rcgen_time};
use crate::{TlsError, provider, unix_now};

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;
/// At most this many ALPN protocols per config (we only ever carry one or two).
const MAX_ALPN: usize = 8;
/// Leaf `notBefore` is this far in the past.
const LEAF_BACKDATE: Duration = Duration::from_secs(60);
/// TLS session cache per leaf config (resumption for repeat connections to the same name).
const SESSION_CACHE_PER_CONFIG: usize = 64;

/// A validated server name: what the leaf certificate is issued for and what the upstream
/// certificate is verified against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerTarget {
    /// A DNS name, lower-cased, no trailing dot.
    Dns(String),
    /// An IP literal (clients send no SNI for those; the proxy uses the original destination).
    Ip(IpAddr),
}

impl ServerTarget {
    /// The name as rustls wants it for upstream verification.
    pub fn server_name(&self) -> ServerName<'static> {
        match self {
            ServerTarget::Dns(name) => match ServerName::try_from(name.clone()) {
                Ok(n) => n,
                // Unreachable: validate_server_name is at least as strict as rustls.
                Err(_) => ServerName::IpAddress(IpAddr::from([0u8, 0, 0, 0]).into()),
            },
            ServerTarget::Ip(ip) => ServerName::IpAddress((*ip).into()),
        }
    }
}

impl std::fmt::Display for ServerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerTarget::Dns(n) => f.write_str(n),
            ServerTarget::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Validates an attacker-supplied server name (SNI) without panicking on any input.
///
/// Accepts an IP literal (v4 or v6) or a DNS name of at most 253 bytes made of 1..=63-byte
/// labels of `[A-Za-z0-9_-]` that do not start or end with `-`, whose last label is not
/// all-numeric. Rejects empty names, a trailing dot, wildcards, non-ASCII and everything else.
/// DNS names are returned lower-cased.
pub fn validate_server_name(name: &str) -> Result<ServerTarget, TlsError> {
    let bad = |reason: &'static str| TlsError::BadSni {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ServerTarget::Ip(ip));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("longer than 253 bytes"));
    }
    if !name.is_ascii() {
        return Err(bad("not ASCII"));
    }
    if name.ends_with('.') {
        return Err(bad("trailing dot"));
    }
    let mut last_all_numeric = false;
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(bad("label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("invalid character"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("label starts or ends with '-'"));
        }
        last_all_numeric = label.bytes().all(|b| b.is_ascii_digit());
    }
    if last_all_numeric {
        return Err(bad("all-numeric last label (not an IP address either)"));
    }
    let lower = name.to_ascii_lowercase();
    // Belt and braces: whatever we accept, rustls must accept too.
    if ServerName::try_from(lower.as_str()).is_err() {
        return Err(bad("rejected by rustls"));
    }
    Ok(ServerTarget::Dns(lower))
}

/// Options for [`LeafIssuer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafOptions {
    /// Leaf certificate lifetime (from issue; `notBefore` is additionally backdated a minute).
    /// Default 24 h; at least 10 minutes, at most 30 days.
    pub validity: Duration,
    /// Most cached `ServerConfig`s. Default 1024; at least 1.
    pub cache_capacity: usize,
    /// How long a cached config is reused; must be less than half of `validity`. Default 6 h.
    pub ttl: Duration,
}

impl Default for LeafOptions {
    fn default() -> Self {
        LeafOptions {
            validity: Duration::from_secs(24 * 3600),
            cache_capacity: 1024,
            ttl: Duration::from_secs(6 * 3600),
        }
    }
}

type CacheKey = (ServerTarget, Vec<Vec<u8>>);

struct CacheEntry {
    config: Arc<ServerConfig>,
    expires: Instant,
    last_used: u64,
}

/// Bounded LRU with TTL. Eviction scans (capacity is ~1000 and a scan is far cheaper than the
/// key generation that precedes every insert).
struct Cache {
    map: HashMap<CacheKey, CacheEntry>,
    capacity: usize,
    tick: u64,
    /// Bumped when the CA is replaced; a leaf minted under an older generation is not cached.
    generation: u64,
}

impl Cache {
    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Arc<ServerConfig>> {
        self.tick += 1;
        let tick = self.tick;
        match self.map.get_mut(key) {
            Some(entry) if entry.expires > now => {
                entry.last_used = tick;
                Some(entry.config.clone())
            }
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: CacheKey, config: Arc<ServerConfig>, expires: Instant, now: Instant) {
        self.tick += 1;
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.map.retain(|_, e| e.expires > now);
            while self.map.len() >= self.capacity {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => {
                        self.map.remove(&k);
                    }
                    None => break,
                }
            }
        }
        self.map.insert(
            key,
            CacheEntry {
                config,
                expires,
                last_used: self.tick,
            },
        );
    }
}

/// Mints and caches leaf certificates signed by the local CA. Share it behind an `Arc`.
pub struct LeafIssuer {
    ca: RwLock<Arc<LocalCa>>,
    options: LeafOptions,
    cache: Mutex<Cache>,
    minted: AtomicU64,
}

impl std::fmt::Debug for LeafIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafIssuer")
            .field("ca", &self.ca())
            .field("options", &self.options)
            .field("minted", &self.minted_count())
            .finish_non_exhaustive()
    }
}

impl LeafIssuer {
    /// Creates an issuer; rejects options that break the invariants above.
    pub fn new(ca: Arc<LocalCa>, options: LeafOptions) -> Result<LeafIssuer, TlsError> {
        if options.validity < Duration::from_secs(600)
            || options.validity > Duration::from_secs(30 * 24 * 3600)
        {
            return Err(TlsError::BadOptions(format!(
                "leaf validity {:?} must be between 10 minutes and 30 days",
                options.validity
            )));
        }
        if options.cache_capacity == 0 {
            return Err(TlsError::BadOptions(
                "leaf cache capacity must be at least 1".into(),
            ));
        }
        if options.ttl.is_zero() || options.ttl >= options.validity / 2 {
            return Err(TlsError::BadOptions(format!(
                "leaf cache ttl {:?} must be positive and less than half the validity {:?}",
                options.ttl, options.validity
            )));
        }
        let cache = Cache {
            map: HashMap::new(),
            capacity: options.cache_capacity,
            tick: 0,
            generation: 0,
        };
        Ok(LeafIssuer {
            ca: RwLock::new(ca),
            options,
            cache: Mutex::new(cache),
            minted: AtomicU64::new(0),
        })
    }

    /// A ready `ServerConfig` presenting a leaf for `sni` and offering exactly `alpn` (in that
    /// preference order; pass `[b"http/1.1"]` unless the caller carries h2 end to end, or an
    /// empty list for no ALPN). Cached; minted on a miss.
    ///
    /// `sni` is validated first: a hostile name yields [`TlsError::BadSni`], never a panic.
    pub fn server_config_for(
        &self,
        sni: &str,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let target = validate_server_name(sni)?;
        self.config_for_target(&target, alpn, Instant::now())
    }

    /// Like [`LeafIssuer::server_config_for`] for an already validated name.
    pub fn server_config_for_target(
        &self,
        target: &ServerTarget,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        self.config_for_target(target, alpn, Instant::now())
    }

    /// How many leaves have been minted since start (cache misses that produced a certificate).
    pub fn minted_count(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// How many configs are cached right now (expired ones may still be counted until evicted).
    pub fn cache_len(&self) -> usize {
        self.lock().map.len()
    }

    /// The CA that signs new leaves now.
    pub fn ca(&self) -> Arc<LocalCa> {
        self.ca
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `ca` sign every leaf from now on: the cache is emptied, so the next handshake for
    /// any name gets a leaf from `ca`. Established connections are untouched.
    pub fn replace_ca(&self, ca: Arc<LocalCa>) {
        // Cache first, under its lock, so no lookup between the two steps returns an old leaf.
        let mut cache = self.lock();
        *self
            .ca
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = ca;
        cache.map.clear();
        cache.generation += 1;
    }

    /// The options in force.
    pub fn options(&self) -> &LeafOptions {
        &self.options
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn config_for_target(
        &self,
        target: &ServerTarget,
        alpn: &[Vec<u8>],
        now: Instant,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        if alpn.len() > MAX_ALPN {
            return Err(TlsError::BadAlpn("more than 8 protocols"));
        }
        if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(TlsError::BadAlpn(
                "protocol name empty or longer than 255 bytes",
            ));
        }
        let key: CacheKey = (target.clone(), alpn.to_vec());
        let (generation, ca) = {
            let mut cache = self.lock();
            if let Some(config) = cache.get(&key, now) {
                return Ok(config);
            }
            (cache.generation, self.ca())
        };
        // Mint outside the lock; two concurrent misses for one name may both mint, harmlessly.
        let config = Arc::new(self.mint(&ca, target, alpn)?);
        let mut cache = self.lock();
        if cache.generation == generation {
            cache.insert(key, config.clone(), now + self.options.ttl, now);
        }
        Ok(config)
    }

    fn mint(
        &self,
        ca: &LocalCa,
        target: &ServerTarget,
        alpn: &[Vec<u8>],
    ) -> Result<ServerConfig, TlsError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let name = target.to_string();
        params.subject_alt_names = vec![match target {
            ServerTarget::Dns(n) => SanType::DnsName(rcgen::Ia5String::try_from(n.as_str())?),
            ServerTarget::Ip(ip) => SanType::IpAddress(*ip),
        }];
        let mut dn = DistinguishedName::new();
        // The CN repeats a DNS name (SAN is what counts). Never an IP literal: OpenSSL checks a
        // CN that looks like a host name against the CA's DNS name constraints when the leaf
        // has no DNS SAN, and "127.0.0.1" would violate them.
        dn.push(
            DnType::CommonName,
            match target {
                ServerTarget::Dns(n) if n.len() <= 64 => n.clone(),
                _ => "mcpwatch leaf".to_string(),
            },
        );
        dn.push(DnType::OrganizationName, "mcpwatch");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = unix_now();
        let not_after = (now + self.options.validity.as_secs() as i64).min(ca.not_after_unix());
        rcgen_time(&mut params, now - LEAF_BACKDATE.as_secs() as i64, not_after);

        let (ca_cert, ca_key) = ca.signer();
        let cert = params.signed_by(&leaf_key, ca_cert, ca_key)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), ca.cert_der()], key_der)?;
        config.alpn_protocols = alpn.to_vec();
        config.session_storage =
            rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_PER_CONFIG);
        self.minted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(name = %name, "minted leaf certificate");
        Ok(config)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn issuer(options: LeafOptions) -> (tempfile::TempDir, LeafIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::load_or_create(dir.path(), "leaftest").unwrap());
        (dir, LeafIssuer::new(ca, options).unwrap())
    }

    /// A real in-memory handshake: a rustls client trusting only `root` connects to `config` as
    /// `name`; returns the chain the client saw (verified by webpki against `root`).
    pub(crate) fn handshake(
        config: Arc<ServerConfig>,
        root: rustls::pki_types::CertificateDer<'static>,
        name: &str,
    ) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), server_name).unwrap();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client.peer_certificates().unwrap().to_vec());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn leaves_have_own_key_san_eku_and_chain_to_the_ca() {
        let (_dir, issuer) = issuer(LeafOptions::default());
        let ca_der = issuer.ca().cert_der();
        let ca_spki = issuer.ca().public_key_der();
        let mut leaf_keys = Vec::new();
        for (name, want_ip) in [
            ("mcp.vendor.example", None),
            ("127.0.0.1", Some(vec![127u8, 0, 0, 1])),
            (
                "::1",
                Some({
                    let mut v = vec![0u8; 16];
                    v[15] = 1;
                    v
                }),
            ),
        ] {
            let config = issuer
                .server_config_for(name, &[b"http/1.1".to_vec()])
                .unwrap();
            let chain = handshake(config, ca_der.clone(), name).unwrap();
            assert_eq!(chain.len(), 2);
            assert_eq!(chain[1], ca_der);
            let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
            assert_ne!(
                leaf.public_key().raw,
                ca_spki.as_slice(),
                "leaf must not use the CA key"
            );
            leaf_keys.push(leaf.public_key().raw.to_vec());
            assert_eq!(
                leaf.issuer(),
                x509_parser::parse_x509_certificate(&ca_der)
                    .unwrap()
                    .1
                    .subject()
            );
            let san = leaf.subject_alternative_name().unwrap().unwrap().value;
            assert_eq!(san.general_names.len(), 1);
            match (&san.general_names[0], &want_ip) {
                (x509_parser::extensions::GeneralName::DNSName(d), None) => assert_eq!(*d, name),
                (x509_parser::extensions::GeneralName::IPAddress(ip), Some(want)) => {
                    assert_eq!(ip, &want.as_slice())
                }
                (other, _) => panic!("{name}: unexpected SAN {other:?}"),
            }
            let eku = leaf.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth && !eku.any);
            assert!(
                !leaf
                    .basic_constraints()
                    .unwrap()
                    .map(|b| b.value.ca)
                    .unwrap_or(false)
            );
            let now = unix_now();
            let nb = leaf.validity().not_before.timestamp();
            let na = leaf.validity().not_after.timestamp();
            assert!(
                nb <= now - 50 && nb >= now - 120,
                "notBefore backdated ~1 minute: {nb} vs {now}"
            );
            assert!(
                na > now && na <= now + 24 * 3600 + 5,
                "24 h validity: {na} vs {now}"
            );
            // A leaf for one name is not valid for another.
            let other = issuer
                .server_config_for(name, &[b"http/1.1".to_vec()])
                .unwrap();
            let err = handshake(other, ca_der.clone(), "other.example").unwrap_err();
            assert!(
                matches!(err, rustls::Error::InvalidCertificate(_)),
                "{err:?}"
            );
        }
        leaf_keys.sort();
        leaf_keys.dedup();
        assert_eq!(leaf_keys.len(), 3, "every leaf has its own key");
    }

    #[test]
    fn accepts_reasonable_names() {
        for (input, want) in [
            (
                "mcp.vendor.example",
                ServerTarget::Dns("mcp.vendor.example".into()),
            ),
            (
                "MCP.Vendor.Example",
                ServerTarget::Dns("mcp.vendor.example".into()),
            ),
            ("localhost", ServerTarget::Dns("localhost".into())),
            (
                "my_host.internal",
                ServerTarget::Dns("my_host.internal".into()),
            ),
            (
                "xn--bcher-kva.example",
                ServerTarget::Dns("xn--bcher-kva.example".into()),
            ),
            ("127.0.0.1", ServerTarget::Ip("127.0.0.1".parse().unwrap())),
            ("::1", ServerTarget::Ip("::1".parse().unwrap())),
            (
                "2001:db8::5",
                ServerTarget::Ip("2001:db8::5".parse().unwrap()),
            ),
        ] {
            assert_eq!(validate_server_name(input).unwrap(), want, "{input}");
        }
        let longest = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(longest.len(), 253);
        assert!(validate_server_name(&longest).is_ok());
    }

    #[test]
    fn hostile_names_are_clean_errors() {
        let label64 = format!("{}.example", "a".repeat(64));
        let label255 = format!("{}.example", "a".repeat(255));
        let long254 = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        let huge = "a.".repeat(40_000) + "com";
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("trailing dot", "example.com.".into()),
            ("only dot", ".".into()),
            ("leading dot", ".example.com".into()),
            ("double dot", "a..example.com".into()),
            ("label 64", label64),
            ("label 255", label255),
            ("254 bytes", long254),
            ("80k bytes", huge),
            ("wildcard", "*.example.com".into()),
            ("space", "exa mple.com".into()),
            ("nul", "example\0.com".into()),
            ("newline", "example.com\r\nHost: evil".into()),
            ("slash", "example.com/path".into()),
            ("port", "example.com:443".into()),
            ("unicode", "bücher.example".into()),
            ("rtl", "\u{202e}moc.example".into()),
            ("leading hyphen", "-example.com".into()),
            ("trailing hyphen", "example-.com".into()),
            ("numeric tld", "1.2.3.999".into()),
            ("bad ipv4", "256.1.1.1".into()),
            ("ipv6 brackets", "[::1]".into()),
            ("ipv6 zone", "fe80::1%eth0".into()),
            ("at", "user@example.com".into()),
        ];
        for (what, name) in &cases {
            match validate_server_name(name) {
                Err(TlsError::BadSni { .. }) => {}
                other => panic!("{what}: expected BadSni, got {other:?}"),
            }
        }
        let (_dir, issuer) = issuer(LeafOptions::default());
        for (what, name) in &cases {
            let got = issuer.server_config_for(name, &[b"http/1.1".to_vec()]);
            assert!(matches!(got, Err(TlsError::BadSni { .. })), "{what}");
        }
        assert_eq!(issuer.minted_count(), 0);
        assert_eq!(issuer.cache_len(), 0);
    }

    #[test]
    fn bad_options_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::load_or_create(dir.path(), "h").unwrap());
        let base = LeafOptions::default();
        for opts in [
            LeafOptions {
                ttl: Duration::from_secs(12 * 3600),
                ..base.clone()
            },
            LeafOptions {
                ttl: Duration::ZERO,
                ..base.clone()
            },
            LeafOptions {
                cache_capacity: 0,
                ..base.clone()
            },
            LeafOptions {
                validity: Duration::from_secs(60),
                ttl: Duration::from_secs(10),
                ..base.clone()
            },
            LeafOptions {
                validity: Duration::from_secs(365 * 24 * 3600),
                ..base.clone()
            },
        ] {
            assert!(
                matches!(
                    LeafIssuer::new(ca.clone(), opts.clone()),
                    Err(TlsError::BadOptions(_))
                ),
                "{opts:?}"
            );
        }
        assert!(LeafIssuer::new(ca, base).is_ok());
    }

    #[test]
    fn cache_is_bounded_lru_with_ttl() {
        let ttl = Duration::from_secs(3600);
        let (_dir, issuer) = issuer(LeafOptions {
            cache_capacity: 3,
            ttl,
            ..LeafOptions::default()
        });
        let h1 = vec![b"http/1.1".to_vec()];
        let t0 = Instant::now();
        let target = |s: &str| validate_server_name(s).unwrap();

        let a = issuer
            .config_for_target(&target("a.example"), &h1, t0)
            .unwrap();
        let a2 = issuer
            .config_for_target(&target("a.example"), &h1, t0)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(issuer.minted_count(), 1);
        // Same name, different ALPN list: a different config.
        let a_none = issuer
            .config_for_target(&target("a.example"), &[], t0)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &a_none));
        assert_eq!(a_none.alpn_protocols, Vec::<Vec<u8>>::new());
        assert_eq!(a.alpn_protocols, h1);
        assert_eq!(issuer.minted_count(), 2);

        issuer
            .config_for_target(&target("b.example"), &h1, t0)
            .unwrap();
        // Touch a so that (a, []) is the least recently used.
        issuer
            .config_for_target(&target("a.example"), &h1, t0)
            .unwrap();
        issuer
            .config_for_target(&target("c.example"), &h1, t0)
            .unwrap();
        assert_eq!(issuer.cache_len(), 3);
        assert_eq!(issuer.minted_count(), 4);
        // a (h1) survived, (a, []) was evicted.
        let a3 = issuer
            .config_for_target(&target("a.example"), &h1, t0)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &a3));
        assert_eq!(issuer.minted_count(), 4);
        issuer
            .config_for_target(&target("a.example"), &[], t0)
            .unwrap();
        assert_eq!(issuer.minted_count(), 5);
        assert_eq!(issuer.cache_len(), 3);

        // Flood with many names: never more than capacity.
        for i in 0..20 {
            issuer
                .config_for_target(&target(&format!("n{i}.example")), &h1, t0)
                .unwrap();
            assert!(issuer.cache_len() <= 3);
        }

        // TTL: just before expiry it is reused, at expiry it is re-minted.
        let z = issuer
            .config_for_target(&target("z.example"), &h1, t0)
            .unwrap();
        let before = issuer.minted_count();
        let z2 = issuer
            .config_for_target(&target("z.example"), &h1, t0 + ttl - Duration::from_secs(1))
            .unwrap();
        assert!(Arc::ptr_eq(&z, &z2));
        let z3 = issuer
            .config_for_target(&target("z.example"), &h1, t0 + ttl)
            .unwrap();
        assert!(!Arc::ptr_eq(&z, &z3));
        assert_eq!(issuer.minted_count(), before + 1);
    }

    #[test]
    fn bad_alpn_lists_are_rejected() {
        let (_dir, issuer) = issuer(LeafOptions::default());
        let target = validate_server_name("a.example").unwrap();
        let now = Instant::now();
        assert!(matches!(
            issuer.config_for_target(&target, &[Vec::new()], now),
            Err(TlsError::BadAlpn(_))
        ));
        assert!(matches!(
            issuer.config_for_target(&target, &[vec![b'x'; 256]], now),
            Err(TlsError::BadAlpn(_))
        ));
        let many: Vec<Vec<u8>> = (0..9).map(|i| format!("p{i}").into_bytes()).collect();
        assert!(matches!(
            issuer.config_for_target(&target, &many, now),
            Err(TlsError::BadAlpn(_))
        ));
        assert_eq!(issuer.minted_count(), 0);
    }
}
