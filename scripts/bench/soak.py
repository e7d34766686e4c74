#!/usr/bin/env python3
"""The soak: steady load while the policy is rewritten and reloaded.

`make soak` (SOAK_SECONDS, default 180). `portcullis serve` (release) runs
on a copy of the scaled documents workload (200k grants) with logging off.
The load client sends checks at a fixed rate (open loop) for the whole
soak and counts errors and wrong decisions. Every few seconds this script
rewrites `soak.yaml` in the policy directory (a new file renamed over the
old, with grants that change each time, for a subject no request uses, so
every decision stays the same) and sends SIGHUP; every sixth rewrite is
broken on purpose (an unknown role), which must be refused while the last
good policy keeps serving. RSS is sampled from /proc/PID/status every
second.

Reports start and end RSS after warm-up (medians of 15 s windows), the
growth, peak RSS, reloads by result (portcullis_policy_loads_total), the
policy versions /ready showed, errors and wrong decisions; prints a table
and writes target/bench/soak-<timestamp>.json. Growth beyond 5% after
warm-up is a bug to report.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT, ensure_workload, http_get, log, machine, metric, new_run, start_portcullis,
)

GROWTH_LIMIT_PERCENT = 5.0


def soak_file(counter, broken=False):
    """A small policy file whose content (and so the policy version)
    changes with `counter`; `broken` names a role that does not exist."""
    role = "no-such-role" if broken else "viewer"
    lines = ["# Rewritten by scripts/bench/soak.py.", "grants:"]
    for i in range(200):
        lines += [f"  - subject: soak-user{i % 7}", f"    role: {role}",
                  f"    resource: document:{(counter * 200 + i) % 100_000}"]
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 180)))
    parser.add_argument("--reload-every", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the start RSS window (default: 20%% of the soak, at least 30)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra `portcullis serve` argument, e.g. --serve-arg=--decision-cache-bytes=0")
    parser.add_argument("--malloc-arena-max", type=int, default=None,
                        help="MALLOC_ARENA_MAX for portcullis (glibc), to tell allocator growth from a leak")
    parser.add_argument("--portcullis", default=str(ROOT / "target/release/portcullis"))
    parser.add_argument("--loadbench", default=str(ROOT / "target/release/examples/loadbench"))
    args = parser.parse_args()
    if not 30 <= args.seconds <= 3600:
        parser.error("--seconds must be in [30, 3600]")
    warmup = args.warmup if args.warmup is not None else max(30.0, args.seconds * 0.2)
    window = 15.0

    out_dir, started, stamp, run_dir = new_run("soak")
    binary, loadbench = Path(args.portcullis), Path(args.loadbench)
    workload = out_dir / "workload"
    summary = ensure_workload(loadbench, workload)
    policies = run_dir / "policies"
    shutil.copytree(workload / "policies", policies)
    soak_path = policies / "soak.yaml"
    write_atomically(soak_path, soak_file(0))

    help_text = subprocess.run([str(binary), "serve", "--help"], stdout=subprocess.PIPE,
                               check=False).stdout.decode(errors="replace")
    reloads_supported = "--watch" in help_text or "SIGHUP" in help_text
    if not reloads_supported:
        log("this portcullis has no live reload: measuring steady-state RSS only")

    env = {"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else {}
    server = start_portcullis(binary, policies, run_dir, "portcullis", extra=args.serve_arg, env=env)
    samples = []  # (seconds since start, VmRSS KiB)
    versions = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler():
        while not stop.is_set() and server.alive():
            rss = server.status("VmRSS")
            if rss is not None:
                samples.append((time.monotonic() - t0, rss))
            stop.wait(1.0)

    threading.Thread(target=sampler, daemon=True).start()
    load = subprocess.Popen(
        [str(loadbench), "load", "--target", f"127.0.0.1:{server.port}", "--workload",
         str(workload), "--rate", str(args.rate), "--duration", str(args.seconds),
         "--warmup", "0", "--connections", "4", "--check-expected", "--label", "soak"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    rewrites = broken_writes = signals = 0
    died = None
    try:
        next_reload = t0 + args.reload_every
        while time.monotonic() - t0 < args.seconds and load.poll() is None:
            time.sleep(max(0.0, min(next_reload, t0 + args.seconds) - time.monotonic()))
            if time.monotonic() - t0 >= args.seconds:
                break
            next_reload += args.reload_every
            if not server.alive():
                died = f"portcullis exited with {server.popen.returncode}"
                break
            if not reloads_supported:
                continue
            rewrites += 1
            broken = rewrites % 6 == 0
            broken_writes += broken
            write_atomically(soak_path, soak_file(rewrites, broken))
            server.signal(signal.SIGHUP)
            signals += 1
            status, body = http_get(server.admin_port, "/ready")
            if status == 200 and (not versions or versions[-1] != body.strip()):
                versions.append(body.strip())
        out, err = load.communicate(timeout=args.seconds + 120)
    finally:
        stop.set()
        if load.poll() is None:
            load.send_signal(signal.SIGTERM)
            load.wait(10)
    metrics = http_get(server.admin_port, "/metrics")[1] if server.alive() else ""
    if died is None and not server.alive():
        died = f"portcullis exited with {server.popen.returncode}"
    exit_code = server.stop()

    client = {}
    if load.returncode == 0:
        client = json.loads(out.decode().strip().splitlines()[-1])
    else:
        client = {"error": err.decode(errors="replace")[-2000:]}

    def median_between(start, end):
        values = [rss for t, rss in samples if start <= t < end]
        return statistics.median(values) if values else None

    start_rss = median_between(warmup, warmup + window)
    end_rss = median_between(args.seconds - window, args.seconds + 1)
    growth = (end_rss - start_rss) * 100.0 / start_rss if start_rss and end_rss else None
    loads = {
        "success": metric(metrics, "portcullis_policy_loads_total", {"result": "success"}),
        "failure": metric(metrics, "portcullis_policy_loads_total", {"result": "failure"}),
    }
    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "workload": summary,
        "reloads_supported": reloads_supported,
        "warmup_s": warmup,
        "rss_kib": {
            "first": samples[0][1] if samples else None,
            "start_after_warmup": start_rss,
            "end": end_rss,
            "peak": max((rss for _, rss in samples), default=None),
            "growth_percent": growth,
            "samples": samples,
        },
        "rewrites": rewrites,
        "broken_rewrites": broken_writes,
        "sighups": signals,
        "policy_loads_total": loads,
        "versions_seen": len(versions),
        "client": client,
        "portcullis_exit": exit_code,
        "died": died,
    }
    problems = []
    if died:
        problems.append(died)
    if client.get("errors"):
        problems.append(f"{client['errors']} checks failed ({client.get('first_error')})")
    if client.get("mismatches"):
        problems.append(f"{client['mismatches']} wrong decisions")
    if "error" in client:
        problems.append("the load client failed")
    if growth is not None and growth > GROWTH_LIMIT_PERCENT:
        problems.append(f"RSS grew {growth:.1f}% after warm-up (limit {GROWTH_LIMIT_PERCENT}%)")
    if reloads_supported and broken_writes and loads["failure"] < 1:
        problems.append("no failed reload was counted although broken files were written")
    report["problems"] = problems

    out_file = out_dir / f"soak-{stamp}.json"
    out_file.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(policies, ignore_errors=True)
    m = report["machine"]
    mib = lambda kib: f"{kib / 1024:.1f} MiB" if kib else "n/a"  # noqa: E731
    print(f"Portcullis soak, {report['started']}, commit {m['commit']}, {m['cores']} cores "
          f"({m['note']})")
    print(f"  duration            {args.seconds:.0f} s at {args.rate:g} checks/s (open loop), "
          f"warm-up {warmup:.0f} s")
    print(f"  checks              {client.get('requests', 'n/a')} ({client.get('rps', 0):.0f}/s), "
          f"errors {client.get('errors', 'n/a')}, wrong decisions {client.get('mismatches', 'n/a')}, "
          f"p99 {client.get('latency_us', {}).get('p99', 'n/a')} us")
    print(f"  rewrites + SIGHUP   {rewrites} ({broken_writes} broken on purpose)")
    print(f"  policy loads        {loads['success']:.0f} success, {loads['failure']:.0f} failure; "
          f"{len(versions)} versions seen on /ready")
    print(f"  RSS                 first {mib(report['rss_kib']['first'])}, start {mib(start_rss)}, "
          f"end {mib(end_rss)}, peak {mib(report['rss_kib']['peak'])}")
    print(f"  RSS growth          {growth:.2f}% after warm-up" if growth is not None else
          "  RSS growth          n/a")
    print(f"  verdict             {'; '.join(problems) if problems else 'ok'}")
    print(f"\nwritten {out_file.relative_to(ROOT)}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
