//! Listening sockets for weir's servers, bound before anything announces
//! them: a port that is taken is an error naming the address at start-up,
//! not a broker that says it serves and then exits or runs without it.

use std::io;

use tonic::transport::server::Router;

use super::net::SocketAddr;

/// A bound TCP listener for a plain (HTTP/1) server: metrics, the gateway.
pub type TcpListener = tokio::net::TcpListener;

/// Binds `addr`, naming `what` serves there if it fails.
pub async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError { what: what.to_owned(), addr, source })
}

/// A listener that could not be bound.
#[derive(Debug)]
pub struct ListenError {
    pub what: String,
    pub addr: SocketAddr,
    pub source: io::Error,
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen for {} on {}: {}", self.what, self.addr, self.source)
    }
}

impl std::error::Error for ListenError {}

/// The gRPC listener, bound.
#[derive(Debug)]
pub struct GrpcListener {
    addr: SocketAddr,
    #[cfg(not(madsim))]
    incoming: tonic::transport::server::TcpIncoming,
}

impl GrpcListener {
    /// Binds `addr` for gRPC. (Inside the simulator the transport binds
    /// when it serves; a simulated address is never taken twice.)
    pub async fn bind(addr: SocketAddr) -> Result<Self, ListenError> {
        #[cfg(not(madsim))]
        {
            let incoming = tonic::transport::server::TcpIncoming::bind(addr)
                .map_err(|source| ListenError { what: "gRPC".into(), addr, source })?
                .with_nodelay(Some(true));
            Ok(Self { addr, incoming })
        }
        #[cfg(madsim)]
        {
            Ok(Self { addr })
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `signal` completes, then lets in-flight calls
    /// finish.
    #[cfg(not(madsim))]
    pub async fn serve(
        self,
        router: LayeredRouter,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        router.serve_with_incoming_shutdown(self.incoming, signal).await
    }

    #[cfg(madsim)]
    pub async fn serve<L>(
        self,
        router: Router<L>,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        router.serve_with_shutdown(self.addr, signal).await
    }
}

/// Rewrites, at the transport, statuses a gRPC server's own machinery
/// produces before a handler runs (a request over the decode limit comes
/// back as a bare `OUT_OF_RANGE`), so callers see weir's typed errors.
pub type StatusRewrite = fn(&tonic::Status) -> Option<tonic::Status>;

/// The broker's router: its services behind [`StatusRewriteLayer`]. (The
/// simulator's transport names its layer types privately: there the router
/// stays generic.)
#[cfg(not(madsim))]
pub type LayeredRouter = Router<tower::layer::util::Stack<StatusRewriteLayer, tower::layer::util::Identity>>;

/// A server layer that applies a [`StatusRewrite`] to every status
/// returned in a response's headers. (The simulator's transport takes no
/// layers: there it does nothing.)
#[derive(Debug, Clone, Copy)]
pub struct StatusRewriteLayer {
    pub rewrite: StatusRewrite,
}

impl<S> tower::Layer<S> for StatusRewriteLayer {
    type Service = StatusRewriteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusRewriteService { inner, rewrite: self.rewrite }
    }
}

#[derive(Debug, Clone)]
#[cfg_attr(madsim, allow(dead_code))] // the simulator's transport takes no layers
pub struct StatusRewriteService<S> {
    inner: S,
    rewrite: StatusRewrite,
}

#[cfg(not(madsim))]
impl<S, Request, Body> tower::Service<Request> for StatusRewriteService<S>
where
    S: tower::Service<Request, Response = tonic::codegen::http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (called, rewrite) = (self.inner.call(request), self.rewrite);
        Box::pin(async move {
            let mut response = called.await?;
            let replaced = tonic::Status::from_header_map(response.headers()).and_then(|status| rewrite(&status));
            if let Some(replaced) = replaced {
                let headers = response.headers_mut();
                headers.remove("grpc-status-details-bin");
                let _ = replaced.add_header(headers);
            }
            Ok(response)
        })
    }
}
