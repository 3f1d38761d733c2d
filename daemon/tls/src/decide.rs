//! Which TLS connections to intercept and which to pass through untouched.
//!
//! Terminating TLS is only justified for traffic mcpwatch is meant to inspect (MCP servers);
//! everything else (banking, OS updates, identity providers) should flow through byte-identical
//! with its original certificate: scope creep of a local CA is itself a risk. The decision is
//! made from the ClientHello's SNI (or, when the client sent none, the destination IP) against
//! two pattern lists and a default:
//!
//! 1. a match in `never` passes through (it wins over `always`: when in doubt, do not intercept);
//! 2. a match in `always` intercepts;
//! 3. otherwise `default` (or `no_sni` when there is neither an SNI nor a matching IP).
//!
//! Patterns: `mcp.example.com` (exact, case-insensitive), `*.example.com` (any name with at
//! least one more label in front, not `example.com` itself), an IP literal (`127.0.0.1`, `::1`)
//! or a CIDR block (`10.0.0.0/8`, `fd00::/8`).

use std::net::IpAddr;

use crate::TlsError;

/// What to do with a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsAction {
    /// Terminate TLS with a leaf from the local CA and inspect.
    Intercept,
    /// Relay the bytes untouched; the client sees the upstream's certificate.
    PassThrough,
}

/// One host pattern (see the module docs for the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An exact DNS name (lower-case, no trailing dot).
    Exact(String),
    /// `*.suffix`: stores `.suffix`.
    Wildcard(String),
    /// An IP network; a single address is a full-length prefix.
    Ip { addr: IpAddr, prefix: u8 },
}

impl HostPattern {
    /// Parses one pattern; a typo is an error, never a pattern that silently matches nothing.
    pub fn parse(pattern: &str) -> Result<HostPattern, TlsError> {
        let bad = |reason: &'static str| TlsError::BadPattern {
            pattern: pattern.to_string(),
            reason,
        };
        let p = pattern.trim();
        if p.is_empty() {
            return Err(bad("empty"));
        }
        if let Some((addr, prefix)) = p.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP network"))?;
            let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(bad("prefix length too long"));
            }
            return Ok(HostPattern::Ip {
                addr: mask(addr, prefix),
                prefix,
            });
        }
        if let Ok(addr) = p.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(HostPattern::Ip { addr, prefix });
        }
        let p = p.strip_suffix('.').unwrap_or(p).to_ascii_lowercase();
        let (wild, name) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        if name.contains('*') {
            return Err(bad(
                "'*' is only allowed as the whole first label (*.example.com)",
            ));
        }
        crate::leaf::validate_server_name(name).map_err(|_| bad("not a valid host name"))?;
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Does `host` (an SNI or an IP literal) match? Case-insensitive, trailing dot ignored.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            HostPattern::Ip { addr, prefix } => match host.parse::<IpAddr>() {
                Ok(ip) => ip_in(ip, *addr, *prefix),
                Err(_) => false,
            },
        }
    }

    /// Does this pattern match the IP address `ip`?
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            HostPattern::Ip { addr, prefix } => ip_in(ip, *addr, *prefix),
            _ => false,
        }
    }
}

fn ip_in(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match (ip, net) {
        // An IPv4-mapped IPv6 address is the IPv4 address.
        (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        (ip, _) => ip,
    };
    ip.is_ipv4() == net.is_ipv4() && mask(ip, prefix) == net
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// The `[tls.scope]`-style configuration, as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsScopeConfig {
    /// Hosts to intercept even when `default` is `pass_through`.
    #[serde(default)]
    pub always: Vec<String>,
    /// Hosts never to intercept (wins over `always`).
    #[serde(default)]
    pub never: Vec<String>,
    /// What to do with a host in neither list.
    #[serde(default = "default_action")]
    pub default: TlsAction,
    /// What to do when the client sent no SNI and the destination IP matches no pattern;
    /// `None` means the same as `default`.
    #[serde(default)]
    pub no_sni: Option<TlsAction>,
}

fn default_action() -> TlsAction {
    TlsAction::PassThrough
}

impl Default for TlsScopeConfig {
    fn default() -> Self {
        TlsScopeConfig {
            always: Vec::new(),
            never: Vec::new(),
            default: default_action(),
            no_sni: None,
        }
    }
}

/// Compiled scope: see the module docs for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsScope {
    pub always: Vec<HostPattern>,
    pub never: Vec<HostPattern>,
    pub default: TlsAction,
    pub no_sni: TlsAction,
}

