#!/usr/bin/env python3
"""A loopback hop against a node hop: what asking Portcullis from another
network namespace adds to a check, against asking it on 127.0.0.1.

Run by `make bench` (or alone: `make bench-hop`); needs root (network
namespaces), h2load, curl, and the release build.

Per pod, Envoy asks the Portcullis of its own pod on 127.0.0.1; centrally,
it asks a replica on another node. The node hop is modelled by what this
one machine can do: the client in one network namespace, Portcullis in
another, joined by a veth pair on a private /30. That is the kernel's path
between two network stacks (a second TCP/IP stack traversal, the veth
transmit, a softirq), not a physical network: no NIC, no switch, no wire.
This kernel has no sch_netem, so no delay can be added to it either;
docs/deployment.md does the arithmetic for a real network from the
measured numbers and a stated RTT.

- Portcullis (`serve`, the flags a new user gets, the bulk workload's
  policies) runs inside its own namespace, listening on every address of
  that namespace: its loopback and its end of the veth, and nothing else
  (the namespace has no other interface).
- The client is h2load with prepared gRPC bodies (8 bodies, 5 allowed and
  3 denied, each checked once with curl first), one h2load per body, at a
  fixed total rate (open loop: a slow answer does not slow the sender),
  run inside the server's namespace against 127.0.0.1 (loopback) or inside
  the client namespace against the server's veth address (veth).
- Rounds are paired: each runs loopback and veth back to back, in an order
  that flips every round, and the added latency is taken within the round
  (veth minus loopback); the report gives the median and spread of rounds.

The namespaces (and so the veth pair) are deleted at the end, also when a
step fails or the run is interrupted. Without the right to create them the
bench says SKIPPED and exits 0.

Prints a table and writes target/bench/hop-<timestamp>.json.
"""

import argparse
import atexit
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEMO_SECRET, ROOT, Process, ensure_workload, log, machine, new_run, prepared_bodies,
    wait_until,
)
from load import percentile  # noqa: E402
from shipped import GRPC_HEADERS, GRPC_PATH, grpc_code  # noqa: E402

PORT = 9191
ADMIN_PORT = 9090


