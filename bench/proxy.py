#!/usr/bin/env python3
"""The fault layer's cost and fidelity, measured side by side in one run.

Pass-through: oha drives bench-server directly, through reprod's dependency proxy (bench-proxy,
recording its history as in a run), and through nginx as a reverse proxy (keep-alive upstream),
at 1 and 16 connections for --seconds each. Reported: median latency added over direct,
throughput relative to direct, and the CPU the proxy itself spent per request (user + system,
from /proc, the proxy's threads and, for nginx, its worker process) -- on a 2-core machine the
client, the proxy and the upstream share the CPU, so throughput mostly says who is cheapest.

Fidelity: 10,000 calls (200 connections) to a stub shaped p50 20 ms / p95 150 ms / p99 400 ms;
requested vs achieved percentiles as the client saw them.

Usage: python3 bench/proxy.py [--seconds 10]
Needs: cargo build --release --workspace; oha (cargo install oha); nginx (apt-get install nginx-light).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def start(argv):
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        sys.exit(f"{argv[0]} did not start: {line!r}")
    return proc, line[len("listening on "):]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_nginx(upstream):
    prefix = tempfile.mkdtemp(prefix="bench-nginx-")
    port = free_port()
    host_port = upstream[len("http://"):]
    conf = f"""
worker_processes 1;
daemon off;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream target {{ server {host_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://target;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen(["nginx", "-c", path, "-p", prefix], stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}", prefix
        except OSError:
            time.sleep(0.1)
    sys.exit("nginx did not start")


def cpu_seconds(pid):
    """User + system CPU of process `pid` and its child processes, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except FileNotFoundError:
            pass
    return total


def oha(url, connections, seconds=None, total=None):
    argv = ["oha", "--no-tui", "--output-format", "json", "-c", str(connections)]
    argv += ["-z", f"{seconds}s"] if seconds else ["-n", str(total)]
    out = subprocess.run(argv + [url + "/"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    for tool in ("oha", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    server, upstream = start([os.path.join(RELEASE, "bench-server"), "127.0.0.1:0"])
    proxy, proxy_url = start([os.path.join(RELEASE, "bench-proxy"), "proxy", upstream])
    nginx, nginx_url, prefix = start_nginx(upstream)
    try:
        print(f"pass-through, {args.seconds} s per cell; {os.cpu_count()} cores\n")
        print("| target | connections | median µs | added µs | p99 µs | requests/s | vs direct | proxy CPU µs/req |")
        print("|---|---|---|---|---|---|---|---|")
        targets = (("direct", upstream, None), ("reprod proxy", proxy_url, proxy.pid),
                   ("nginx", nginx_url, nginx.pid))
        for c in (1, 16):
            direct = None
            for name, url, pid in targets:
                before = cpu_seconds(pid) if pid else 0.0
                d = oha(url, c, seconds=args.seconds)
                spent = cpu_seconds(pid) - before if pid else 0.0
                p50 = d["latencyPercentiles"]["p50"] * 1e6
                p99 = d["latencyPercentiles"]["p99"] * 1e6
                rps = d["summary"]["requestsPerSec"]
                n = sum(d.get("statusCodeDistribution", {}).values())
                cpu = f"{spent / n * 1e6:.1f}" if pid and n else "-"
                if direct is None:
                    direct = (p50, rps)
                print(f"| {name} | {c} | {p50:.0f} | {p50 - direct[0]:+.0f} | {p99:.0f} | {rps:,.0f} | {rps / direct[1]:.2f}x | {cpu} |", flush=True)
    finally:
        for p in (proxy, server):
            p.stdin.close() if p.stdin else None
            p.terminate()
        nginx.terminate()
        for p in (proxy, server, nginx):
            p.wait()
        shutil.rmtree(prefix, ignore_errors=True)

    stub, stub_url = start([os.path.join(RELEASE, "bench-proxy"), "stub", "20ms", "150ms", "400ms"])
    try:
        d = oha(stub_url, 200, total=10000)
        got = d["latencyPercentiles"]
        print("\nfidelity: 10,000 calls to a stub shaped p50 20 ms / p95 150 ms / p99 400 ms (200 connections)\n")
        print("| percentile | requested ms | achieved ms | error |")
        print("|---|---|---|---|")
        for key, want in (("p50", 20), ("p95", 150), ("p99", 400)):
            ms = got[key] * 1e3
            print(f"| {key} | {want} | {ms:.1f} | {100 * (ms - want) / want:+.1f}% |")
    finally:
        stub.stdin.close()
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
