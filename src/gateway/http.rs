//! Just enough HTTP/1.1 for a JSON API: requests with a `Content-Length`
//! body (no chunked uploads), keep-alive, pipelining, and limits on what a
//! client may make the server hold. Runs on the runtime's sockets, so the
//! gateway works inside the simulator too.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request line and headers.
pub const HEAD_BYTES_MAX: usize = 16 << 10;
/// Largest request body.
pub const BODY_BYTES_MAX: usize = 8 << 20;
const HEADERS_MAX: usize = 64;
/// How long a connection may sit between requests, or take over one.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, split at `/`, each segment percent-decoded.
    pub segments: Vec<String>,
    /// Query parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request could not be read: answered with `status`, then the
/// connection closes (its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub status: u16,
    pub message: String,
}

fn malformed(status: u16, message: impl Into<String>) -> Malformed {
    Malformed { status, message: message.into() }
}

/// Reads requests off one connection.
pub struct Reader<S> {
    stream: S,
    buffer: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    pub fn new(stream: S) -> Self {
        Self { stream, buffer: Vec::new() }
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The next request; `Ok(None)` when the client closed the connection
    /// (or went idle) between requests.
    pub async fn next(&mut self) -> Result<Option<Request>, Malformed> {
        let (head, body_len, request) = loop {
            match parse_head(&self.buffer)? {
                Some(parsed) => break parsed,
                None if self.buffer.len() >= HEAD_BYTES_MAX => {
                    return Err(malformed(431, format!("request head over {HEAD_BYTES_MAX} bytes")))
                }
                None => {
                    if !self.fill().await? {
                        return if self.buffer.is_empty() {
                            Ok(None)
                        } else {
                            Err(malformed(400, "the connection closed inside a request head"))
                        };
                    }
                }
            }
        };
        while self.buffer.len() < head + body_len {
            if !self.fill().await? {
                return Err(malformed(400, "the connection closed inside a request body"));
            }
        }
        let body = self.buffer[head..head + body_len].to_vec();
        self.buffer.drain(..head + body_len);
        Ok(Some(Request { body, ..request }))
    }

    /// Reads more; false at end of stream or after the idle timeout.
    async fn fill(&mut self) -> Result<bool, Malformed> {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(IDLE_TIMEOUT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => Ok(false),
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Ok(Err(error)) => Err(malformed(400, format!("reading the request: {error}"))),
        }
    }
}

/// The head's length, the body's, and the request without its body, once
/// `buffer` holds a whole head.
fn parse_head(buffer: &[u8]) -> Result<Option<(usize, usize, Request)>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(malformed(431, format!("over {HEADERS_MAX} headers"))),
        Err(error) => return Err(malformed(400, format!("not an HTTP/1.1 request: {error}"))),
    };
    let method = parsed.method.unwrap_or_default().to_owned();
    let target = parsed.path.unwrap_or_default();
    let version = parsed.version.unwrap_or(1);
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some_and(|te| te != "identity") {
        return Err(malformed(411, "chunked request bodies are not supported: send a Content-Length"));
    }
    let body_len = match header("content-length") {
        None => 0,
        Some(len) => len.parse::<usize>().map_err(|_| malformed(400, format!("Content-Length {len:?}")))?,
    };
    if body_len > BODY_BYTES_MAX {
        return Err(malformed(413, format!("a body of {body_len} bytes is over the {BODY_BYTES_MAX} allowed")));
    }
    let connection = header("connection").unwrap_or_default();
    let keep_alive = if version == 0 { connection == "keep-alive" } else { connection != "close" };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(malformed(400, format!("request target {target:?} is not a path")));
    }
    let segments = path.split('/').filter(|s| !s.is_empty()).map(decode).collect::<Result<_, _>>()?;
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(key)?, decode(value)?))
        })
        .collect::<Result<_, Malformed>>()?;
    Ok(Some((head, body_len, Request { method, segments, query, body: Vec::new(), keep_alive })))
}

/// Percent-decoding (and `+` as a space, as forms write it).
fn decode(text: &str) -> Result<String, Malformed> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| malformed(400, format!("bad percent-encoding in {text:?}")))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| malformed(400, format!("{text:?} is not UTF-8 once decoded")))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// Writes one JSON response.
pub async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(usize, usize, Request)>, Malformed> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn a_request_head_gives_method_path_query_and_body_length() {
        let text =
            "POST /v1/topics/my%20topic/records?acks=all&x=a+b HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n";
        let (head, body, request) = parse(text).unwrap().unwrap();
        assert_eq!(head, text.len());
        assert_eq!(body, 12);
        assert_eq!(request.method, "POST");
        assert_eq!(request.segments, ["v1", "topics", "my topic", "records"]);
        assert_eq!(request.param("acks"), Some("all"));
        assert_eq!(request.param("x"), Some("a b"));
        assert!(request.keep_alive);
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert_eq!(parse("GET /v1/health HTTP/1.1\r\nHost:").unwrap(), None);
    }

    #[test]
    fn what_the_server_will_not_read_is_refused_with_a_status() {
        let chunked = "POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked).unwrap_err().status, 411);
        let huge = format!("POST /v1/x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", BODY_BYTES_MAX + 1);
        assert_eq!(parse(&huge).unwrap_err().status, 413);
        assert_eq!(parse("POST /v1/x HTTP/1.1\r\nContent-Length: ten\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("GET /v1/%zz HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("NOT HTTP AT ALL\r\n\r\n").unwrap_err().status, 400);
        let close = parse("GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!close.2.keep_alive);
        let old = parse("GET /v1/health HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.2.keep_alive, "HTTP/1.0 closes unless asked to keep alive");
    }
}
