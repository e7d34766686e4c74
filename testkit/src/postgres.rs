//! A private PostgreSQL server for the grants-database tests and benches:
//! `initdb` in a temporary directory, `pg_ctl start` on 127.0.0.1 with a
//! free port (and its Unix socket in the same directory), stopped by its
//! PID when dropped. Binaries: `PORTCULLIS_POSTGRES_BIN` (a directory),
//! else the newest `/usr/lib/postgresql/*/bin` (Debian's `postgresql`
//! package), else `initdb`, `pg_ctl` and `createdb` together on `PATH`.
//! The tests that need it are `#[ignore]`d and start it with
//! [`Postgres::require`], which fails without it; the bench skips with a
//! notice ([`Postgres::start`]), unless `PORTCULLIS_REQUIRE_POSTGRES` or
//! `CI` is set. As root (initdb refuses to run as root) the server runs as
//! the `postgres` user.
//!
//! [`Postgres::require_tls`] starts one with `ssl = on` and a certificate
//! the test made for it ([`ServerTls`]), its `pg_hba.conf` accepting TCP
//! only over TLS when the test says so. [`Postgres::standby`] makes a hot
//! standby of a running server (`pg_basebackup -R`: `standby.signal` and
//! `primary_conninfo`), a second private server on a port of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            !v.is_empty() && v != "0" && v != "false" && v != "no"
        })
        .unwrap_or(false)
}

/// Whether missing PostgreSQL binaries fail a test rather than skip it.
pub fn postgres_required() -> bool {
    env_flag("PORTCULLIS_REQUIRE_POSTGRES") || env_flag("CI")
}

fn has_initdb(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "createdb"]
        .iter()
        .all(|program| dir.join(program).is_file())
}

/// The directory holding `initdb` and `pg_ctl`, if any.
pub fn find_postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PORTCULLIS_POSTGRES_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            has_initdb(&dir),
            "PORTCULLIS_POSTGRES_BIN={} lacks initdb, pg_ctl or createdb",
            dir.display()
        );
        return Some(dir);
    }
    // Debian: /usr/lib/postgresql/<major>/bin, newest major first.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| has_initdb(d))
}

fn output(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim().to_owned()
}

/// The uid and gid to run the server as when we are root.
fn unprivileged() -> Option<(u32, u32)> {
    let uid = text(&output(Command::new("id").arg("-u")).stdout);
    if uid != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = output(Command::new("id").args([flag, "postgres"]));
        assert!(
            out.status.success(),
            "running as root, and there is no `postgres` user to run PostgreSQL as"
        );
        text(&out.stdout)
            .parse()
            .unwrap_or_else(|e| panic!("id {flag} postgres: {e}"))
    };
    Some((id("-u"), id("-g")))
}

/// TLS for the private server: its certificate chain and key (PEM), made
/// per run by the test, and whether TCP connections must use it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// `hostssl` only (a plaintext TCP connection is rejected by
    /// `pg_hba.conf`); otherwise plaintext is accepted too.
    pub required: bool,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr").port()
}

/// A running private server. Dropping it stops it.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    pid: Option<u32>,
    as_user: Option<(u32, u32)>,
}

impl Postgres {
    /// Starts a server; a missing PostgreSQL is a failure. For the tests
    /// that need it, which are `#[ignore]`d: one that runs expects it.
    pub fn require() -> Postgres {
        let Some(bin) = find_postgres_bin() else {
            panic!(
                "PostgreSQL not found, and this test needs it (apt-get install postgresql, \
                 or set PORTCULLIS_POSTGRES_BIN to the directory of initdb and pg_ctl)"
            );
        };
        Postgres::start_with(bin, None)
    }

    /// Like [`Self::require`], with `ssl = on` and `tls`'s certificate.
    pub fn require_tls(tls: &ServerTls) -> Postgres {
        let Some(bin) = find_postgres_bin() else {
            panic!("PostgreSQL not found, and this test needs it (see Postgres::require)");
        };
        Postgres::start_with(bin, Some(tls))
    }

