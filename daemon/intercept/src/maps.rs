//! Byte-for-byte mirrors of the map keys and values in `ebpf/mcpwatch.h`, and the
//! conversions between them and the crate's public types. Kept apart so a layout
//! change is reviewed against the header in one place; sizes are checked at
//! compile time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::Origin;

pub(crate) const AF_INET: u16 = 2;
#[cfg(test)]
pub(crate) const AF_INET6: u16 = 10;

/// `struct mcpw_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawConfig {
    pub listen_port: u32,
    pub mark: u32,
    pub daemon_tgid: u32,
    pub all_ports: u32,
    pub agents: u32,
    pub classify: u32,
    pub watch_level: u32,
    pub refuse_udp: u32,
    pub watch_cgid: u64,
}

/// `struct mcpw_agent`: a value of `agents` and `pending`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawAgent {
    pub flags: u32,
    pub ppid: u32,
    pub since_ns: u64,
}

/// `struct mcpw_comm`: a key of `agent_comms`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawComm {
    pub comm: [u8; 16],
}

/// `struct mcpw_event`: a record of the `events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawEvent {
    pub tgid: u32,
    pub ppid: u32,
    pub ktime_ns: u64,
}

/// `struct mcpw_origin`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawOrigin {
    pub dst_ip: [u8; 16],
    pub dst_port: u16,
    pub family: u16,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    pub _pad0: u32,
    pub cgroup_id: u64,
    pub cookie: u64,
    pub closed_ns: u64,
    pub start_ns: u64,
    pub exec_ns: u64,
}

/// `struct mcpw_peer_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawPeerKey {
    pub ip: [u8; 16],
    pub port: u16,
    pub _pad0: u16,
}

/// `struct mcpw_exec`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawExec {
    pub comm: [u8; 16],
    pub ktime_ns: u64,
    pub ppid: u32,
    pub uid: u32,
}

// SAFETY: all of these are #[repr(C)] structs of integers and byte arrays with every
// padding byte spelled out as a field, so any bit pattern is a valid value.
unsafe impl aya::Pod for RawConfig {}
unsafe impl aya::Pod for RawOrigin {}
unsafe impl aya::Pod for RawPeerKey {}
unsafe impl aya::Pod for RawExec {}
unsafe impl aya::Pod for RawAgent {}
unsafe impl aya::Pod for RawComm {}

const _: () = {
    assert!(size_of::<RawConfig>() == 40);
    assert!(size_of::<RawAgent>() == 16);
    assert!(size_of::<RawComm>() == 16);
    assert!(size_of::<RawEvent>() == 16);
    assert!(size_of::<RawOrigin>() == 96);
    assert!(size_of::<RawPeerKey>() == 20);
    assert!(size_of::<RawExec>() == 32);
};

/// The C string in a `comm` field, lossily decoded.
pub(crate) fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// An address as the kernel programs key it: IPv4 as `::ffff:a.b.c.d`, IPv6 as is.
pub(crate) fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The key the sock_ops program stores a connection under, for the peer address
/// the daemon sees on `accept`.
pub(crate) fn peer_key(peer: SocketAddr) -> RawPeerKey {
    RawPeerKey {
        ip: ip_key(peer.ip()),
        port: peer.port(),
        _pad0: 0,
    }
}

impl RawOrigin {
    /// The original destination: IPv4 for IPv4 sockets and for v4-mapped
    /// destinations of IPv6 sockets, IPv6 otherwise.
    pub(crate) fn dst(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.dst_ip);
        match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, self.dst_port)),
            None if self.family == AF_INET => {
                // Not produced by connect4 (it always stores the mapped form);
                // decode defensively rather than invent an address.
                let o = self.dst_ip;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(o[12], o[13], o[14], o[15]),
                    self.dst_port,
                ))
            }
            None => SocketAddr::V6(SocketAddrV6::new(v6, self.dst_port, 0, 0)),
        }
    }

    pub(crate) fn to_origin(self) -> Origin {
        Origin {
            dst: self.dst(),
            pid: self.pid,
            tgid: self.tgid,
            uid: self.uid,
            gid: self.gid,
            comm: comm_str(&self.comm),
            cgroup_id: self.cgroup_id,
            start_ns: self.start_ns,
            exec_ns: self.exec_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_keys_normalise_v4_and_v4_mapped_alike() {
        let v4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(peer_key(v4), peer_key(mapped));
        let k = peer_key(v4);
        assert_eq!(&k.ip[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k.ip[12..], &[127, 0, 0, 1]);
        assert_eq!(k.port, 40000);
        let v6: SocketAddr = "[::1]:40000".parse().unwrap();
        assert_ne!(peer_key(v6), k);
        assert_eq!(peer_key(v6).ip[15], 1);
    }

    #[test]
    fn origin_dst_decodes_each_family() {
        let mut o = RawOrigin {
            dst_ip: Ipv4Addr::new(127, 0, 0, 3).to_ipv6_mapped().octets(),
            dst_port: 18001,
            family: AF_INET,
            pid: 1,
            tgid: 1,
            uid: 0,
            gid: 0,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            _pad0: 0,
            cgroup_id: 9,
            cookie: 1,
            closed_ns: 0,
            start_ns: 0,
            exec_ns: 0,
        };
        assert_eq!(o.dst(), "127.0.0.3:18001".parse::<SocketAddr>().unwrap());
        o.family = AF_INET6; // v4-mapped destination of an IPv6 socket
        assert_eq!(o.dst(), "127.0.0.3:18001".parse::<SocketAddr>().unwrap());
        o.dst_ip = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(o.dst(), "[::1]:18001".parse::<SocketAddr>().unwrap());
        assert_eq!(o.to_origin().comm, "python3");
        assert_eq!(comm_str(&[b'x'; 16]), "x".repeat(16));
    }
}
