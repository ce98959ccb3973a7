#!/usr/bin/env python3
"""Measuring helpers for scripts/bench.sh (Linux; standard library only).

Subcommands (each prints one JSON object, or appends JSON lines where it says so):

  cpu PID                          CPU time of a process so far: summed over its threads from
                                   /proc/PID/task/*/schedstat (ns), and the poll thread's own
  wait-ready URL EXPECT TIMEOUT    wait until a sidecar's /metrics shows EXPECT active connections
                                   after at least two polls
  window PID URL SECONDS [EVERY]   a sidecar over a window: polls, mean poll duration, poll-thread
                                   CPU per poll, process CPU share, RSS (sampled every EVERY s)
  oneshot-rss CMD...               run CMD once; its peak RSS (KiB, from wait4) and stdout
  hyperfine FILE OUT LABELS M N    hyperfine --export-json FILE -> one JSON line per command in
                                   OUT (appended), named by the comma-separated LABELS
  wrk FILE                         p50/p99/mean latency and requests/s from `wrk --latency` output
  scrapers HOST:PORT PATH COUNT INTERVAL SECONDS
                                   COUNT scrapers, each fetching PATH once every INTERVAL s
                                   (random phase; open loop, like Prometheus servers), for
                                   SECONDS: latency percentiles of the whole request
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

POLL_THREAD = "fix-monitor-pol"  # the poll thread "fix-monitor-poll", as /proc truncates it


def tasks(pid):
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"{base}/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            yield comm, ns
        except (FileNotFoundError, ProcessLookupError):
            continue


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def cpu(pid):
    """Thread CPU from schedstat (ns, exact but misses threads that have exited) and the
    process's utime+stime (clock ticks, includes exited threads)."""
    total, poll = 0, None
    for comm, ns in tasks(pid):
        total += ns
        if comm.startswith(POLL_THREAD):
            poll = (poll or 0) + ns
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return {"cpu_ns": total, "poll_thread_ns": poll,
            "ticks_s": ticks / os.sysconf("SC_CLK_TCK"), "t": time.monotonic()}