    /// Starts a server, or `None` (after a notice) when PostgreSQL is not
    /// installed and not required.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = find_postgres_bin() else {
            if postgres_required() {
                panic!(
                    "PostgreSQL not found (apt-get install postgresql, or set \
                     PORTCULLIS_POSTGRES_BIN to the directory of initdb and pg_ctl). \
                     Missing PostgreSQL is a failure when PORTCULLIS_REQUIRE_POSTGRES or CI is set"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: PostgreSQL not found (apt-get install postgresql); \
                 set PORTCULLIS_REQUIRE_POSTGRES=1 to make this a failure"
            );
            return None;
        };
        Some(Postgres::start_with(bin, None))
    }

    /// A server not started yet: its directory (owned by the user it runs
    /// as) and a free port.
    fn unstarted(bin: PathBuf) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()
            .expect("temp dir");
        let as_user = unprivileged();
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
        }
        Postgres {
            dir,
            bin,
            port: free_port(),
            pid: None,
            as_user,
        }
    }

    fn start_with(bin: PathBuf, tls: Option<&ServerTls>) -> Postgres {
        let mut pg = Postgres::unstarted(bin);
        let data = pg.data();
        let out = output(pg.command("initdb").args([
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if let Some(tls) = tls {
            pg.configure_tls(tls);
        }
        pg.start_again();
        pg
    }

    /// Writes the certificate and key into the data directory (the key
    /// readable by the server's user alone, as PostgreSQL demands), turns
    /// `ssl` on, and rewrites `pg_hba.conf`: Unix sockets trusted, TCP on
    /// 127.0.0.1 trusted over TLS and, unless TLS is required, without.
    fn configure_tls(&self, tls: &ServerTls) {
        use std::os::unix::fs::PermissionsExt;
        let data = PathBuf::from(self.data());
        let write = |name: &str, text: &str, mode: u32| {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            if let Some((uid, gid)) = self.as_user {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        };
        write("server.crt", &tls.cert_pem, 0o644);
        write("server.key", &tls.key_pem, 0o600);
        let plaintext = if tls.required {
            "hostnossl all all 127.0.0.1/32 reject\n\
             hostnossl replication all 127.0.0.1/32 reject\n"
        } else {
            "host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n"
        };
        let hba = format!(
            "local all all trust\n\
             local replication all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl replication all 127.0.0.1/32 trust\n\
             {plaintext}"
        );
        write("pg_hba.conf", &hba, 0o600);
        let conf = data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
        writeln!(
            file,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    }

    /// A hot standby of this server: a base backup (`pg_basebackup -R`,
    /// which writes `standby.signal` and `primary_conninfo`) started as a
    /// second private server on a port of its own, replaying this one's
    /// WAL as it streams in. Read-only; `pg_wal_replay_pause()` on it
    /// makes it lag on purpose.
    pub fn standby(&self) -> Postgres {
        let mut standby = Postgres::unstarted(self.bin.clone());
        let data = standby.data();
        let out = output(standby.command("pg_basebackup").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-D",
            &data,
            "-R",
            "-X",
            "stream",
            // At once, not at the pace of a spread checkpoint (minutes).
            "--checkpoint=fast",
            "--no-sync",
        ]));
        assert!(
            out.status.success(),
            "pg_basebackup failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        standby.start_again();
        standby
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.as_user {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts the server again after [`Self::stop`] (same data, same port).
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let out = output(self.command("pg_ctl").args([
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "-t",
            "60",
            "start",
        ]));
        assert!(
            out.status.success(),
            "pg_ctl start failed:\n{}\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no PID in {}", pid_file.display()));
        self.pid = Some(pid);
    }

    /// Stops the server (fast shutdown: connections are cut), waiting
    /// until its process is gone.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        let _ = output(Command::new("kill").args(["-INT", &pid.to_string()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            let _ = output(Command::new("kill").args(["-KILL", &pid.to_string()]));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// A connection URL for database `name` over TCP.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` (each test its own).
    pub fn create_database(&self, name: &str) -> String {
        let out = output(self.command("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            name,
        ]));
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            text(&out.stderr)
        );
        self.url(name)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
