#!/usr/bin/env python3
"""reprod's PostgreSQL proxy against a direct connection and PgBouncer, with pgbench.

In one run, against the PostgreSQL server of DATABASE_URL (a scratch database `reprod_bench`,
made with `pgbench -i` and dropped afterwards): pgbench's select-only and TPC-B-like scripts, at
1 and 8 clients, over the extended query protocol, each for --seconds,

  direct    straight to the server
  reprod    through `bench-dbproxy` (reprod's proxy, recording every statement to a history)
  pgbouncer through PgBouncer in session mode (Debian's package)

and per cell: transactions per second, median and p99 latency (pgbench's per-transaction log),
and the CPU the proxy process used per transaction (/proc/PID/stat, all threads).

Then the injected-latency fidelity: 10,000 select-only transactions through the proxy with every
statement held a latency shaped p50 5 ms / p95 20 ms / p99 50 ms, and the percentiles of the
delays the proxy drew (from its history) beside the requested ones. With --memory, the proxy's
peak RSS after 100,000 and after 1,000,000 recorded statements.

Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python3 bench/dbproxy.py
       [--seconds 10] [--memory]
(needs cargo build --release -p bench-server, pgbench and pgbouncer: apt-get install pgbouncer)
"""

import argparse
import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(ROOT, "target", "release", "bench-dbproxy")
DB = "reprod_bench"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def url_for(base, host, port, db):
    u = urllib.parse.urlparse(base)
    user = u.username or "postgres"
    return f"postgres://{user}@{host}:{port}/{db}?sslmode=disable"


