#!/usr/bin/env python3
"""Generator efficiency: reprod vs wrk vs oha against the same minimal HTTP server, in one run.

For each tool and mode it reports requests sent, achieved rate, generator CPU per request
(user + system time of the generator process and its threads, from wait4, and the two parts)
and peak RSS. reprod records its full history (SQLite) while it runs; wrk and oha record
nothing.

Modes:
  max   -- as fast as possible over 50 connections (reprod: an open-model rate far above
           capacity, bounded by max_in_flight = 50, which makes it closed-loop like the others)
  5000  -- a fixed 5,000 requests per second (wrk cannot pace; shown as n/a)
  soak  -- reprod alone at 2,000/s for --soak seconds, RSS sampled every 10 s (memory flatness)

Usage: python3 bench/generators.py [--seconds 10] [--soak 300] [--skip-soak]
Needs: cargo build --release --workspace; wrk (apt-get install wrk); oha (cargo install oha).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def start_server():
    server = subprocess.Popen(
        [os.path.join(RELEASE, "bench-server"), "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline().strip()
    if not line.startswith("listening on "):
        sys.exit(f"bench-server did not start: {line!r}")
    return server, line[len("listening on "):]


def measure(argv, sample_rss=None):
    """Runs argv to completion; returns (stdout, (user, system) CPU seconds, peak RSS MiB,
    rss samples, exit code)."""
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
    samples = []
    if sample_rss:
        started = time.time()
        while proc.poll() is None:
            time.sleep(sample_rss)
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    rss = next(l for l in f if l.startswith("VmRSS:"))
                samples.append((round(time.time() - started), int(rss.split()[1]) / 1024))
            except (FileNotFoundError, StopIteration):
                break
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    return out.read(), (usage.ru_utime, usage.ru_stime), usage.ru_maxrss / 1024, samples, proc.returncode


def reprod_scenario(url, rate, in_flight, seconds):
    text = f"""
name = "bench"
duration = "{seconds}s"
max_ops = 100000000
drain = "0s"
max_in_flight = {in_flight}

[[service]]
name = "target"
url = "{url}"

[[caller]]
name = "load"
request = {{ path = "/" }}
rate = {rate}
keys = {{ count = 1000 }}
timeout = "5s"
"""
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


def run_reprod(url, rate, seconds, in_flight=50, sample_rss=None):
    scenario = reprod_scenario(url, rate, in_flight, seconds)
    out_dir = tempfile.mkdtemp(prefix="reprod-bench-")
    try:
        stdout, cpu, rss, samples, code = measure(
            [os.path.join(RELEASE, "reprod"), "run", scenario, "--json", "--out", out_dir],
            sample_rss,
        )
        if code not in (0, 1):
            sys.exit(f"reprod exited {code}")
        summary = json.loads(stdout)
        return summary["attempts"]["total"], summary["duration_s"], cpu, rss, samples, summary
    finally:
        os.unlink(scenario)
        shutil.rmtree(out_dir, ignore_errors=True)


def run_wrk(url, seconds):
    stdout, cpu, rss, _, _ = measure(["wrk", "-t1", "-c50", f"-d{seconds}s", url + "/"])
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", stdout)
    if not m:
        sys.exit(f"cannot read wrk's output:\n{stdout}")
    elapsed = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    return int(m.group(1)), elapsed, cpu, rss


def run_oha(url, seconds, rate=None):
    argv = ["oha", "--no-tui", "--output-format", "json", "-c", "50", "-z", f"{seconds}s"]
    if rate:
        argv += ["-q", str(rate)]
    stdout, cpu, rss, _, _ = measure(argv + [url + "/"])
    data = json.loads(stdout)
    total = sum(data.get("statusCodeDistribution", {}).values())
    return total, data["summary"]["total"], cpu, rss


def row(tool, mode, n, elapsed, cpu, rss):
    rate = n / elapsed if elapsed else 0
    user, system = (t / n * 1e6 if n else float("nan") for t in cpu)
    print(f"| {tool:<6} | {mode:<9} | {n:>9} | {rate:>10.0f} | {user + system:>10.1f} | "
          f"{user:>5.1f} | {system:>5.1f} | {rss:>8.1f} |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--soak", type=int, default=300)
    parser.add_argument("--skip-soak", action="store_true")
    args = parser.parse_args()
    for tool in ("wrk", "oha"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (wrk: apt-get install wrk; oha: cargo install oha)")
    server, url = start_server()
    try:
        print(f"target: bench-server at {url}; {args.seconds} s per run; {os.cpu_count()} cores\n")
        print("| tool   | mode      | requests  | achieved/s | CPU µs/req | user  | sys   | peak MiB |")
        print("|--------|-----------|-----------|------------|------------|-------|-------|----------|")
        n, el, cpu, rss, _, _ = run_reprod(url, 1_000_000, args.seconds)
        row("reprod", "max", n, el, cpu, rss)
        row("wrk", "max", *run_wrk(url, args.seconds))
        row("oha", "max", *run_oha(url, args.seconds))
        n, el, cpu, rss, _, summary = run_reprod(url, 5000, args.seconds)
        row("reprod", "5000/s", n, el, cpu, rss)
        print(f"|        |           | lag p99 {summary['schedule_lag_ms']['p99']:.2f} ms, "
              f"offered {summary['offered_rps']:.0f}/s |            |       |       |          |")
        print(f"| wrk    | 5000/s    |       n/a (wrk cannot pace a fixed rate)                                   |")
        row("oha", "5000/s", *run_oha(url, args.seconds, rate=5000))
        if not args.skip_soak:
            print(f"\nsoak: reprod at 2000/s for {args.soak} s, RSS every 10 s")
            n, el, cpu, rss, samples, _ = run_reprod(url, 2000, args.soak, sample_rss=10)
            print("  " + ", ".join(f"{t}s {m:.1f}" for t, m in samples) + " (MiB)")
            if samples:
                later = [m for t, m in samples if t >= 30]
                if later:
                    print(f"  after 30 s: min {min(later):.1f} MiB, max {max(later):.1f} MiB; "
                          f"{n} requests, {sum(cpu) / n * 1e6:.1f} µs CPU each")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
