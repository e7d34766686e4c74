#!/usr/bin/env python3
"""Fast as shipped: `portcullis serve` with the flags a new user gets.

Run by `make bench` (or alone: `make bench-shipped`). Everything runs on
this machine's cores, which the clients, Envoy and the servers share.

Workload: 10k users, 100k documents, 200k grants in a `.grants` file, 1k
distinct HS256 tokens, ~60% allows (`loadbench workload --bulk`).

1. Direct gRPC, closed loop, 16 concurrent streams on one plaintext HTTP/2
   connection, against a do-nothing tonic server and three `serve`s:
   - `shipped`: no flag and no PORTCULLIS_* variable but the demo secret;
   - `quiet`: `--log-allow-rate 0` and PORTCULLIS_LOG=warn (no decision log);
   - `audit`: `--log-allow-rate 1` (every decision logged);
   each measured by three clients: two we did not write, sending prepared
   gRPC bodies, 8 bodies (5 allowed, 3 denied, each checked once with curl
   first), one process per body with 2 streams apiece: h2load (nghttp2, C)
   and oha (Rust, on hyper's HTTP/2, as tonic is; installed by
   ensure-tools.sh into target/bench-tools); and our own `loadbench load`
   (tonic) cycling through the 20k-request mix.
   Servers alternate within a round and the order flips each round, so
   drift hits every server alike. Each server's CPU time per check comes
   from /proc; it depends less than req/s on how the client shares the
   cores. The peak RSS (VmHWM) of `shipped` is read after its load.
   `--baseline BIN` adds another build (an older commit, built apart) as a
   new user runs it, in the same rounds, so before and after are one run;
   `--profile` adds each one's CPU profile under h2load (perf, cpu-clock
   sampling), grouped by component (and, in 1b, each one's under oha).
1b. The AuthZEN evaluation endpoint of `serve --api-listen` against
   `loadbench noop-api` (a handler that answers without reading, on the
   same HTTP stack), by oha over HTTP/1.1 keep-alive: 8 evaluations of the
   mix, each asked by its own user with their token, checked with curl
   first; `quiet` is the same server without the decision log.
2. Through Envoy (envoy/front-proxy.yaml) at a fixed rate (1,000 req/s,
   open loop, h2load): one Envoy whose ext_authz is the do-nothing server,
   one whose ext_authz is `shipped`. Latency differences of a few tens of
   microseconds drown in run-to-run noise, so the runs are paired and
   repeated: each round runs both, in an order that flips every round, and
   the added p99 is taken within the round (Portcullis minus do-nothing);
   the report gives the median of the rounds and their spread.

Prints a table and writes target/bench/shipped-<timestamp>.json.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT, Process, ensure_workload, free_port, log, machine, new_run, prepared_bodies, run_load,
    start_noop, start_portcullis,
)
from load import percentile, render, start_envoy, h2load  # noqa: E402

GRPC_PATH = "/envoy.service.auth.v3.Authorization/Check"
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_code(body):
    """The google.rpc.Status code of a CheckResponse in a gRPC body (0 when
    the field is absent, as protobuf leaves a zero)."""
    if len(body) < 5:
        raise RuntimeError(f"short gRPC body ({len(body)} bytes)")
    message = body[5:5 + int.from_bytes(body[1:5], "big")]

    def fields(data):
        i = 0
        while i < len(data):
            key, i = varint(data, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = varint(data, i)
            elif wire == 2:
                length, i = varint(data, i)
                value, i = data[i:i + length], i + length
            else:
                raise RuntimeError(f"unexpected wire type {wire}")
            yield number, value

    for number, value in fields(message):
        if number == 1:  # CheckResponse.status
            for inner, code in fields(value):
                if inner == 1:  # Status.code
                    return code
    return 0


def varint(data, i):
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def verify_bodies(port, bodies):
    """Sends each body once and checks the decision is the expected one."""
    for body, expected in bodies:
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "--max-time", "5", "--data-binary",
             f"@{body}", *GRPC_HEADERS, f"http://127.0.0.1:{port}{GRPC_PATH}"],
            stdout=subprocess.PIPE, check=True)
        code = grpc_code(out.stdout)
        allowed = code == 0
        if allowed != (expected == "allow"):
            raise RuntimeError(f"{body.name}: expected {expected}, got status code {code}")


def h2load_grpc(port, bodies, seconds, warmup, streams_each, run_dir, label):
    """One h2load per body, all at once, closed loop; merged results."""
    procs = []
    for n, (body, _) in enumerate(bodies):
        log_file = run_dir / f"h2load-{label}-{n}.log"
        argv = ["h2load", "-D", f"{int(seconds * 1000)}ms", "--warm-up-time",
                f"{int(warmup * 1000)}ms", "-c", "1", "-m", str(streams_each), "-t", "1",
                "-d", str(body), *GRPC_HEADERS, "--log-file", str(log_file),
                f"http://127.0.0.1:{port}{GRPC_PATH}"]
        procs.append((subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
                      log_file))
    started = datetime.datetime.now().timestamp()
    latencies, failed, sent = [], 0, 0
    for proc, log_file in procs:
        text, _ = proc.communicate(timeout=seconds + warmup + 60)
        text = text.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed: {text[-2000:]}")
        for line in text.splitlines():
            if line.startswith("requests:"):
                parts = line.replace(",", "").split()
                failed += int(parts[parts.index("failed") - 1]) + int(parts[parts.index("errored") - 1])
        measure_from_us = (started + warmup) * 1e6
        with open(log_file) as f:
            for line in f:
                start_us, status, elapsed_us = line.split("\t")[:3]
                sent += 1
                if float(start_us) >= measure_from_us and status == "200":
                    latencies.append(int(elapsed_us))
        log_file.unlink()
    latencies.sort()
    return {
        "client": "h2load",
        "requests": len(latencies),
        "sent": sent,
        "rps": len(latencies) / seconds,
        "failed": failed,
        "latency_us": {q: percentile(latencies, v) for q, v in
                       (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))},
    }


OHA = ROOT / "target" / "bench-tools" / "bin" / "oha"


def oha(loads, seconds, warmup):
    """oha (a Rust load generator on hyper, not ours), one process per entry
    of `loads` (each the arguments that say what it sends where), all at
    once, closed loop, one runtime thread each. oha has no warm-up phase, so
    a run of `warmup` seconds goes first and is discarded. Each process
    reports its own percentiles; the merged ones are their medians (the
    processes see the same server at the same time)."""
    def run(duration):
        procs = [subprocess.Popen(
            [str(OHA), "--no-tui", "--output-format", "json", "--worker-threads", "1",
             "-z", f"{duration}s", *load],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for load in loads]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=duration + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"oha failed: {err.decode(errors='replace')[-2000:]}")
            reports.append(json.loads(out))
        return reports

    if warmup > 0:
        run(warmup)
    reports = run(seconds)
    requests = failed = 0
    for r in reports:
        statuses = r.get("statusCodeDistribution", {})
        requests += statuses.get("200", 0)
        failed += sum(v for k, v in statuses.items() if k != "200") + sum(
            r.get("errorDistribution", {}).values())
    median = lambda q: round(statistics.median(r["latencyPercentiles"][q] for r in reports) * 1e6)  # noqa: E731
    return {
        "client": "oha",
        "requests": requests,
        "sent": requests + failed,
        "rps": requests / seconds,
        "failed": failed,
        "latency_us": {"p50": median("p50"), "p99": median("p99")},
    }


def oha_grpc(port, bodies, seconds, warmup, streams_each):
    """oha sending the same prepared gRPC bodies as h2load: one process per
    body, each on one HTTP/2 connection with `streams_each` streams."""
    return oha([["--http2", "-c", "1", "-p", str(streams_each), "-m", "POST", *GRPC_HEADERS,
                 "-D", str(body), f"http://127.0.0.1:{port}{GRPC_PATH}"]
                for body, _ in bodies], seconds, warmup)


def profile(proc, seconds, load, run_dir, label, top=25):
    """The server's own CPU profile while `load()` loads it for `seconds`:
    `perf record` (cpu-clock sampling, no hardware counters needed) of its
    process, the `top` symbols by share of its samples. None without perf."""
    if not shutil.which("perf"):
        return None
    data = run_dir / f"perf-{label}.data"
    recorder = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-p", str(proc.pid),
         "-o", str(data), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load()
    _, err = recorder.communicate(timeout=seconds + 60)
    if recorder.returncode != 0 or not data.exists():
        log(f"  perf record failed for {label}: {err.decode(errors='replace')[-300:]}")
        return None
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
         "--stdio", "--percent-limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False).stdout.decode(errors="replace")
    data.unlink(missing_ok=True)
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or not fields[0].endswith("%"):
            continue
        share, dso, _, *symbol = fields
        while symbol and symbol[-1] == "-":
            symbol.pop()
        rows.append({"share": float(share.rstrip("%")), "dso": dso, "symbol": " ".join(symbol)})
    components = {}
    for row in rows:
        kind = component(row)
        components[kind] = round(components.get(kind, 0.0) + row["share"], 2)
    return {"top": rows[:top], "components": components,
            "rows": [row | {"component": component(row)} for row in rows if row["share"] >= 0.1]}


def component(row):
    """Which part of the process a profile sample is in."""
    symbol, dso = row["symbol"], row["dso"]
    if dso.startswith("[kernel"):
        return "kernel (network, scheduling)"
    if any(word in symbol for word in ("malloc", "free", "realloc", "unlink_chunk", "alloc::",
                                       "tcache", "_int_", "RawVec")):
        return "allocator"
    if "sha2::" in symbol or "sip" in symbol.lower() or "Hasher" in symbol:
        return "hashing (token cache keys, cache lookups)"
    if "memmove" in symbol or "memcpy" in symbol or "memset" in symbol or "memcmp" in symbol:
        return "memory copies"
    if symbol.startswith(("portcullis", "<portcullis", "cel::", "<cel")):
        return "portcullis (adapter, engine, answer, log)"
    if "serde_json" in symbol or "serde::" in symbol:
        return "JSON (serde_json)"
    if any(word in symbol for word in ("h2::", "hyper", "tonic", "tower", "http::", "bytes::",
                                       "prost", "hpack", "axum", "matchit", "httparse")):
        return "HTTP stack (h2, hyper, tonic, axum, prost, bytes)"
    if "tokio" in symbol or "vdso" in dso:
        return "runtime and clock"
    return "other"


EVALUATION_PATH = "/access/v1/evaluation"


def evaluation_bodies(workload, run_dir, count=8):
    """`count` AuthZEN evaluations of the workload's mix, each asked by the
    user it is about with their own token (no caller to configure):
    (body file, token, "allow" or "deny"), 5 allowed and 3 denied."""
    import base64
    tokens = (workload / "tokens.txt").read_text().split()
    wanted = {"allow": count - count * 3 // 8, "deny": count * 3 // 8}
    chosen = []
    for line in (workload / "requests.tsv").read_text().splitlines():
        method, path, token, expected = line.split("\t")[:4]
        parts = path.strip("/").split("/")
        if method != "GET" or len(parts) != 2 or parts[0] != "documents":
            continue
        if wanted.get(expected, 0) == 0:
            continue
        wanted[expected] -= 1
        jwt = tokens[int(token)]
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        body = run_dir / f"evaluation-{len(chosen)}.json"
        body.write_text(json.dumps({
            "subject": {"type": "user", "id": claims["sub"]},
            "action": {"name": "read"},
            "resource": {"type": "document", "id": parts[1]},
        }))
        chosen.append((body, jwt, expected))
        if not any(wanted.values()):
            break
    return chosen


def verify_evaluations(port, bodies):
    for body, token, expected in bodies:
        out = subprocess.run(
            ["curl", "-s", "--max-time", "5", "--data-binary", f"@{body}",
             "-H", "content-type: application/json", "-H", f"authorization: Bearer {token}",
             f"http://127.0.0.1:{port}{EVALUATION_PATH}"],
            stdout=subprocess.PIPE, check=True)
        decision = json.loads(out.stdout).get("decision")
        if decision != (expected == "allow"):
            raise RuntimeError(f"{body.name}: expected {expected}, got {out.stdout!r}")


def oha_evaluations(port, bodies, seconds, warmup, connections_each):
    """oha over HTTP/1.1 keep-alive (the API's protocol), one process per
    body, each asking as its own user."""
    return oha([["-c", str(connections_each), "-m", "POST",
                 "-H", "content-type: application/json", "-H", f"authorization: Bearer {token}",
                 "-D", str(body), f"http://127.0.0.1:{port}{EVALUATION_PATH}"]
                for body, token, _ in bodies], seconds, warmup)


def authzen(args, binary, loadbench, workload, run_dir):
    """The AuthZEN evaluation endpoint of `serve --api-listen` (otherwise as
    shipped) against `loadbench noop-api`, a handler that answers without
    reading, on the same HTTP stack; oha, closed loop, 16 connections."""
    bodies = evaluation_bodies(workload, run_dir)
    noop = Process("noop-api", [loadbench, "noop-api", "--listen", "127.0.0.1:0"],
                   stderr_path=run_dir / "noop-api.log")
    (line,) = noop.read_lines(1)
    noop.api_port = int(line.rsplit(":", 1)[1])
    servers = [("noop", noop),
               ("shipped", start_portcullis(binary, workload / "policies", run_dir, "api-shipped",
                                            logging="shipped",
                                            extra=["--api-listen", "127.0.0.1:0"])),
               ("quiet", start_portcullis(binary, workload / "policies", run_dir, "api-quiet",
                                          logging="off", extra=["--api-listen", "127.0.0.1:0"]))]
    if args.baseline:
        servers.append(("baseline", start_portcullis(
            Path(args.baseline), workload / "policies", run_dir, "api-baseline",
            logging="shipped", extra=["--api-listen", "127.0.0.1:0"])))
    runs = []
    try:
        for name, proc in servers[1:]:
            verify_evaluations(proc.api_port, bodies)
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            log(f"AuthZEN evaluation, round {round_ + 1}/{args.rounds}, oha")
            for name, proc in order:
                cpu_before = proc.cpu_seconds()
                report = oha_evaluations(proc.api_port, bodies, args.seconds, args.warmup,
                                         max(1, args.streams // len(bodies)))
                cpu = proc.cpu_seconds() - cpu_before
                report.update(server=name, round=round_ + 1,
                              cpu_us_per_request=round(cpu * 1e6 / max(report["sent"], 1), 2))
                log(f"  {name:<8} {report['rps']:>8.0f} req/s  p50 "
                    f"{report['latency_us']['p50']} us  p99 {report['latency_us']['p99']} us  "
                    f"cpu {report['cpu_us_per_request']} us/request")
                runs.append(report)
        profiles = {}
        if args.profile:
            for name, proc in servers:
                log(f"profiling {name} under oha (AuthZEN)")
                profiles[name] = profile(
                    proc, args.seconds,
                    lambda: oha_evaluations(proc.api_port, bodies, args.seconds, 0,
                                            max(1, args.streams // len(bodies))),
                    run_dir, f"api-{name}")
    finally:
        for _, proc in servers:
            proc.stop()
    return {"runs": runs, "profiles": profiles}


def direct(args, binary, loadbench, workload, bodies, run_dir):
    policies = workload / "policies"
    servers = [
        ("noop", start_noop(loadbench, run_dir)),
        ("shipped", start_portcullis(binary, policies, run_dir, "shipped", logging="shipped")),
        ("quiet", start_portcullis(binary, policies, run_dir, "quiet", logging="off")),
        ("audit", start_portcullis(binary, policies, run_dir, "audit", logging="all")),
    ]
    if args.baseline:
        # Another build (an older commit) as a new user runs it, in the same
        # rounds: before and after in one run.
        servers.append(("baseline", start_portcullis(Path(args.baseline), policies, run_dir,
                                                     "baseline", logging="shipped")))
    runs, profiles = [], {}
    try:
        for name, proc in servers[1:]:
            verify_bodies(proc.port, bodies)
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for client in ("h2load", "oha", "loadbench"):
                log(f"direct gRPC, round {round_ + 1}/{args.rounds}, {client}")
                for name, proc in order:
                    cpu_before = proc.cpu_seconds()
                    if client == "h2load":
                        report = h2load_grpc(proc.port, bodies, args.seconds, args.warmup,
                                             args.streams // len(bodies), run_dir, name)
                        sent = report["sent"]
                    elif client == "oha":
                        report = oha_grpc(proc.port, bodies, args.seconds, args.warmup,
                                          args.streams // len(bodies))
                        sent = report["sent"]
                    else:
                        extra = ["--concurrency", args.streams, "--connections", 1]
                        if name != "noop":
                            extra.append("--check-expected")
                        report = run_load(loadbench, proc.port, workload, name, args.seconds,
                                          args.warmup, extra)
                        report["client"] = "loadbench"
                        sent = report["sent"]
                    cpu = proc.cpu_seconds() - cpu_before
                    report.update(server=name, round=round_ + 1,
                                  cpu_us_per_check=round(cpu * 1e6 / max(sent, 1), 2))
                    log(f"  {name:<8} {report['rps']:>8.0f} req/s  p50 "
                        f"{report['latency_us']['p50']} us  p99 {report['latency_us']['p99']} us  "
                        f"cpu {report['cpu_us_per_check']} us/check")
                    runs.append(report)
        memory = {name: {"hwm_kib": proc.status("VmHWM"), "rss_kib": proc.status("VmRSS")}
                  for name, proc in servers}
        if args.profile:
            for name, proc in servers:
                if name in ("noop", "shipped", "baseline"):
                    log(f"profiling {name} under h2load")
                    profiles[name] = profile(
                        proc, args.seconds,
                        lambda: h2load_grpc(proc.port, bodies, args.seconds, 0,
                                            args.streams // len(bodies), run_dir,
                                            f"profile-{name}"),
                        run_dir, name)
    finally:
        for _, proc in servers:
            proc.stop()
    return {"runs": runs, "memory": memory, "profiles": profiles}


def through_envoy(args, binary, loadbench, workload, run_dir, envoy):
    template = (ROOT / "envoy" / "front-proxy.yaml").read_text()
    token = (workload / "envoy-token.txt").read_text().strip()
    paths = [p for p in (workload / "envoy-paths.txt").read_text().splitlines() if p]
    authz = {
        "noop": start_noop(loadbench, run_dir, "noop-for-envoy"),
        "shipped": start_portcullis(binary, workload / "policies", run_dir, "shipped-for-envoy",
                                    logging="shipped"),
    }
    if args.baseline:
        authz["baseline"] = start_portcullis(Path(args.baseline), workload / "policies", run_dir,
                                             "baseline-for-envoy", logging="shipped")
    names = list(authz)
    envoys, rounds = {}, []
    try:
        for name, server in authz.items():
            listen, admin, upstream = free_port(), free_port(), free_port()
            config = render(template, {
                "LISTEN_PORT": listen, "ADMIN_PORT": admin, "PORTCULLIS_PORT": server.port,
                "UPSTREAM_PORT": upstream, "DEMO_UPSTREAM_PORT": upstream, "APP": "documents",
            })
            envoys[name] = start_envoy(envoy, config, run_dir, f"envoy-{name}")
            urls = run_dir / f"urls-{name}.txt"
            urls.write_text("".join(f"http://127.0.0.1:{listen}{p}\n" for p in paths))
            probe = h2load(urls, token, 1, 0, run_dir / "probe.log", 1, 1)
            if set(probe["statuses"]) - {"200"}:
                raise RuntimeError(f"through {name}: expected only 200s, got {probe['statuses']}")
            envoys[name].urls = urls
        for round_ in range(args.envoy_rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            result = {}

            def measure(name):
                r = h2load(envoys[name].urls, token, args.envoy_seconds, args.warmup,
                           run_dir / f"h2load-envoy-{name}.log", 4, 1, rate=args.rate)
                (run_dir / f"h2load-envoy-{name}.log").unlink(missing_ok=True)
                return {"p50": r["latency_us"]["p50"], "p99": r["latency_us"]["p99"],
                        "rps": r["rps"], "statuses": r["statuses"]}

            if args.envoy_together:
                # Side by side: every Envoy loaded at the same time, so a
                # burst of other work on the machine lands on all of them
                # alike and cancels out of the within-round difference.
                with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
                    done = dict(zip(order, pool.map(measure, order)))
                result.update((name, done[name]) for name in names)
            else:
                for name in order:
                    result[name] = measure(name)
            for name in names[1:]:
                suffix = "" if name == "shipped" else f"_{name}"
                for q in ("p50", "p99"):
                    result[f"added_{q}_us{suffix}"] = result[name][q] - result["noop"][q]
            log(f"through Envoy at {args.rate:g}/s, round {round_ + 1}/{args.envoy_rounds}: "
                f"p99 noop {result['noop']['p99']} us, shipped {result['shipped']['p99']} us, "
                f"added {result['added_p99_us']} us (p50 {result['added_p50_us']})")
            rounds.append(result)
    finally:
        for proc in envoys.values():
            proc.stop()
        for proc in authz.values():
            proc.stop()
    summary = {}
    for q in ("p50", "p99"):
        for name in names[1:]:
            key = f"added_{q}_us" + ("" if name == "shipped" else f"_{name}")
            added = sorted(r[key] for r in rounds)
            quartiles = statistics.quantiles(added, n=4) if len(added) >= 2 else [added[0]] * 3
            summary[key] = {"median": statistics.median(added), "min": added[0],
                            "max": added[-1], "q1": quartiles[0], "q3": quartiles[2]}
        for name in names:
            summary[f"{name}_{q}_us_median"] = statistics.median(r[name][q] for r in rounds)
    return {"rounds": rounds, "summary": summary}


def direct_table(report):
    lines = ["",
             f"Direct gRPC, closed loop, {report['args']['streams']} streams on one connection, "
             f"{report['args']['seconds']:g} s after {report['args']['warmup']:g} s warm-up:",
             f"  {'client':<10}{'server':<9}{'round':>6}{'req/s':>9}{'vs noop':>8}{'p50 us':>8}"
             f"{'p99 us':>8}{'cpu us/chk':>11}"]
    runs = report["direct"]["runs"]
    noop = {(r["client"], r["round"]): r["rps"] for r in runs if r["server"] == "noop"}
    for r in runs:
        ratio = r["rps"] / noop[(r["client"], r["round"])]
        lines.append(f"  {r['client']:<10}{r['server']:<9}{r['round']:>6}{r['rps']:>9.0f}"
                     f"{ratio:>8.2f}{r['latency_us']['p50']:>8}{r['latency_us']['p99']:>8}"
                     f"{r['cpu_us_per_check']:>11.1f}")
    mem = report["direct"]["memory"]
    lines.append("")
    lines.append("Memory after load: " + ", ".join(
        f"{name} VmHWM {v['hwm_kib'] / 1024:.1f} MiB (VmRSS {v['rss_kib'] / 1024:.1f})"
        for name, v in mem.items()))
    return lines


def table(report):
    m, w = report["machine"], report["workload"]
    lines = [f"Portcullis as shipped, {report['started']}, commit {m['commit']}",
             f"{m['cores']} cores ({m['cpu']}): {m['note']}.",
             f"Workload: {w['users']} users, {w['documents']} documents, {w['grants']} grants "
             "(.grants file), "
             f"{w['tokens']} tokens, {w['expected_allow_share']:.0%} allows expected."]
    if "direct" in report:
        lines += direct_table(report)
    if "authzen" in report:
        runs = report["authzen"]["runs"]
        noop = {r["round"]: r["rps"] for r in runs if r["server"] == "noop"}
        lines += ["", "AuthZEN evaluation (serve --api-listen) against a do-nothing handler on "
                  "the same HTTP stack, oha, HTTP/1.1 keep-alive, closed loop:",
                  f"  {'server':<9}{'round':>6}{'req/s':>9}{'vs noop':>8}{'p50 us':>8}"
                  f"{'p99 us':>8}{'cpu us/req':>11}"]
        for r in runs:
            lines.append(f"  {r['server']:<9}{r['round']:>6}{r['rps']:>9.0f}"
                         f"{r['rps'] / noop[r['round']]:>8.2f}{r['latency_us']['p50']:>8}"
                         f"{r['latency_us']['p99']:>8}{r['cpu_us_per_request']:>11.1f}")
    if "envoy" in report:
        s = report["envoy"]["summary"]
        lines.append("")
        lines.append(f"Through Envoy at {report['args']['rate']:g} req/s, "
                     f"{report['args']['envoy_rounds']} paired rounds of "
                     f"{report['args']['envoy_seconds']:g} s ("
                     + ("all loaded at once" if report["args"]["envoy_together"]
                        else "order flips each round") + "):")
        for q in ("p50", "p99"):
            for name in ("shipped", "baseline"):
                key = f"added_{q}_us" + ("" if name == "shipped" else f"_{name}")
                if key not in s:
                    continue
                a = s[key]
                lines.append(f"  {q}: noop {s[f'noop_{q}_us_median']:.0f} us, {name} "
                             f"{s[f'{name}_{q}_us_median']:.0f} us (medians); added: median "
                             f"{a['median']:.0f} us, quartiles {a['q1']:.0f}..{a['q3']:.0f}, "
                             f"range {a['min']}..{a['max']}")
    profiles = [(name, "h2load", found) for name, found in
                (report.get("direct", {}).get("profiles") or {}).items()]
    profiles += [(name, "oha, AuthZEN", found) for name, found in
                 (report.get("authzen", {}).get("profiles") or {}).items()]
    for name, load, found in profiles:
        if not found:
            continue
        lines.append("")
        lines.append(f"Profile of {name} under {load} (share of its CPU samples): " + ", ".join(
            f"{kind} {share:.0f}%" for kind, share in
            sorted(found["components"].items(), key=lambda kv: -kv[1])))
        for row in found["top"]:
            lines.append(f"  {row['share']:5.1f}%  {row['dso'][:24]:<24} {row['symbol'][:100]}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("LOAD_SECONDS", 10)))
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--envoy-rounds", type=int, default=7)
    parser.add_argument("--envoy-seconds", type=float, default=10)
    parser.add_argument("--skip-envoy", action="store_true")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument("--skip-authzen", action="store_true")
    parser.add_argument("--envoy-one-at-a-time", dest="envoy_together", action="store_false",
                        help="load one Envoy at a time in each round (default: all at once)")
    parser.add_argument("--baseline", help="another portcullis binary (an older build) run "
                        "beside `shipped` in the same rounds")
    parser.add_argument("--profile", action="store_true",
                        help="a perf profile of noop, shipped and baseline under each load")
    parser.add_argument("--portcullis", default=str(ROOT / "target/release/portcullis"))
    parser.add_argument("--loadbench", default=str(ROOT / "target/release/examples/loadbench"))
    args = parser.parse_args()
    if not 0 < args.seconds <= 120 or not 1 <= args.rounds <= 5 or not 1 <= args.envoy_rounds <= 21:
        parser.error("--seconds in (0, 120], --rounds in [1, 5], --envoy-rounds in [1, 21]")
    for tool in ("h2load", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (scripts/bench/ensure-tools.sh installs it)")
    if not OHA.exists():
        sys.exit(f"{OHA} is missing (scripts/bench/ensure-tools.sh installs it)")

    out_dir, started, stamp, run_dir = new_run("shipped")
    binary, loadbench = Path(args.portcullis), Path(args.loadbench)
    for path in (binary, loadbench):
        if not path.exists():
            sys.exit(f"{path} is missing: build with `cargo build --release --bins --example loadbench`")
    workload = out_dir / "workload-bulk"
    summary = ensure_workload(loadbench, workload, ["--bulk"])
    bodies = prepared_bodies(loadbench, workload, run_dir)

    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "workload": summary,
    }
    if not args.skip_direct:
        report["direct"] = direct(args, binary, loadbench, workload, bodies, run_dir)
    if not args.skip_authzen:
        report["authzen"] = authzen(args, binary, loadbench, workload, run_dir)
    if not args.skip_envoy:
        envoy = os.environ.get("ENVOY_BIN") or subprocess.run(
            [str(ROOT / "scripts" / "ensure-envoy.sh")], stdout=subprocess.PIPE, check=True
        ).stdout.decode().strip()
        report["envoy"] = through_envoy(args, binary, loadbench, workload, run_dir, envoy)
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = out_dir / f"shipped-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
