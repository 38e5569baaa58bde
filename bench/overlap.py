#!/usr/bin/env python3
"""How tightly an overlap group lands, and what that does to a narrow race.

1. Send spread. Against `bench-server` (answers 200 at once), one run per k in 2, 8, 30 with
   two callers side by side: `sync = "last_byte"` and the window mode (`window = "2ms"`). Each
   sends 20 groups per second for the run; the spread of a group is the time from its first
   member's send to its last one's (with `sync`, the final bytes), as `summary.json`'s
   `overlap` reports it.

2. A narrow window. The naive invoice service with `--without slow_dependency` (no injected
   usage delay: the find-then-insert window is the service's own, a few milliseconds at most),
   k = 2, with `sync = "last_byte"`, the shipped `window = "30ms"` and `window = "2ms"`, over
   several seeds: the share of runs that reproduced and the per-key rate (violating keys over
   keys the API touched).

3. A window far narrower than a millisecond. `bench/narrow_counter.py`, a Python asyncio
   counter that reads, yields one turn of the event loop and writes (a lost update when two
   adds share the turn), with a `sync = "last_byte"` caller and a `window = "2ms"` caller side
   by side in each run, several seeds: lost adds per group (Jepsen's counter check).

Usage: python3 bench/overlap.py [--seconds 5] [--trials 5]
       (needs cargo build --release -p reprod -p invoice-service -p bench-server)
"""

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
REPROD = os.path.join(RELEASE, "reprod")

SPREAD = """
name = "spread"
duration = "{seconds}s"
drain = "500ms"
max_ops = 1000000

[[service]]
name = "s"
command = ["{server}", "127.0.0.1:{{port}}"]
ready = {{ stdout_prefix = "listening on ", path = "/", timeout = "20s" }}

[[caller]]
name = "sync"
request = {{ method = "POST", path = "/a/{{key}}" }}
keys = {{ count = 1000000, prefix = "a" }}
rate = 20
overlap = {{ k = {k}, sync = "last_byte" }}

[[caller]]
name = "window"
request = {{ method = "POST", path = "/b/{{key}}" }}
keys = {{ count = 1000000, prefix = "b" }}
rate = 20
overlap = {{ k = {k}, window = "2ms" }}
"""


