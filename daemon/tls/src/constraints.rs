//! X.509 name constraints for the local CA, derived from the hosts the `[tls]` scope intercepts.
//!
//! Why: a local interception CA that every client trusts could vouch for any name on earth; a
//! copied key would be a universal impersonation tool. A critical NameConstraints extension
//! limits what the CA can ever sign to the names mcpwatch intercepts, and real verifiers
//! (OpenSSL, so curl, Python and Node; rustls/webpki; Go) reject a leaf for any other name
//! even when the CA key signed it.
//!
//! Mapping (RFC 5280 4.2.1.10): an exact host `mcp.example.com` and a wildcard `*.example.com`
//! become dNSName subtrees `mcp.example.com` and `example.com` (X.509 can only say "this name
//! and every name below it", so each also permits its subdomains, and a wildcard its apex). IP
//! patterns become iPAddress subtrees; when nothing is intercepted by IP, all IPv4 and IPv6
//! addresses are excluded. `never` patterns are not expressed (they only narrow further, and
//! the proxy never mints a leaf for them). A scope that intercepts every host
//! (`default = "intercept"`) cannot be constrained: [`scope_constraints`] says so instead of
//! adding a meaningless extension.

use std::net::IpAddr;

use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};

use crate::decide::{HostPattern, TlsAction, TlsScope};

/// A dNSName under the reserved `.invalid` TLD (RFC 2606): permitted when the scope
/// intercepts nothing, so the CA can sign no real name at all.
const NOTHING: &str = "invalid";

/// The constraints a CA for `scope` should carry, or why it can carry none.
pub fn scope_constraints(scope: &TlsScope) -> Result<NameConstraints, &'static str> {
    if scope.default == TlsAction::Intercept {
        return Err(
            "[tls] default = \"intercept\": every host may be intercepted, so no name constraint is possible",
        );
    }
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<(IpAddr, u8)> = Vec::new();
    for p in &scope.always {
        match p {
            HostPattern::Exact(name) => dns.push(name.clone()),
            HostPattern::Wildcard(suffix) => dns.push(suffix.trim_start_matches('.').to_string()),
            HostPattern::Ip { addr, prefix } => ips.push((*addr, *prefix)),
        }
    }
    dns.sort();
    dns.dedup();
    // A name below another listed name adds nothing (the subtree already holds it).
    let covered =
        |n: &str, by: &str| n != by && n.ends_with(by) && n[..n.len() - by.len()].ends_with('.');
    let dns: Vec<String> = dns
        .iter()
        .filter(|n| !dns.iter().any(|b| covered(n, b)))
        .cloned()
        .collect();
    ips.sort();
    ips.dedup();

    let mut permitted: Vec<GeneralSubtree> = dns.into_iter().map(GeneralSubtree::DnsName).collect();
    let mut excluded = Vec::new();
    if scope.no_sni == TlsAction::Intercept {
        // A client without SNI gets a leaf for whatever IP it dialled: IPs stay unconstrained.
    } else if ips.is_empty() {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
    } else {
        permitted.extend(
            ips.into_iter()
                .map(|(a, p)| GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(a, p))),
        );
    }
    if !permitted
        .iter()
        .any(|s| matches!(s, GeneralSubtree::DnsName(_)))
    {
        // No DNS subtree would leave every DNS name permitted: permit only `.invalid`.
        permitted.insert(0, GeneralSubtree::DnsName(NOTHING.to_string()));
    }
    Ok(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    })
}

