//! Clients and servers on 127.0.0.1: the recording HTTP upstream, a raw
//! HTTP/1.1 client that sends the request target byte for byte, the gRPC
//! client of Portcullis, and a TCP echo server.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse as CheckHttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response as HyperResponse};
use portcullis_testkit::Check;
use serde_json::Value;
use tonic::transport::Channel;

/// How long the raw client waits on a silent socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------

/// One request as the application received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as received (path and query).
    pub path: String,
    /// Header names lowercase, in arrival order, duplicates kept.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// Every value of a header, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// An HTTP/1.1 application on 127.0.0.1:0 that records every request and
/// answers `200 upstream ok`. Runs on its own runtime, so tests can be plain
/// `#[test]`s and share it.
pub struct EchoUpstream {
    port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("echo-upstream")
            .enable_all()
            .build()
            .expect("echo upstream runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("echo upstream bind");
        let port = listener.local_addr().expect("echo upstream address").port();
        listener
            .set_nonblocking(true)
            .expect("echo upstream nonblocking");
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorder = Arc::clone(&requests);
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => panic!("echo upstream listener: {e}"),
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorder = Arc::clone(&recorder);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let recorder = Arc::clone(&recorder);
                        async move {
                            let recorded = Recorded {
                                method: req.method().to_string(),
                                path: req
                                    .uri()
                                    .path_and_query()
                                    .map(|pq| pq.as_str().to_string())
                                    .unwrap_or_default(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                            };
                            if let Ok(mut log) = recorder.lock() {
                                log.push(recorded);
                            }
                            Ok::<_, Infallible>(HyperResponse::new(Full::new(Bytes::from_static(
                                b"upstream ok\n",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EchoUpstream {
            port,
            requests,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A snapshot of every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The requests that carried `name: value`.
    pub fn requests_with_header(&self, name: &str, value: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.header_values(name).contains(&value))
            .collect()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// The raw HTTP/1.1 client
// ---------------------------------------------------------------------------

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercase, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port`, writing `path` into the
/// request line byte for byte (no client-side normalization), with the given
/// headers in order (`Host: localhost` added unless given) and
/// `Connection: close`. Panics on I/O failure.
pub fn send_raw(port: u16, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
    try_send(port, method, path, headers).unwrap_or_else(|e| {
        panic!(
            "{method} {} to 127.0.0.1:{port}: {e}",
            String::from_utf8_lossy(path)
        )
    })
}

/// Sends one request with a `body` (as [`exchange_http1_with_body`]) to
/// 127.0.0.1:`port` and reads the response. Panics on I/O failure.
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    exchange_http1_with_body(&mut stream, method, path.as_bytes(), headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`send_raw`] returning I/O errors.
pub fn try_send(
    port: u16,
    method: &str,
    path: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange_http1(&mut stream, method, path, headers)
}

/// Writes one HTTP/1.1 request (as [`send_raw`] describes it) on `stream`
/// and reads the response.
pub fn exchange_http1(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    exchange_http1_with_body(stream, method, path, headers, &[])
}

/// [`exchange_http1`] with a request body; a `Content-Length` is added
/// unless the headers give one (or a `Transfer-Encoding`).
pub fn exchange_http1_with_body(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &[u8],
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut request = Vec::with_capacity(256);
    request.extend_from_slice(method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(path);
    request.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.extend_from_slice(b"Host: localhost\r\n");
    }
    for (k, v) in headers {
        request.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (!body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS"))
    {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request.extend_from_slice(body);

    stream.write_all(&request)?;
    stream.flush()?;
    // Read until the response is complete rather than until EOF: after a
    // protocol error Envoy answers and then holds the connection open for
    // its delayed-close timeout.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if response_complete(&raw) {
                    break;
                }
            }
            // A peer that answers and then resets (e.g. 431 with the request
            // still unread) still gave us its answer.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    parse_response(&raw)
}

/// Whether `raw` holds a whole response: head, and a body whose end is
/// known (content-length reached, or the last chunk seen).
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let field = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    match field("content-length").and_then(|l| l.parse::<usize>().ok()) {
        Some(len) => body.len() >= len,
        // No length: the body runs to EOF (or there is none, e.g. 204/304).
        None => head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"),
    }
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no complete response head in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        rest.get(..len)
            .ok_or_else(|| invalid("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

// ---------------------------------------------------------------------------
// gRPC checks, as Envoy sends them
// ---------------------------------------------------------------------------

/// A CheckRequest with an `x-request-id` and, if given, an Authorization
/// header (Host, context extensions and peers left empty).
pub fn check_request(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    request_id: &str,
) -> CheckRequest {
    Check::http(method, path)
        .header("x-request-id", request_id)
        .authorization(authorization)
        .build()
}

/// A tokio listener on 127.0.0.1 at an ephemeral port, and that port.
pub async fn bind_loopback() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// A gRPC client of Portcullis on 127.0.0.1:`port`.
pub async fn grpc_client(port: u16) -> AuthorizationClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuthorizationClient::new(channel)
}

/// 200 for an OK response, else the denied status.
pub async fn grpc_status(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> i32 {
    let response = client.check(request).await.unwrap().into_inner();
    check_status(&response)
}

/// 200 for an OK check response, else its denied status.
pub fn check_status(response: &envoy_types::ext_authz::v3::pb::CheckResponse) -> i32 {
    match &response.http_response {
        Some(CheckHttpResponse::OkResponse(_)) => 200,
        Some(CheckHttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// A TCP echo server
// ---------------------------------------------------------------------------

/// A TCP server on 127.0.0.1:0 that echoes every byte back and keeps a copy
/// of everything it received, so a test can say "these bytes never arrived".
/// Runs on its own runtime, stopped on drop.
pub struct TcpEcho {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TcpEcho {
    pub fn start() -> TcpEcho {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tcp-echo")
            .enable_all()
            .build()
            .expect("tcp echo runtime");
        let (listener, port) = runtime.block_on(bind_loopback());
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let log = Arc::clone(&received);
        runtime.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if let Ok(mut log) = log.lock() {
                            log.extend_from_slice(&chunk[..n]);
                        }
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TcpEcho {
            port,
            received,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether `needle` ever arrived (the bytes of every connection, in
    /// arrival order; tests send unique payloads one connection at a time).
    pub fn received_contains(&self, needle: &[u8]) -> bool {
        self.received
            .lock()
            .map(|r| r.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
