"""Shared pieces of the load bench and the soak: processes, ports, /proc.

Every process is started here, remembered by PID, and stopped by that PID
(SIGTERM, then SIGKILL after a grace period); nothing is ever killed by
name. Everything binds 127.0.0.1.
"""

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# DEMO ONLY, as in the Makefile: the demo issuer's HS256 secret.
DEMO_SECRET = os.environ.get(
    "PORTCULLIS_DEMO_SECRET", "demo-secret-not-for-production-0123456789"
)


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_port():
    """A port free right now on 127.0.0.1 (for configs that need one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process, stopped by its PID only."""

    def __init__(self, name, argv, env=None, stdout=subprocess.PIPE, stderr_path=None):
        self.name = name
        self.stderr_path = stderr_path
        stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            # None removes a variable the bench's own environment has.
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        self.popen = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
        )
        if stderr_path:
            stderr.close()
        self.pid = self.popen.pid

    def read_lines(self, count, timeout=30.0):
        """The first `count` lines of stdout, then stdout is drained in
        the background so the child never blocks on a full pipe."""
        lines = []
        done = threading.Event()

        def reader():
            for raw in self.popen.stdout:
                if len(lines) < count:
                    lines.append(raw.decode(errors="replace").strip())
                    if len(lines) == count:
                        done.set()
            done.set()

        threading.Thread(target=reader, daemon=True).start()
        if not done.wait(timeout) or len(lines) < count:
            self.stop()
            raise RuntimeError(f"{self.name} printed {lines!r} within {timeout}s; see {self.stderr_path}")
        return lines

    def cpu_seconds(self):
        """User + system CPU time so far, from /proc/PID/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def status(self, key):
        """A /proc/PID/status field in KiB (VmRSS, VmHWM), or None."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, grace=10.0):
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def http_get(port, path, timeout=5.0):
    """(status, body) of GET http://127.0.0.1:port/path; (0, error) on failure."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def start_portcullis(binary, policies, run_dir, name, logging="off", extra=(), env=None):
    """`portcullis serve` on ephemeral ports, ready. `logging`: "off"
    (PORTCULLIS_LOG=warn, --log-allow-rate 0), "all" (info, every allow),
    or "shipped" (neither set: what a new user gets)."""
    env = dict(env or {}, PORTCULLIS_DEMO_SECRET=DEMO_SECRET)
    argv = [binary, "serve", "--policies", policies, "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", *extra]
    if logging == "all":
        env["PORTCULLIS_LOG"] = "info"
        argv += ["--log-allow-rate", "1"]
    elif logging == "off":
        env["PORTCULLIS_LOG"] = "warn"
        argv += ["--log-allow-rate", "0"]
    elif logging == "shipped":
        for key in os.environ:
            if key.startswith("PORTCULLIS_") and key != "PORTCULLIS_DEMO_SECRET":
                env.setdefault(key, None)
    else:
        raise ValueError(f"logging must be off, all or shipped, not {logging!r}")
    proc = Process(name, argv, env=env, stderr_path=run_dir / f"{name}.log")
    with_api = "--api-listen" in map(str, extra)
    lines = proc.read_lines(3 if with_api else 2, timeout=60)
    proc.port = int(lines[0].rsplit(":", 1)[1])
    proc.admin_port = int(lines[1].rsplit(":", 1)[1])
    if with_api:
        proc.api_port = int(lines[2].rsplit(":", 1)[1])
    wait_until(lambda: http_get(proc.admin_port, "/ready")[0] == 200, 60, f"{name} /ready")
    return proc


def start_noop(loadbench, run_dir, name="noop", extra=()):
    proc = Process(name, [loadbench, "noop", "--listen", "127.0.0.1:0", *extra],
                   stderr_path=run_dir / f"{name}.log")
    (line,) = proc.read_lines(1)
    proc.port = int(line.rsplit(":", 1)[1])
    return proc


def prepared_bodies(loadbench, workload, run_dir, count=8):
    """`count` gRPC CheckRequest bodies of the workload, written by
    `loadbench bodies` into run_dir/bodies: (path, "allow" or "deny")."""
    body_dir = run_dir / "bodies"
    subprocess.run([str(loadbench), "bodies", "--workload", str(workload), "--out", str(body_dir),
                    "--count", str(count)], check=True)
    bodies = []
    for line in (body_dir / "bodies.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            name, expected = line.split("\t")
            bodies.append((body_dir / name, expected))
    return bodies


def run_load(loadbench, port, workload, label, seconds, warmup, extra=()):
    """One run of the gRPC load client; its JSON report."""
    argv = [str(loadbench), "load", "--target", f"127.0.0.1:{port}", "--workload", str(workload),
            "--duration", str(seconds), "--warmup", str(warmup), "--label", label, *map(str, extra)]
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=seconds + warmup + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed ({label}): {out.stderr.decode(errors='replace')}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def metric(text, name, labels=None):
    """Sum of the samples of `name` (with all of `labels`) in a
    Prometheus/OpenMetrics text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name = head.split("{", 1)[0]
        if metric_name != name:
            continue
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        try:
            total += float(value)
        except ValueError:
            pass
    return total


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE / 2**30, 1),
        "commit": commit.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else ""),
        "note": f"client, Envoy and server share the same {os.cpu_count()} cores",
    }


def new_run(kind):
    """Starts a bench run: target/bench/, a stamp, and run directory <kind>-<stamp>.

    Returns (out_dir, started, stamp, run_dir); `started` is a UTC datetime.
    """
    out_dir = ROOT / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_dir = out_dir / f"{kind}-{stamp}"
    run_dir.mkdir()
    return out_dir, started, stamp, run_dir


def ensure_workload(loadbench, out_dir, args=(), max_age_hours=12):
    """Generates the workload unless a fresh one with the same arguments exists."""
    out_dir = Path(out_dir)
    stamp = out_dir / "args.json"
    wanted = json.dumps([str(a) for a in args])
    summary = out_dir / "summary.json"
    if summary.exists() and stamp.exists() and stamp.read_text() == wanted:
        if time.time() - summary.stat().st_mtime < max_age_hours * 3600:
            return json.loads(summary.read_text())
    log(f"generating the workload in {out_dir}")
    subprocess.run([str(loadbench), "workload", "--out", str(out_dir), *map(str, args)],
                   check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PORTCULLIS_DEMO_SECRET=DEMO_SECRET))
    stamp.write_text(wanted)
    return json.loads(summary.read_text())