class Namespaces:
    """Two network namespaces joined by a veth pair; `delete` removes both
    (the pair goes with them). Names carry this process's id."""

    def __init__(self, subnet_octet):
        tag = f"{os.getpid() % 100000}"
        self.server = f"pc-hop-srv-{tag}"
        self.client = f"pc-hop-cli-{tag}"
        self.veth_server = f"pchs{tag}"
        self.veth_client = f"pchc{tag}"
        self.server_ip = f"10.254.{subnet_octet}.1"
        self.client_ip = f"10.254.{subnet_octet}.2"
        self.created = []

    def run(self, *argv):
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def create(self):
        for ns in (self.server, self.client):
            self.run("ip", "netns", "add", ns)
            self.created.append(ns)
        self.run("ip", "link", "add", self.veth_server, "netns", self.server,
                 "type", "veth", "peer", "name", self.veth_client, "netns", self.client)
        for ns, dev, ip in ((self.server, self.veth_server, self.server_ip),
                            (self.client, self.veth_client, self.client_ip)):
            self.run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            self.run("ip", "-n", ns, "link", "set", dev, "up")
            self.run("ip", "-n", ns, "link", "set", "lo", "up")

    def delete(self):
        while self.created:
            ns = self.created.pop()
            subprocess.run(["ip", "netns", "delete", ns], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def exec(self, ns):
        return ["ip", "netns", "exec", ns]


def can_create_namespaces():
    """(True, "") when this process may create network namespaces and veth
    pairs, else (False, why)."""
    if shutil.which("ip") is None:
        return False, "no `ip` command (iproute2)"
    probe = Namespaces(253)
    probe.server += "-probe"
    probe.client += "-probe"
    probe.veth_server += "p"
    probe.veth_client += "q"
    try:
        probe.create()
    except subprocess.CalledProcessError as e:
        return False, (e.stderr or b"").decode(errors="replace").strip() or str(e)
    finally:
        probe.delete()
    return True, ""


def start_server(binary, policies, nets, run_dir):
    """`portcullis serve` in the server namespace, on every address there."""
    env = {"PORTCULLIS_DEMO_SECRET": DEMO_SECRET}
    for key in os.environ:
        if key.startswith("PORTCULLIS_") and key != "PORTCULLIS_DEMO_SECRET":
            env[key] = None
    argv = [*nets.exec(nets.server), binary, "serve", "--policies", policies,
            "--listen", f"0.0.0.0:{PORT}", "--admin-listen", f"127.0.0.1:{ADMIN_PORT}"]
    proc = Process("portcullis", argv, env=env, stderr_path=run_dir / "portcullis.log")
    proc.read_lines(2, timeout=60)

    def ready():
        out = subprocess.run([*nets.exec(nets.server), "curl", "-s", "-o", "/dev/null", "-w",
                              "%{http_code}", f"http://127.0.0.1:{ADMIN_PORT}/ready"],
                             stdout=subprocess.PIPE, check=False)
        return out.stdout == b"200"

    wait_until(ready, 60, "portcullis /ready")
    return proc


def verify_bodies(prefix, host, bodies):
    for body, expected in bodies:
        out = subprocess.run(
            [*prefix, "curl", "-s", "--http2-prior-knowledge", "--max-time", "5", "--data-binary",
             f"@{body}", *GRPC_HEADERS, f"http://{host}:{PORT}{GRPC_PATH}"],
            stdout=subprocess.PIPE, check=True)
        code = grpc_code(out.stdout)
        if (code == 0) != (expected == "allow"):
            raise RuntimeError(f"{body.name} via {host}: expected {expected}, got status code {code}")


def h2load_rate(prefix, host, bodies, rate, seconds, warmup, run_dir, label):
    """One h2load per body, one connection each, together at `rate`
    requests a second (open loop); merged latencies of the 200s."""
    procs = []
    each = rate / len(bodies)
    started = datetime.datetime.now().timestamp()
    for n, (body, _) in enumerate(bodies):
        log_file = run_dir / f"h2load-{label}-{n}.log"
        argv = [*prefix, "h2load", "-D", f"{int(seconds * 1000)}ms", "--warm-up-time",
                f"{int(warmup * 1000)}ms", "-c", "1", "-m", "1", "-t", "1", "--rps", f"{each:g}",
                "-d", str(body), *GRPC_HEADERS, "--log-file", str(log_file),
                f"http://{host}:{PORT}{GRPC_PATH}"]
        procs.append((subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
                      log_file))
    latencies, not_ok = [], 0
    measure_from_us = (started + warmup) * 1e6
    for proc, log_file in procs:
        text, _ = proc.communicate(timeout=seconds + warmup + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed: {text.decode(errors='replace')[-2000:]}")
        with open(log_file) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3 or float(parts[0]) < measure_from_us:
                    continue
                if parts[1] == "200":
                    latencies.append(int(parts[2]))
                else:
                    not_ok += 1
        log_file.unlink()
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "not_200": not_ok,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


def spread(values):
    values = sorted(values)
    quartiles = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "min": values[0], "max": values[-1],
            "q1": quartiles[0], "q3": quartiles[2]}


def table(report):
    s = report["summary"]
    lines = [
        f"Loopback hop against a veth hop between network namespaces "
        f"({report['machine']['cores']} cores, {report['args']['rate']:g} checks/s, "
        f"{report['args']['rounds']} paired rounds of {report['args']['seconds']:g} s; "
        f"load average {report['loadavg_1m']['before']} before, {report['loadavg_1m']['after']} after)",
        "",
        f"{'':<22}{'p50 (us)':>10}{'p99 (us)':>10}",
        f"{'loopback (median)':<22}{s['loopback_p50_us_median']:>10}{s['loopback_p99_us_median']:>10}",
        f"{'veth (median)':<22}{s['veth_p50_us_median']:>10}{s['veth_p99_us_median']:>10}",
        f"{'added by veth':<22}{s['added_p50_us']['median']:>10}{s['added_p99_us']['median']:>10}",
        f"{'  round spread':<22}{s['added_p50_us']['min']:>5}..{s['added_p50_us']['max']:<3}"
        f"{s['added_p99_us']['min']:>6}..{s['added_p99_us']['max']}",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--portcullis", default=str(ROOT / "target/release/portcullis"))
    parser.add_argument("--loadbench", default=str(ROOT / "target/release/examples/loadbench"))
    args = parser.parse_args()
    if not 0 < args.seconds <= 120 or not 1 <= args.rounds <= 21 or not 0 < args.rate <= 20000:
        parser.error("--seconds in (0, 120], --rounds in [1, 21], --rate in (0, 20000]")
    ok, why = can_create_namespaces()
    if not ok:
        print(f"== SKIPPED: bench-hop needs to create network namespaces and a veth pair "
              f"(root, iproute2): {why}")
        return 0
    for tool in ("h2load", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (scripts/bench/ensure-tools.sh installs it)")
    binary, loadbench = Path(args.portcullis), Path(args.loadbench)
    for path in (binary, loadbench):
        if not path.exists():
            sys.exit(f"{path} is missing: build with `cargo build --release --bins --example loadbench`")

    out_dir, started, stamp, run_dir = new_run("hop")
    workload = out_dir / "workload-bulk"
    summary = ensure_workload(loadbench, workload, ["--bulk"])
    bodies = prepared_bodies(loadbench, workload, run_dir)

    nets = Namespaces(os.getpid() % 250)
    server = None

    def cleanup():
        if server is not None:
            server.stop()
        nets.delete()

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    rounds = []
    load_before = os.getloadavg()
    try:
        nets.create()
        server = start_server(binary, workload / "policies", nets, run_dir)
        paths = {
            "loopback": (nets.exec(nets.server), "127.0.0.1"),
            "veth": (nets.exec(nets.client), nets.server_ip),
        }
        for prefix, host in paths.values():
            verify_bodies(prefix, host, bodies)
        for round_ in range(args.rounds):
            order = ("loopback", "veth") if round_ % 2 == 0 else ("veth", "loopback")
            result = {}
            for name in order:
                prefix, host = paths[name]
                result[name] = h2load_rate(prefix, host, bodies, args.rate, args.seconds,
                                           args.warmup, run_dir, name)
            for q in ("p50", "p99"):
                result[f"added_{q}_us"] = result["veth"][q] - result["loopback"][q]
            log(f"round {round_ + 1}/{args.rounds}: p50 loopback {result['loopback']['p50']} us, "
                f"veth {result['veth']['p50']} us; p99 loopback {result['loopback']['p99']} us, "
                f"veth {result['veth']['p99']} us; added p50 {result['added_p50_us']} us, "
                f"p99 {result['added_p99_us']} us")
            rounds.append(result)
    finally:
        cleanup()
        atexit.unregister(cleanup)

    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        # Other work on the same cores shows in the spread of the rounds.
        "loadavg_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "args": vars(args),
        "workload": summary,
        "path": {"loopback": "127.0.0.1 inside the server's namespace",
                 "veth": f"{nets.client_ip} -> {nets.server_ip} over a veth pair (/30)"},
        "rounds": rounds,
        "summary": {
            "added_p50_us": spread([r["added_p50_us"] for r in rounds]),
            "added_p99_us": spread([r["added_p99_us"] for r in rounds]),
            **{f"{name}_{q}_us_median": statistics.median(r[name][q] for r in rounds)
               for name in ("loopback", "veth") for q in ("p50", "p99")},
        },
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = out_dir / f"hop-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