/// One line for `mcpwatch status` / `ca show`: what the CA may sign.
pub fn describe(constraints: Option<&NameConstraints>) -> String {
    let Some(nc) = constraints else {
        return "none: the CA may sign any name".to_string();
    };
    let list = |subtrees: &[GeneralSubtree]| -> Vec<String> {
        subtrees
            .iter()
            .map(|s| match s {
                GeneralSubtree::DnsName(n) if n == NOTHING => "no DNS name".to_string(),
                GeneralSubtree::DnsName(n) => format!("DNS {n}"),
                GeneralSubtree::IpAddress(c) => cidr_text(c),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let mut out = format!("permitted: {}", list(&nc.permitted_subtrees).join(", "));
    if !nc.excluded_subtrees.is_empty() {
        out.push_str(&format!(
            "; excluded: {}",
            list(&nc.excluded_subtrees).join(", ")
        ));
    }
    out
}

fn cidr_text(c: &CidrSubnet) -> String {
    let (addr, prefix) = match c {
        CidrSubnet::V4(a, m) => (
            IpAddr::from(*a),
            m.iter().map(|b| b.count_ones()).sum::<u32>(),
        ),
        CidrSubnet::V6(a, m) => (
            IpAddr::from(*a),
            m.iter().map(|b| b.count_ones()).sum::<u32>(),
        ),
    };
    format!("IP {addr}/{prefix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::TlsScopeConfig;

    fn scope(always: &[&str], default: TlsAction, no_sni: Option<TlsAction>) -> TlsScope {
        TlsScope::from_config(&TlsScopeConfig {
            always: always.iter().map(|s| s.to_string()).collect(),
            never: vec!["*.bank.example".into()],
            default,
            no_sni,
        })
        .unwrap()
    }

    #[test]
    fn hosts_map_to_subtrees() {
        let nc = scope_constraints(&scope(
            &[
                "mcp.vendor.example",
                "*.mcp.internal",
                "a.mcp.internal",
                "MCP.Vendor.Example",
            ],
            TlsAction::PassThrough,
            None,
        ))
        .unwrap();
        assert_eq!(
            nc.permitted_subtrees,
            vec![
                GeneralSubtree::DnsName("mcp.internal".into()),
                GeneralSubtree::DnsName("mcp.vendor.example".into())
            ]
        );
        assert_eq!(
            nc.excluded_subtrees,
            vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16]))
            ],
            "no IP intercepted: every IP excluded"
        );
        assert_eq!(
            describe(Some(&nc)),
            "permitted: DNS mcp.internal, DNS mcp.vendor.example; excluded: IP 0.0.0.0/0, IP ::/0"
        );

        let nc = scope_constraints(&scope(
            &["localhost", "127.0.0.1", "10.0.0.0/8"],
            TlsAction::PassThrough,
            None,
        ))
        .unwrap();
        assert!(nc.excluded_subtrees.is_empty());
        assert_eq!(
            describe(Some(&nc)),
            "permitted: DNS localhost, IP 10.0.0.0/8, IP 127.0.0.1/32"
        );

        // Intercepting IPs without SNI: IPs cannot be constrained, DNS still is.
        let nc = scope_constraints(&scope(
            &["localhost"],
            TlsAction::PassThrough,
            Some(TlsAction::Intercept),
        ))
        .unwrap();
        assert_eq!(
            nc.permitted_subtrees,
            vec![GeneralSubtree::DnsName("localhost".into())]
        );
        assert!(nc.excluded_subtrees.is_empty());

        // Nothing intercepted: only the reserved .invalid name, no IP.
        let nc = scope_constraints(&scope(&[], TlsAction::PassThrough, None)).unwrap();
        assert_eq!(
            nc.permitted_subtrees,
            vec![GeneralSubtree::DnsName("invalid".into())]
        );
        assert_eq!(nc.excluded_subtrees.len(), 2);
        assert!(describe(Some(&nc)).starts_with("permitted: no DNS name;"));
    }

    /// rustls/webpki enforce the extension: a leaf the same CA key signed for an unlisted name
    /// (or an IP) is rejected, a listed one accepted.
    #[test]
    fn webpki_rejects_leaves_outside_the_constraints() {
        let tmp = tempfile::tempdir().unwrap();
        let nc = scope_constraints(&scope(
            &["mcp.vendor.example", "*.mcp.internal"],
            TlsAction::PassThrough,
            None,
        ))
        .unwrap();
        let ca = std::sync::Arc::new(
            crate::LocalCa::load_or_create_constrained(tmp.path(), "nc", Some(&nc)).unwrap(),
        );
        let der = ca.cert_der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS)
            .expect("NameConstraints present");
        assert!(ext.critical, "NameConstraints must be critical");
        let issuer = crate::LeafIssuer::new(ca.clone(), crate::LeafOptions::default()).unwrap();
        for (name, ok) in [
            ("mcp.vendor.example", true),
            ("a.mcp.internal", true),
            ("www.bank.example", false),
            ("mcp.vendor.example.evil", false),
            ("127.0.0.1", false),
        ] {
            let config = issuer.server_config_for(name, &[]).unwrap();
            let got = crate::leaf::tests::handshake(config, ca.cert_der(), name);
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
        }
    }

    #[test]
    fn intercept_everything_has_no_constraint() {
        let err =
            scope_constraints(&scope(&["x.example"], TlsAction::Intercept, None)).unwrap_err();
        assert!(err.contains("no name constraint is possible"), "{err}");
        assert_eq!(describe(None), "none: the CA may sign any name");
    }
}