def metrics(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {"polls": 0.0, "poll_sum": 0.0, "active": 0.0, "errors": 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        name, value = m.group(1), float(m.group(3))
        if name == "fix_monitor_poll_duration_seconds_count":
            out["polls"] += value
        elif name == "fix_monitor_poll_duration_seconds_sum":
            out["poll_sum"] += value
        elif name == "fix_connections_active":
            out["active"] += value
        elif name == "fix_monitor_poll_errors_total":
            out["errors"] += value
    return out


def wait_ready(url, expect, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = metrics(url)
            if last["polls"] >= 2 and int(last["active"]) == expect:
                return {"ready": True, **last}
        except OSError as e:
            last = {"error": str(e)}
        time.sleep(0.2)
    return {"ready": False, "last": last}


def window(pid, url, seconds, every=None):
    """Samples at the start and the end (and RSS every `every` s in between)."""
    m0, c0 = metrics(url), cpu(pid)
    rss_max = status_kib(pid, "VmRSS") or 0
    end = c0["t"] + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, every) if every else left)
        rss_max = max(rss_max, status_kib(pid, "VmRSS") or 0)
    c1 = cpu(pid)
    m1 = metrics(url)
    elapsed = c1["t"] - c0["t"]
    polls = m1["polls"] - m0["polls"]
    poll_cpu = None
    if c0["poll_thread_ns"] is not None and c1["poll_thread_ns"] is not None and polls > 0:
        poll_cpu = (c1["poll_thread_ns"] - c0["poll_thread_ns"]) / 1e9 / polls
    return {
        "elapsed_s": elapsed,
        "polls": polls,
        "poll_errors": m1["errors"] - m0["errors"],
        "poll_wall_s": (m1["poll_sum"] - m0["poll_sum"]) / polls if polls else None,
        "poll_cpu_s": poll_cpu,
        "cpu_share": (c1["cpu_ns"] - c0["cpu_ns"]) / 1e9 / elapsed,
        "cpu_share_ticks": (c1["ticks_s"] - c0["ticks_s"]) / elapsed,
        "active": m1["active"],
        "rss_kib": rss_max,
        "hwm_kib": status_kib(pid, "VmHWM"),
    }


def oneshot_rss(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"rss_kib": ru.ru_maxrss, "exit": p.returncode, "wall_s": time.perf_counter() - t0,
            "cpu_s": ru.ru_utime + ru.ru_stime, "stdout_lines": out.count(b"\n"),
            "stdout_head": out[:400].decode(errors="replace"),
            "stdout_tail": out[-400:].decode(errors="replace")}


def hyperfine(path, out, labels, m, n):
    with open(path) as f:
        results = json.load(f)["results"]
    labels = labels.split(",")
    if len(labels) != len(results):
        sys.exit(f"{len(labels)} labels for {len(results)} hyperfine results")
    with open(out, "a") as o:
        for label, r in zip(labels, results):
            o.write(json.dumps({
                "section": "poll", "tool": label, "M": int(m), "N": int(n),
                "wall_s": r["median"], "wall_min_s": r["min"], "wall_max_s": r["max"],
                "cpu_s": r["user"] + r["system"], "user_s": r["user"], "sys_s": r["system"],
                "runs": len(r["times"]), "command": r["command"],
                "failed_runs": sum(1 for c in r["exit_codes"] if c != 0),
            }) + "\n")
    return {"appended": len(results)}


def to_seconds(v):
    m = re.match(r"^([\d.]+)(us|ms|s|m)$", v)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def wrk(path):
    text = open(path).read()
    out = {}
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}(?:\.0+)?%\s+(\S+)", text, re.M)
        out[f"p{q}_s"] = to_seconds(m.group(1)) if m else None
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    if m:
        out["mean_s"], out["max_s"] = to_seconds(m.group(1)), to_seconds(m.group(3))
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = m.group(1).strip() if m else None
    return out


def scrapers(addr, path, count, interval, seconds):
    import random
    import socket
    import threading
    host, port = addr.rsplit(":", 1)
    req = f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode()
    lat, errors, lock = [], [0], threading.Lock()
    start = time.monotonic() + 0.2
    end = start + seconds

    def one(phase):
        t_next = start + phase
        while True:
            now = time.monotonic()
            if t_next >= end:
                return
            if t_next > now:
                time.sleep(t_next - now)
            t0 = time.perf_counter()
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(req)
                    head = b""
                    while True:
                        b = s.recv(65536)
                        if not b:
                            break
                        head = head or b[:12]
                ok = head.startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    errors[0] += 1
            t_next += interval

    threads = [threading.Thread(target=one, args=(random.uniform(0, interval),), daemon=True)
               for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

    return {"scrapers": count, "interval_s": interval, "requests": len(lat), "errors": errors[0],
            "p50_s": q(0.50), "p90_s": q(0.90), "p99_s": q(0.99), "max_s": lat[-1] if lat else None}


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, a = argv[0], argv[1:]
    if cmd == "cpu":
        r = cpu(int(a[0]))
    elif cmd == "wait-ready":
        r = wait_ready(a[0], int(a[1]), float(a[2]))
        print(json.dumps(r))
        sys.exit(0 if r["ready"] else 1)
    elif cmd == "window":
        r = window(int(a[0]), a[1], float(a[2]), float(a[3]) if len(a) > 3 else None)
    elif cmd == "oneshot-rss":
        r = oneshot_rss(a)
    elif cmd == "hyperfine":
        r = hyperfine(*a)
    elif cmd == "wrk":
        r = wrk(a[0])
    elif cmd == "scrapers":
        r = scrapers(a[0], a[1], int(a[2]), float(a[3]), float(a[4]))
    else:
        sys.exit(f"unknown subcommand {cmd}\n{__doc__}")
    print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
