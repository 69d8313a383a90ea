//! Host networking the rest of weir may not touch directly.

use std::io;
use std::net::TcpListener;

/// An address is plain data; the rest of weir names it from here so the
/// seam check can keep `std::net` (sockets) out of it.
pub use std::net::{IpAddr, SocketAddr};

/// The range [`free_loopback_addr`] draws ports from: below the kernel's
/// ephemeral range (32768-60999), which outgoing connections take from.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_768;

/// A loopback address with a port that was free a moment ago: for tests and
/// tools that start a server on the real network. The address is a random
/// one of 127.0.0.0/8 other than 127.0.0.1, and the port one below the
/// ephemeral range, so neither the broker's own outgoing connections nor
/// another test's server take it by the time the server binds it.
pub fn free_loopback_addr() -> io::Result<SocketAddr> {
    use std::hash::{BuildHasher, Hasher};
    let mut last_error = None;
    for attempt in 0u32..256 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u32(attempt);
        let bits = hasher.finish();
        let octet = |shift: u32| 1 + ((bits >> shift) % 254) as u8;
        let ip = std::net::Ipv4Addr::new(127, octet(0), octet(8), octet(16));
        let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
        let port = TEST_PORTS.start + ((bits >> 24) % span) as u16;
        match TcpListener::bind((ip, port)) {
            Ok(listener) => return listener.local_addr(),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free loopback port")))
}