def start_proxy(upstream, *latency):
    p = subprocess.Popen(
        [PROXY, upstream, *latency], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = p.stdout.readline()
    return p, int(line.split()[-1])


HISTORIES = []


def stop_proxy(p):
    p.stdin.close()
    out = p.stdout.read()
    p.wait()
    HISTORIES.extend(l.split(" ", 1)[1] for l in out.splitlines() if l.startswith("history "))
    return out


def start_pgbouncer(work, host, port, user):
    listen = 6433
    ini = os.path.join(work, "pgbouncer.ini")
    users = os.path.join(work, "users.txt")
    with open(users, "w") as f:
        f.write(f'"{user}" ""\n')
    with open(ini, "w") as f:
        f.write(
            f"""[databases]
{DB} = host={host} port={port} dbname={DB}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
"""
        )
    os.chmod(work, 0o777)  # PgBouncer runs as postgres and writes its log and pid here
    for path in (ini, users):
        os.chmod(path, 0o644)
    cmd = ["pgbouncer", ini]
    if os.geteuid() == 0:
        cmd = ["pgbouncer", "-u", "postgres", ini]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return p, listen


def pgbench(url, clients, seconds, select_only, work, tag, transactions=None):
    prefix = os.path.join(work, f"log-{tag}")
    for old in glob.glob(prefix + "*"):
        os.remove(old)
    cmd = ["pgbench", "-n", "-M", "extended", "-c", str(clients), "-j", str(clients)]
    cmd += ["-t", str(transactions)] if transactions else ["-T", str(seconds)]
    if select_only:
        cmd.append("-S")
    cmd += ["-l", f"--log-prefix={prefix}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    tps = 0.0
    for line in out.splitlines():
        if line.startswith("tps ="):
            tps = float(line.split()[2])
    lat = []
    for path in glob.glob(prefix + "*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else 0.0
    return tps, pct(0.5), pct(0.99), len(lat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    base = os.environ.get("DATABASE_URL")
    if not base or not base.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL server (postgres://...)")
    for tool in ("pgbench", "pgbouncer", "psql"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install postgresql-client pgbouncer)")
    if not os.path.exists(PROXY):
        sys.exit("build first: cargo build --release -p bench-server")
    u = urllib.parse.urlparse(base)
    host, port, user = u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres"
    subprocess.run(["psql", base, "-q", "-c", f"DROP DATABASE IF EXISTS {DB}", "-c", f"CREATE DATABASE {DB}"], check=True)
    direct = url_for(base, host, port, DB)
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", direct], check=True, capture_output=True)
    work = tempfile.mkdtemp(prefix="reprod-dbproxy-bench-")
    proxy, proxy_port = start_proxy(f"{host}:{port}")
    bouncer, bouncer_port = start_pgbouncer(work, host, port, user)
    targets = [
        ("direct", direct, None),
        ("reprod", url_for(base, "127.0.0.1", proxy_port, DB), proxy.pid),
        ("pgbouncer", url_for(base, "127.0.0.1", bouncer_port, DB), bouncer.pid),
    ]
    rows = []
    try:
        for select_only, script in ((True, "select-only"), (False, "tpc-b")):
            for clients in (1, 8):
                for name, url, pid in targets:
                    before = cpu_seconds(pid) if pid else 0.0
                    tps, p50, p99, n = pgbench(url, clients, args.seconds, select_only, work, f"{name}-{script}-{clients}")
                    used = cpu_seconds(pid) - before if pid else 0.0
                    rows.append((script, clients, name, tps, p50, p99, 1e6 * used / max(n, 1)))
    finally:
        recorded = stop_proxy(proxy)
        bouncer.terminate()
        bouncer.wait()

    print(f"pgbench -M extended, {args.seconds} s per cell, scale 1\n")
    print("| script | clients | target | tps | median ms | p99 ms | added median ms | proxy CPU µs/tx |")
    print("|---|---|---|---|---|---|---|---|")
    for script, clients, name, tps, p50, p99, cpu in rows:
        base_p50 = next(r[4] for r in rows if r[0] == script and r[1] == clients and r[2] == "direct")
        cpu_s = f"{cpu:.1f}" if name != "direct" else ""
        print(f"| {script} | {clients} | {name} | {tps:,.0f} | {p50:.3f} | {p99:.3f} | {p50 - base_p50:+.3f} | {cpu_s} |")
    print(f"\nreprod proxy: {recorded.splitlines()[0]}")

    # Injected latency fidelity: every statement held p50 5 ms / p95 20 ms / p99 50 ms.
    shaped, shaped_port = start_proxy(f"{host}:{port}", "5ms", "20ms", "50ms")
    url = url_for(base, "127.0.0.1", shaped_port, DB)
    pgbench(url, 8, 0, True, work, "fidelity", transactions=1250)
    out = stop_proxy(shaped)
    history = [l.split(" ", 1)[1] for l in out.splitlines() if l.startswith("history ")][0]
    conn = sqlite3.connect(history)
    delays = sorted(r[0] for r in conn.execute("SELECT delay_us FROM db_statements WHERE fault = 'latency'"))
    pct = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] / 1000
    print(f"\ninjected latency over {len(delays):,} statements (requested p50 5 / p95 20 / p99 50 ms):")
    for q, want in ((0.5, 5), (0.95, 20), (0.99, 50)):
        got = pct(q)
        print(f"  p{int(q * 100)}: {got:.2f} ms ({100 * (got - want) / want:+.1f}%)")

    if args.memory:
        mem, mem_port = start_proxy(f"{host}:{port}")
        url = url_for(base, "127.0.0.1", mem_port, DB)
        # -S is 1 statement per transaction (BEGIN/END are not sent with -S).
        pgbench(url, 8, 0, True, work, "mem1", transactions=12500)
        at_100k = rss_mib(mem.pid)
        pgbench(url, 8, 0, True, work, "mem2", transactions=112500)
        at_1m = rss_mib(mem.pid)
        print(f"\npeak RSS of the proxy: {at_100k:.1f} MiB after 100,000 statements, {at_1m:.1f} MiB after 1,000,000")
        print(stop_proxy(mem).strip())

    subprocess.run(["psql", base, "-q", "-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], check=False)
    shutil.rmtree(work, ignore_errors=True)
    for history in HISTORIES:
        shutil.rmtree(os.path.dirname(history), ignore_errors=True)


if __name__ == "__main__":
    main()