impl TlsScope {
    /// Compiles a config; the first bad pattern is the error.
    pub fn from_config(config: &TlsScopeConfig) -> Result<TlsScope, TlsError> {
        let compile = |list: &[String]| {
            list.iter()
                .map(|p| HostPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TlsScope {
            always: compile(&config.always)?,
            never: compile(&config.never)?,
            default: config.default,
            no_sni: config.no_sni.unwrap_or(config.default),
        })
    }

    /// Decision from the SNI alone (`None`: the client sent no SNI → `no_sni`).
    pub fn decide(&self, sni: Option<&str>) -> TlsAction {
        match sni {
            Some(host) => self.decide_by(|p| p.matches(host)).unwrap_or(self.default),
            None => self.no_sni,
        }
    }

    /// Decision from the SNI when there is one, else from the original destination IP (matched
    /// against IP patterns), else `no_sni`.
    pub fn decide_target(&self, sni: Option<&str>, destination: IpAddr) -> TlsAction {
        match sni {
            Some(_) => self.decide(sni),
            None => self
                .decide_by(|p| p.matches_ip(destination))
                .unwrap_or(self.no_sni),
        }
    }

    fn decide_by(&self, matches: impl Fn(&HostPattern) -> bool) -> Option<TlsAction> {
        if self.never.iter().any(&matches) {
            Some(TlsAction::PassThrough)
        } else if self.always.iter().any(&matches) {
            Some(TlsAction::Intercept)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(always: &[&str], never: &[&str], default: TlsAction) -> TlsScope {
        TlsScope::from_config(&TlsScopeConfig {
            always: always.iter().map(|s| s.to_string()).collect(),
            never: never.iter().map(|s| s.to_string()).collect(),
            default,
            no_sni: None,
        })
        .unwrap()
    }

    #[test]
    fn patterns_match_as_documented() {
        use TlsAction::*;
        let s = scope(
            &[
                "mcp.vendor.example",
                "*.mcp.example",
                "127.0.0.1",
                "10.0.0.0/8",
                "fd00::/8",
            ],
            &["*.bank.example", "secure.mcp.example", "10.9.0.0/16"],
            PassThrough,
        );
        for (host, want) in [
            ("mcp.vendor.example", Intercept),
            ("MCP.Vendor.Example.", Intercept),
            ("other.vendor.example", PassThrough),
            ("a.mcp.example", Intercept),
            ("a.b.mcp.example", Intercept),
            ("mcp.example", PassThrough),
            ("xmcp.example", PassThrough),
            ("secure.mcp.example", PassThrough),
            ("www.bank.example", PassThrough),
            ("127.0.0.1", Intercept),
            ("127.0.0.2", PassThrough),
            ("10.1.2.3", Intercept),
            ("10.9.1.1", PassThrough),
            ("fd12::1", Intercept),
            ("", PassThrough),
        ] {
            assert_eq!(s.decide(Some(host)), want, "{host}");
        }
        assert_eq!(s.decide(None), PassThrough);
        assert_eq!(
            s.decide_target(None, "10.1.1.1".parse().unwrap()),
            Intercept
        );
        assert_eq!(
            s.decide_target(None, "::ffff:10.1.1.1".parse().unwrap()),
            Intercept
        );
        assert_eq!(
            s.decide_target(None, "10.9.1.1".parse().unwrap()),
            PassThrough
        );
        assert_eq!(
            s.decide_target(None, "192.0.2.1".parse().unwrap()),
            PassThrough
        );
        assert_eq!(
            s.decide_target(Some("mcp.vendor.example"), "192.0.2.1".parse().unwrap()),
            Intercept
        );

        let all = scope(&[], &["*.bank.example"], Intercept);
        assert_eq!(all.decide(Some("x.example")), Intercept);
        assert_eq!(all.decide(Some("x.bank.example")), PassThrough);
        assert_eq!(all.decide(None), Intercept);
    }

    #[test]
    fn bad_patterns_are_errors() {
        for p in [
            "",
            "*",
            "*.",
            "a.*.example",
            "foo*.example",
            "10.0.0.0/33",
            "::/129",
            "1.2.3.4/x",
            "exa mple.com",
            "**.example",
        ] {
            assert!(
                matches!(HostPattern::parse(p), Err(TlsError::BadPattern { .. })),
                "{p:?}"
            );
        }
    }

    #[test]
    fn config_is_strict_serde() {
        let cfg: TlsScopeConfig = serde_json::from_str(
            r#"{"always":["*.mcp.example"],"default":"intercept","no_sni":"pass_through"}"#,
        )
        .unwrap();
        let s = TlsScope::from_config(&cfg).unwrap();
        assert_eq!(s.default, TlsAction::Intercept);
        assert_eq!(s.decide(None), TlsAction::PassThrough);
        let defaults: TlsScopeConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, TlsScopeConfig::default());
        assert!(serde_json::from_str::<TlsScopeConfig>(r#"{"alwayz":[]}"#).is_err());
        assert!(serde_json::from_str::<TlsScopeConfig>(r#"{"default":"maybe"}"#).is_err());
    }
}
