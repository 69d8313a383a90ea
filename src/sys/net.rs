//! Host networking the rest of weir may not touch directly.

use std::io;
use std::net::TcpListener;

/// An address is plain data; the rest of weir names it from here so the
/// seam check can keep `std::net` (sockets) out of it.
pub use std::net::{IpAddr, SocketAddr};

/// A loopback address with a port that was free a moment ago: for tests and
/// tools that start a server on the real network. The address is a random
/// one of 127.0.0.0/8 other than 127.0.0.1, whose ephemeral ports outgoing
/// connections take: a port picked there could be gone by the time the
/// server binds it.
pub fn free_loopback_addr() -> io::Result<SocketAddr> {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let bits = hasher.finish();
    let octet = |shift: u32| 1 + ((bits >> shift) % 254) as u8;
    let ip = std::net::Ipv4Addr::new(127, octet(0), octet(8), octet(16));
    TcpListener::bind((ip, 0))?.local_addr()
}
