#!/usr/bin/env python3
"""The load bench: what does Portcullis cost per request?

Run by `make bench` after the criterion benches (or alone: `make bench-load`).
Everything is measured in one run, on one machine, whose cores the load
client, Envoy and the servers share (the report says how many).

1. Direct gRPC. The same load client (examples/loadbench, closed loop at a
   fixed concurrency) against a do-nothing ext_authz server on the same
   tonic stack, and against `portcullis serve` (release) on the scaled
   documents workload: 10k users, 100k documents, 200k grants, 1k distinct
   tokens, ~60% allows. Portcullis runs with its decision cache as shipped
   (off: every check is decided) and on (`--decision-cache-bytes 16Mi`),
   logging off (PORTCULLIS_LOG=warn, --log-allow-rate 0); the rounds
   alternate so drift hits every server alike. One more run has the
   decision log on (every decision written as JSON). Besides req/s and
   latency, each server's CPU time per check is read from /proc.
2. Through Envoy (envoy/front-proxy.yaml rendered as the tests render it):
   (a) with the ext_authz filter removed (a variant this script generates
   from the same template), (b) ext_authz → the do-nothing server,
   (c) ext_authz → Portcullis; h2load at a fixed rate (open loop, 1,000
   req/s by default) and at saturation, all requests allowed (one
   subject's token and documents it may read) so every variant does the
   same upstream work. Latency comes from h2load's per-request log.
3. Policy load: `portcullis validate` on the 200k workload and on 1M
   grants (YAML, and the bulk `*.grants` format), with wall time and peak
   RSS, and the RSS of an idle `portcullis serve` holding each.

Prints a table and writes target/bench/load-<timestamp>.json.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEMO_SECRET, ROOT, Process, ensure_workload, free_port, http_get, log, machine, new_run,
    run_load, start_noop, start_portcullis, wait_until,
)


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


# ---------------------------------------------------------------------------
# Direct gRPC
# ---------------------------------------------------------------------------

def measure(loadbench, proc, workload, label, args, extra=()):
    cpu_before = proc.cpu_seconds()
    report = run_load(loadbench, proc.port, workload, label, args.seconds, args.warmup,
                      ["--concurrency", args.concurrency, "--connections", args.connections,
                       *extra])
    cpu = proc.cpu_seconds() - cpu_before
    sent = max(report["sent"], 1)
    # CPU over the whole run (warm-up included) divided by every check sent.
    report["server_cpu_us_per_check"] = round(cpu * 1e6 / sent, 2)
    report["server_rss_kib"] = proc.status("VmRSS")
    log(f"  {label}: {report['rps']:.0f} req/s, p50 {report['latency_us']['p50']} us, "
        f"p99 {report['latency_us']['p99']} us, errors {report['errors']}, "
        f"allow {report['allow_share']:.2f}, cpu {report['server_cpu_us_per_check']} us/check")
    return report


def serve_supports(binary, flag):
    out = subprocess.run([str(binary), "serve", "--help"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, check=False)
    return flag in out.stdout.decode(errors="replace")


def direct(args, binary, loadbench, workload, run_dir):
    results = {"runs": []}
    servers = [("noop", start_noop(loadbench, run_dir))]
    servers.append(("portcullis", start_portcullis(binary, workload / "policies", run_dir,
                                                   "portcullis")))
    if serve_supports(binary, "--decision-cache-bytes"):
        servers.append(("portcullis-cache", start_portcullis(
            binary, workload / "policies", run_dir, "portcullis-cache",
            extra=["--decision-cache-bytes", "16Mi"])))
    try:
        for round_ in range(args.rounds):
            log(f"direct gRPC, closed loop, round {round_ + 1}/{args.rounds}")
            for name, proc in servers:
                extra = [] if name == "noop" else ["--check-expected"]
                report = measure(loadbench, proc, workload, name, args, extra)
                report["round"] = round_ + 1
                results["runs"].append(report)
        log(f"direct gRPC, open loop at {args.rate} req/s")
        for name, proc in servers:
            extra = ["--rate", args.rate] + ([] if name == "noop" else ["--check-expected"])
            report = measure(loadbench, proc, workload, f"{name}@{args.rate:g}", args, extra)
            report["round"] = "open"
            results["runs"].append(report)
        results["portcullis_rss_kib"] = {n: p.status("VmRSS") for n, p in servers if n != "noop"}
        results["portcullis_hwm_kib"] = {n: p.status("VmHWM") for n, p in servers if n != "noop"}
    finally:
        for _, proc in servers:
            proc.stop()

    log("direct gRPC, decision log on (PORTCULLIS_LOG=info, --log-allow-rate 1)")
    logged = start_portcullis(binary, workload / "policies", run_dir, "portcullis-logged",
                              logging="all")
    try:
        report = measure(loadbench, logged, workload, "portcullis-logged", args,
                         ["--check-expected"])
        report["round"] = "logged"
        report["log_bytes"] = (run_dir / "portcullis-logged.log").stat().st_size
        results["runs"].append(report)
    finally:
        logged.stop()
        # The decision log of a whole run is large and of no further use.
        (run_dir / "portcullis-logged.log").unlink(missing_ok=True)
    return results


def summarize_direct(results):
    closed = {}
    for run in results["runs"]:
        if isinstance(run["round"], int):
            closed.setdefault(run["label"], []).append(run)
    summary = {}
    for label, runs in closed.items():
        summary[label] = {
            "rps": sum(r["rps"] for r in runs) / len(runs),
            "p50_us": sum(r["latency_us"]["p50"] for r in runs) / len(runs),
            "p99_us": sum(r["latency_us"]["p99"] for r in runs) / len(runs),
            "cpu_us_per_check": sum(r["server_cpu_us_per_check"] for r in runs) / len(runs),
            "errors": sum(r["errors"] for r in runs),
            "mismatches": sum(r.get("mismatches") or 0 for r in runs),
            "allow_share": sum(r["allow_share"] for r in runs) / len(runs),
        }
    noop = summary.get("noop")
    if noop:
        for label, s in summary.items():
            s["throughput_vs_noop"] = s["rps"] / noop["rps"] if noop["rps"] else None
    return summary


# ---------------------------------------------------------------------------
# Through Envoy
# ---------------------------------------------------------------------------

EXT_AUTHZ_START = "                  # 2. Ask Portcullis."
ROUTER_START = "                  - name: envoy.filters.http.router"


def render(template, ports, without_ext_authz=False):
    text = template
    for key, value in ports.items():
        placeholder = f"__{key}__"
        if placeholder not in text:
            raise RuntimeError(f"envoy/front-proxy.yaml lacks {placeholder}")
        text = text.replace(placeholder, str(value))
    leftover = re.search(r"__[A-Z_]+__", text)
    if leftover:
        raise RuntimeError(f"unrendered placeholder {leftover.group(0)} in the Envoy config")
    if without_ext_authz:
        start = text.find(EXT_AUTHZ_START)
        end = text.find(ROUTER_START, start)
        if start < 0 or end < 0:
            raise RuntimeError("cannot find the ext_authz filter block in envoy/front-proxy.yaml")
        text = text[:start] + text[end:]
        if "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n" in text:
            raise RuntimeError("the ext_authz filter is still in the variant without it")
    return text


def start_envoy(envoy, config_text, run_dir, name):
    config = run_dir / f"{name}.yaml"
    config.write_text(config_text)
    admin_path = run_dir / f"{name}.admin"
    admin_path.unlink(missing_ok=True)
    base_id = (os.getpid() % 10_000) * 10 + len(list(run_dir.glob("envoy-*.yaml")))
    proc = Process(name, [envoy, "-c", config, "--base-id", base_id, "--disable-hot-restart",
                          "--concurrency", "1", "-l", "warning",
                          "--admin-address-path", admin_path],
                   stdout=subprocess.DEVNULL, stderr_path=run_dir / f"{name}.log")

    def ready():
        if not proc.alive():
            raise RuntimeError(f"envoy exited; see {run_dir / (name + '.log')}")
        try:
            port = int(admin_path.read_text().strip().rsplit(":", 1)[1])
        except (OSError, ValueError, IndexError):
            return False
        status, body = http_get(port, "/ready")
        return status == 200 and body.strip() == "LIVE"

    wait_until(ready, 30, f"{name} LIVE")
    return proc


def h2load(url_file, token, seconds, warmup, log_file, clients, streams, rate=None):
    argv = ["h2load", "-D", f"{int(seconds * 1000)}ms", "--warm-up-time", f"{int(warmup * 1000)}ms",
            "-c", str(clients),
            "-m", str(streams), "-t", "1", "--log-file", str(log_file),
            "-H", f"authorization: Bearer {token}", "-i", str(url_file)]
    if rate:
        argv += ["--rps", str(rate / clients)]
    started = time.time()
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=seconds + warmup + 60, check=False)
    text = out.stdout.decode(errors="replace")
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed: {text[-2000:]}")
    measure_from_us = (started + warmup) * 1e6
    latencies, statuses = [], {}
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            start_us, status, elapsed_us = float(parts[0]), parts[1], int(parts[2])
            if start_us < measure_from_us:
                continue
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(elapsed_us)
    latencies.sort()
    match = re.search(r"finished in [^,]+, ([\d.]+) req/s", text)
    failed = re.search(r"requests: .* (\d+) failed, (\d+) errored, (\d+) timeout", text)
    count = len(latencies)
    return {
        "mode": "open" if rate else "closed",
        "rate": rate,
        "clients": clients,
        "streams_per_client": streams,
        "requests": count,
        "rps": count / seconds if seconds else None,
        "h2load_rps": float(match.group(1)) if match else None,
        "statuses": statuses,
        "failed": int(failed.group(1)) + int(failed.group(2)) + int(failed.group(3)) if failed else None,
        "latency_us": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "p999": percentile(latencies, 0.999),
            "max": latencies[-1] if latencies else None,
        },
    }


def through_envoy(args, binary, loadbench, workload, run_dir, envoy):
    template = (ROOT / "envoy" / "front-proxy.yaml").read_text()
    token = (workload / "envoy-token.txt").read_text().strip()
    paths = [p for p in (workload / "envoy-paths.txt").read_text().splitlines() if p]
    noop = start_noop(loadbench, run_dir, "noop-for-envoy")
    portcullis = start_portcullis(binary, workload / "policies", run_dir, "portcullis-for-envoy")
    results = {}
    try:
        for variant, authz_port, strip in [
            ("a-no-ext-authz", noop.port, True),
            ("b-ext-authz-noop", noop.port, False),
            ("c-ext-authz-portcullis", portcullis.port, False),
        ]:
            listen, admin, demo = free_port(), free_port(), free_port()
            config = render(template, {
                "LISTEN_PORT": listen, "ADMIN_PORT": admin, "PORTCULLIS_PORT": authz_port,
                "UPSTREAM_PORT": demo, "DEMO_UPSTREAM_PORT": demo,
                "APP": "documents",
            }, without_ext_authz=strip)
            envoy_proc = start_envoy(envoy, config, run_dir, f"envoy-{variant}")
            try:
                urls = run_dir / f"urls-{variant}.txt"
                urls.write_text("".join(f"http://127.0.0.1:{listen}{p}\n" for p in paths))
                # A request through each, so a broken variant fails loudly.
                probe = h2load(urls, token, 1, 0, run_dir / "probe.log", 1, 1)
                if set(probe["statuses"]) - {"200"}:
                    raise RuntimeError(f"{variant}: expected only 200s, got {probe['statuses']}")
                log(f"through Envoy, {variant}")
                fixed = h2load(urls, token, args.seconds, args.warmup,
                               run_dir / f"h2load-{variant}-rate.log", 4, 1, rate=args.rate)
                saturated = h2load(urls, token, args.seconds, args.warmup,
                                   run_dir / f"h2load-{variant}-sat.log", args.h2_clients,
                                   args.h2_streams)
                for label, r in (("rate", fixed), ("saturation", saturated)):
                    log(f"  {label}: {r['rps']:.0f} req/s, p50 {r['latency_us']['p50']} us, "
                        f"p99 {r['latency_us']['p99']} us, statuses {r['statuses']}")
                results[variant] = {"rate": fixed, "saturation": saturated}
            finally:
                envoy_proc.stop()
                for f in run_dir.glob(f"h2load-{variant}-*.log"):
                    f.unlink()
    finally:
        noop.stop()
        portcullis.stop()
    base = results["a-no-ext-authz"]
    for variant, r in results.items():
        for load in ("rate", "saturation"):
            for q in ("p50", "p99"):
                r[load][f"added_{q}_us"] = r[load]["latency_us"][q] - base[load]["latency_us"][q]
    return results


# ---------------------------------------------------------------------------
# Policy load
# ---------------------------------------------------------------------------

def validate(binary, policies):
    started = time.monotonic()
    proc = subprocess.Popen([str(binary), "validate", str(policies)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ,
                                                             PORTCULLIS_DEMO_SECRET=DEMO_SECRET))
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"portcullis validate {policies} failed: {proc.stderr.read().decode()}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def serving_rss(binary, policies, run_dir, name):
    """RSS of `portcullis serve` once ready and idle: what the policy costs
    to hold (the peak also covers loading it)."""
    proc = start_portcullis(binary, policies, run_dir, name)
    try:
        time.sleep(1)
        return {"serving_rss_mib": round(proc.status("VmRSS") / 1024, 1),
                "serving_peak_rss_mib": round(proc.status("VmHWM") / 1024, 1)}
    finally:
        proc.stop()


def policy_loads(args, binary, loadbench, workload, run_dir):
    results = {"200k yaml": validate(binary, workload / "policies")}
    results["200k yaml"].update(serving_rss(binary, workload / "policies", run_dir, "rss-200k"))
    if not args.skip_1m:
        for label, name, extra in (("1m yaml", "workload-1m", []),
                                   ("1m bulk", "workload-1m-bulk", ["--bulk"])):
            out = ROOT / "target" / "bench" / name
            big = ensure_workload(loadbench, out, ["--grants", 1_000_000, "--documents", 500_000,
                                                   "--tokens", 0, "--requests", 0, *extra])
            results[label] = validate(binary, out / "policies")
            results[label]["grants"] = big["grants"]
            results[label].update(serving_rss(binary, out / "policies", run_dir, f"rss-{name}"))
    for name, r in results.items():
        log(f"policy {name}: validate {r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB; "
            f"serving RSS {r['serving_rss_mib']} MiB")
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def table(report):
    lines = []
    m = report["machine"]
    lines.append(f"Portcullis load bench, {report['started']}, commit {m['commit']}")
    lines.append(f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB: {m['note']}.")
    w = report["workload"]
    lines.append(f"Workload: {w['users']} users, {w['documents']} documents, {w['grants']} grants, "
                 f"{w['tokens']} tokens, {w['expected_allow_share']:.0%} allows expected.")
    lines.append("")
    lines.append(f"Direct gRPC, closed loop, concurrency {report['args']['concurrency']} over "
                 f"{report['args']['connections']} connections, {report['args']['rounds']} rounds "
                 f"of {report['args']['seconds']} s (means):")
    lines.append(f"  {'server':<22}{'req/s':>10}{'vs noop':>9}{'p50 us':>9}{'p99 us':>9}"
                 f"{'cpu us/chk':>11}{'allow':>7}{'errors':>8}{'wrong':>7}")
    for label, s in report["direct"]["summary"].items():
        ratio = s.get("throughput_vs_noop")
        lines.append(f"  {label:<22}{s['rps']:>10.0f}{(ratio or 0):>9.2f}{s['p50_us']:>9.0f}"
                     f"{s['p99_us']:>9.0f}{s['cpu_us_per_check']:>11.1f}{s['allow_share']:>7.2f}"
                     f"{s['errors']:>8}{s['mismatches']:>7}")
    for run in report["direct"]["runs"]:
        if run["round"] == "open" or run["round"] == "logged":
            what = f"open loop {run['rate']:g}/s" if run["round"] == "open" else "decision log on"
            lines.append(f"  {run['label']:<22}{run['rps']:>10.0f}{'':>9}"
                         f"{run['latency_us']['p50']:>9}{run['latency_us']['p99']:>9}"
                         f"{run['server_cpu_us_per_check']:>11.1f}{run['allow_share']:>7.2f}"
                         f"{run['errors']:>8}{(run.get('mismatches') or 0):>7}  ({what})")
    if "envoy" in report:
        lines.append("")
        lines.append("Through Envoy (h2load, all requests allowed; added = over (a) in the same run):")
        lines.append(f"  {'variant':<27}{'load':<12}{'req/s':>9}{'p50 us':>9}{'p99 us':>9}"
                     f"{'+p50':>8}{'+p99':>8}  statuses")
        for variant, r in report["envoy"].items():
            for load in ("rate", "saturation"):
                x = r[load]
                name = f"{report['args']['rate']:g}/s" if load == "rate" else "saturation"
                lines.append(f"  {variant:<27}{name:<12}{x['rps']:>9.0f}{x['latency_us']['p50']:>9}"
                             f"{x['latency_us']['p99']:>9}{x['added_p50_us']:>8}{x['added_p99_us']:>8}"
                             f"  {x['statuses']}")
    lines.append("")
    for name, r in report["policy_load"].items():
        lines.append(f"Policy {name} grants: `portcullis validate` {r['seconds']} s, peak RSS "
                     f"{r['peak_rss_mib']} MiB; `serve` idle RSS {r['serving_rss_mib']} MiB "
                     f"(peak {r['serving_peak_rss_mib']} MiB)")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("LOAD_SECONDS", 8)))
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--h2-clients", type=int, default=8)
    parser.add_argument("--h2-streams", type=int, default=8)
    parser.add_argument("--skip-envoy", action="store_true")
    parser.add_argument("--skip-1m", action="store_true")
    parser.add_argument("--portcullis", default=str(ROOT / "target/release/portcullis"))
    parser.add_argument("--loadbench", default=str(ROOT / "target/release/examples/loadbench"))
    args = parser.parse_args()
    if not 0 < args.seconds <= 120 or not 1 <= args.rounds <= 5:
        parser.error("--seconds must be in (0, 120] and --rounds in [1, 5]")

    out_dir, started, stamp, run_dir = new_run("run")
    binary, loadbench = Path(args.portcullis), Path(args.loadbench)
    for path in (binary, loadbench):
        if not path.exists():
            sys.exit(f"{path} is missing: build with `cargo build --release --bins --example loadbench`")
    workload = out_dir / "workload"
    summary = ensure_workload(loadbench, workload)

    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "workload": summary,
    }
    report["direct"] = direct(args, binary, loadbench, workload, run_dir)
    report["direct"]["summary"] = summarize_direct(report["direct"])
    if not args.skip_envoy:
        envoy = os.environ.get("ENVOY_BIN") or subprocess.run(
            [str(ROOT / "scripts" / "ensure-envoy.sh")], stdout=subprocess.PIPE, check=True
        ).stdout.decode().strip()
        if not shutil.which("h2load"):
            sys.exit("h2load is missing (apt-get install nghttp2-client)")
        report["envoy"] = through_envoy(args, binary, loadbench, workload, run_dir, envoy)
    report["policy_load"] = policy_loads(args, binary, loadbench, workload, run_dir)
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    out = out_dir / f"load-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
