#!/usr/bin/env python3
"""The console bench: does a console watching the live decisions slow checks?

Run by `make bench` (or alone: `make bench-console`). Two `portcullis serve`
(release) on the scaled documents workload, both with the decision log on
for every decision (PORTCULLIS_LOG=info, --log-allow-rate 1: the most lines
the tap can carry): one without a console, one with `--console-listen`
(loopback, open: a bench, not a deployment) and a live-view client
attached the whole time, reading the server-sent events with a filter
(`decision=deny`, so the console task parses every line and drops most).
The gRPC load client (examples/loadbench, closed loop) runs against each in
turn, rounds alternating so drift hits both alike. Reports req/s, latency,
server CPU per check, and the events the live view received.

Prints a table and writes target/bench/console-<timestamp>.json.
"""

import argparse
import json
import os
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEMO_SECRET, ROOT, Process, ensure_workload, http_get, log, machine, new_run, run_load,
    wait_until,
)


def start(binary, policies, run_dir, name, console):
    env = {"PORTCULLIS_DEMO_SECRET": DEMO_SECRET, "PORTCULLIS_LOG": "info"}
    argv = [binary, "serve", "--policies", policies, "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--log-allow-rate", "1"]
    if console:
        argv += ["--console-listen", "127.0.0.1:0", "--console-open-loopback"]
    proc = Process(name, argv, env=env, stderr_path=run_dir / f"{name}.log")
    lines = proc.read_lines(3 if console else 2, timeout=180)
    proc.port = int(lines[0].rsplit(":", 1)[1])
    proc.admin_port = int(lines[1].rsplit(":", 1)[1])
    if console:
        proc.console_port = int(lines[2].rstrip("/").rsplit(":", 1)[1])
    wait_until(lambda: http_get(proc.admin_port, "/ready")[0] == 200, 180, f"{name} /ready")
    return proc


class LiveView:
    """A browser's live view, as its EventSource reads it: one connection to
    /live/events with a filter, every event counted."""

    def __init__(self, port, query):
        self.events = 0
        self.lagged = 0
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            f"GET /live/events?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode())
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        buffer = b""
        lagging = False
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"event: lagged") or line.startswith(b"event:lagged"):
                    lagging = True
                elif line.startswith(b"data:"):
                    if lagging:
                        self.lagged += int(line[5:].strip() or 0)
                        lagging = False
                    else:
                        self.events += 1

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("LOAD_SECONDS", 8)))
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--grants", type=int, default=None,
                        help="a smaller workload (its own directory): this many grants, "
                             "a tenth as many documents and users")
    parser.add_argument("--portcullis", default=str(ROOT / "target/release/portcullis"))
    parser.add_argument("--loadbench", default=str(ROOT / "target/release/examples/loadbench"))
    args = parser.parse_args()

    out_dir, started, stamp, run_dir = new_run("console")
    binary, loadbench = Path(args.portcullis), Path(args.loadbench)
    for path in (binary, loadbench):
        if not path.exists():
            sys.exit(f"{path} is missing: build with `cargo build --release --bins --example loadbench`")
    if args.grants:
        workload = out_dir / f"workload-{args.grants}"
        summary = ensure_workload(loadbench, workload, [
            "--grants", args.grants, "--documents", max(args.grants // 2, 1),
            "--users", max(args.grants // 10, 1), "--tokens", max(args.grants // 100, 1)])
    else:
        workload = out_dir / "workload"
        summary = ensure_workload(loadbench, workload)
    plain = start(binary, workload / "policies", run_dir, "without-console", console=False)
    watched = start(binary, workload / "policies", run_dir, "with-console", console=True)
    view = LiveView(watched.console_port, "decision=deny")
    runs = []
    try:
        for round_ in range(args.rounds):
            log(f"round {round_ + 1}/{args.rounds}")
            for name, proc in (("without-console", plain), ("with-console", watched)):
                events_before = view.events
                cpu_before = proc.cpu_seconds()
                report = run_load(loadbench, proc.port, workload, name, args.seconds, args.warmup,
                                  ["--concurrency", args.concurrency,
                                   "--connections", args.connections, "--check-expected"])
                cpu = proc.cpu_seconds() - cpu_before
                report["server_cpu_us_per_check"] = round(cpu * 1e6 / max(report["sent"], 1), 2)
                report["round"] = round_ + 1
                report["server"] = name
                if proc is watched:
                    report["live_view_events"] = view.events - events_before
                runs.append(report)
                log(f"  {name}: {report['rps']:.0f} req/s, p50 {report['latency_us']['p50']} us, "
                    f"p99 {report['latency_us']['p99']} us, errors {report['errors']}, "
                    f"cpu {report['server_cpu_us_per_check']} us/check"
                    + (f", live view got {report['live_view_events']} events"
                       if proc is watched else ""))
    finally:
        view.close()
        plain.stop()
        watched.stop()
        for name in ("without-console", "with-console"):
            # Every decision of every run was logged: large, of no further use.
            (run_dir / f"{name}.log").unlink(missing_ok=True)

    def mean(name, key):
        values = [r[key] for r in runs if r["server"] == name]
        return sum(values) / len(values) if values else None

    table = {}
    for name in ("without-console", "with-console"):
        table[name] = {
            "rps_mean": round(mean(name, "rps"), 1),
            "server_cpu_us_per_check_mean": round(mean(name, "server_cpu_us_per_check"), 2),
        }
    table["rps_ratio"] = round(table["with-console"]["rps_mean"]
                               / table["without-console"]["rps_mean"], 3)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "workload": summary,
        "live_view": {"events": view.events, "lagged": view.lagged, "filter": "decision=deny"},
        "runs": runs,
        "summary": table,
    }
    path = out_dir / f"console-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    log(f"summary: {json.dumps(table)}")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