def run(args, cwd):
    proc = subprocess.run(
        [REPROD, "run", *args, "--json", "--quiet"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": RELEASE + os.pathsep + os.environ["PATH"]},
    )
    if proc.returncode not in (0, 1):
        sys.exit(f"reprod exited {proc.returncode}: {proc.stderr}")
    return json.loads(proc.stdout)


def spreads(work, seconds):
    print("send spread of a group, first to last member (µs), 20 groups/s per caller:")
    print(f"{'k':>3} {'mode':<16} {'groups':>6} {'p50':>8} {'p99':>8} {'max':>8} {'all in flight':>14}")
    for k in (2, 8, 30):
        path = os.path.join(work, f"spread-{k}.toml")
        with open(path, "w") as f:
            f.write(SPREAD.format(seconds=seconds, k=k, server=os.path.join(RELEASE, "bench-server")))
        summary = run([path, "--out", os.path.join(work, "runs")], work)
        for o in summary["overlap"]:
            s = o["spread_us"]
            mode = "last_byte" if o["sync"] == "last_byte" else "window 2ms"
            print(
                f"{k:>3} {mode:<16} {o['groups']:>6} {s['p50']:>8} {s['p99']:>8} {s['max']:>8}"
                f" {o['together']:>14}"
            )


def race(work, seconds, trials):
    base = open(os.path.join(ROOT, "scenarios", "invoices.toml")).read()
    shipped = 'overlap = { k = 2, window = "30ms" }'
    assert shipped in base, "the shipped overlap line changed"
    modes = {
        "last_byte": 'overlap = { k = 2, sync = "last_byte" }',
        "window 30ms": shipped,
        "window 2ms": 'overlap = { k = 2, window = "2ms" }',
    }
    print(
        f"\nnaive invoices --without slow_dependency, {seconds} s runs, {trials} seeds each:"
    )
    print(f"{'mode':<12} {'reproduced':>10} {'violating/keys':>16} {'per-key rate':>12} {'spread p50 µs':>14}")
    for name, line in modes.items():
        path = os.path.join(work, re.sub(r"\W", "_", name) + ".toml")
        with open(path, "w") as f:
            f.write(base.replace(shipped, line))
        reproduced = violating = keys = 0
        p50s = []
        for seed in range(trials):
            summary = run(
                [path, "--set", "variant=naive", "--without", "slow_dependency",
                 "--seed", str(1000 + seed), "--duration", f"{seconds}s",
                 "--out", os.path.join(work, "runs")],
                work,
            )
            bad = max(i["violations"] for i in summary["invariants"])
            db = sqlite3.connect(os.path.join(summary["run_dir"], "history.sqlite"))
            touched = db.execute("SELECT COUNT(DISTINCT key) FROM ops WHERE caller = 'api'").fetchone()[0]
            reproduced += bad > 0
            violating += bad
            keys += touched
            p50s += [o["spread_us"]["p50"] for o in summary["overlap"] if o["caller"] == "api"]
        p50s.sort()
        print(
            f"{name:<12} {reproduced:>5}/{trials:<4} {violating:>8}/{keys:<7} {violating / max(keys, 1):>12.3%}"
            f" {p50s[len(p50s) // 2] if p50s else 0:>14}"
        )


NARROW = """
name = "narrow"
duration = "{seconds}s"
drain = "500ms"

[database]
url = "sqlite:{{run_dir}}/counters.db"

[[service]]
name = "counter"
command = ["python3", "-u", "{counter}", "{{port}}", "{{database.url}}"]
ready = {{ path = "/health", timeout = "20s" }}

[[caller]]
name = "synced"
request = {{ method = "POST", path = "/add/{{key}}" }}
keys = {{ count = 1000000, prefix = "s" }}
rate = 20
overlap = {{ k = 2, sync = "last_byte" }}
timeout = "5s"

[[caller]]
name = "windowed"
request = {{ method = "POST", path = "/add/{{key}}" }}
keys = {{ count = 1000000, prefix = "w" }}
rate = 20
overlap = {{ k = 2, window = "2ms" }}
timeout = "5s"

[[invariant]]
name = "synced"
counter = "SELECT k, n FROM counters WHERE k LIKE 's%'"
key_column = "k"
caller = "synced"

[[invariant]]
name = "windowed"
counter = "SELECT k, n FROM counters WHERE k LIKE 'w%'"
key_column = "k"
caller = "windowed"
"""


def narrow(work, seconds, trials):
    path = os.path.join(work, "narrow.toml")
    with open(path, "w") as f:
        f.write(NARROW.format(seconds=seconds, counter=os.path.join(ROOT, "bench", "narrow_counter.py")))
    print(f"\nasyncio counter (read, one loop turn, write), k = 2, {seconds} s runs, {trials} seeds:")
    print(f"{'mode':<12} {'groups':>7} {'lost an add':>11} {'share':>10} {'spread p50 µs':>14} {'p99 µs':>8}")
    totals = {}
    for seed in range(trials):
        summary = run([path, "--seed", str(2000 + seed), "--out", os.path.join(work, "runs")], work)
        lost = {i["name"]: i["violations"] for i in summary["invariants"]}
        for o in summary["overlap"]:
            t = totals.setdefault(o["caller"], {"groups": 0, "lost": 0, "p50": [], "p99": []})
            t["groups"] += o["groups"]
            t["lost"] += lost[o["caller"]]
            t["p50"].append(o["spread_us"]["p50"])
            t["p99"].append(o["spread_us"]["p99"])
    for caller, mode in (("synced", "last_byte"), ("windowed", "window 2ms")):
        t = totals[caller]
        mid = lambda xs: sorted(xs)[len(xs) // 2]
        print(
            f"{mode:<12} {t['groups']:>7} {t['lost']:>11} {t['lost'] / max(t['groups'], 1):>10.1%}"
            f" {mid(t['p50']):>14} {mid(t['p99']):>8}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    for binary in ("reprod", "invoice-service", "bench-server"):
        if not os.path.exists(os.path.join(RELEASE, binary)):
            sys.exit(f"build first: cargo build --release -p {binary}")
    with tempfile.TemporaryDirectory() as work:
        spreads(work, args.seconds)
        race(work, args.seconds, args.trials)
        narrow(work, args.seconds, args.trials)


if __name__ == "__main__":
    main()
