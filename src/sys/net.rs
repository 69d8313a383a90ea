//! Host networking the rest of weir may not touch directly.

use std::io;
use std::net::TcpListener;

/// An address is plain data; the rest of weir names it from here so the
/// seam check can keep `std::net` (sockets) out of it.
pub use std::net::{IpAddr, SocketAddr};

/// A loopback address with a port that was free a moment ago: for tests and
/// tools that start a server on the real network.
pub fn free_loopback_addr() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}
