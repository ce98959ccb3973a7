#!/usr/bin/env python3
"""eBPF mode against netlink polling and `ss -tin`: CPU per second and RSS as the host grows.

Called by scripts/bench.sh (section "ebpf"); needs root (the eBPF programs, bpf_stats). For each
M (watched sessions) and N (unrelated connections) it puts M matching and N unrelated
connections on loopback (fix-loadgen) and runs, side by side on the same load, a sidecar polling
netlink at 1 s and one in eBPF mode, both with the defaults (session health every poll: netlink
in its dump, eBPF by its in-kernel pass), checks that both count exactly M and have health for
every session, and measures over a window:
  - each sidecar's CPU time, summed over its threads from /proc/PID/task/*/schedstat (ns), and
    its RSS (VmRSS) at the end of the window;
  - `ss -tin` with the same filter run once a second (what a user would script instead), its
    CPU from getrusage(RUSAGE_CHILDREN);
  - the eBPF programs' own run time in the kernel (they run in whatever context changes a TCP
    state, so it is not in the sidecar's CPU): run_time_ns and run_cnt summed over every BPF
    program the sidecar holds (fdinfo), with kernel.bpf_stats_enabled=1 for the run. The health
    pass, where it runs with BPF_PROG_TEST_RUN, runs in the sidecar's own system call and is in
    its CPU already;
then the same under unrelated churn (--churn opens/closes per second at --churn-n), with the
achieved rate measured from /proc/net/snmp (Tcp ActiveOpens). Writes JSON lines, a markdown
section and an SVG chart.
"""

import argparse
import glob
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request

TARGET = "127.0.0.2"
PORT = 7001
MIN_PORT = 20000


def log(msg):
    print(f"[bench-ebpf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_ns(pid):
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(open(f).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


# bpf_prog_type numbers (include/uapi/linux/bpf.h): the programs the kernel runs on its own
# (BTF tracepoints and the TCP iterator) are BPF_PROG_TYPE_TRACING; the health pass that the
# sidecar runs with BPF_PROG_TEST_RUN where the storage iterator is refused is a raw tracepoint
# program, and its time is spent in the sidecar's own system call (in its CPU already).
PROG_TYPE_RAW_TRACEPOINT = 17
PROG_TYPE_TRACING = 26


def prog_stats(pid, prog_type=PROG_TYPE_TRACING):
    """(run_time_ns, run_cnt) summed over the BPF programs of `prog_type` the process holds,
    or None."""
    rt = rc = 0
    found = False
    for f in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            text = open(f).read()
        except OSError:
            continue
        m = re.search(r"prog_type:\s*(\d+)", text)
        if m and int(m.group(1)) == prog_type and "run_time_ns" in text:
            found = True
            rt += int(re.search(r"run_time_ns:\s*(\d+)", text).group(1))
            rc += int(re.search(r"run_cnt:\s*(\d+)", text).group(1))
    return (rt, rc) if found else None


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def children_cpu_ns():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((r.ru_utime + r.ru_stime) * 1e9)


def ss_filter(m):
    return (f"( dst {TARGET}:{PORT} and sport >= :{MIN_PORT} and sport <= :{MIN_PORT + m - 1} )")


def active_opens():
    lines = open("/proc/net/snmp").read().splitlines()
    tcp = [l.split() for l in lines if l.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("ActiveOpens")])


class Sidecar:
    def __init__(self, fm, source, m, workdir, name, extra_env=None):
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FIX_MONITOR_", "DOWNSTREAM_", "OTEL_"))}
        env["FIX_MONITOR_POLL__SOURCE"] = source
        env["FIX_MONITOR_CONFIG"] = "/dev/null"
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [fm, "run", "--ip", TARGET, "--target-port", str(PORT), "--min-port", str(MIN_PORT),
             "--max-port", str(MIN_PORT + m - 1), "--interval", "1s", "--listen", "127.0.0.1:0"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        self.addr = None
        deadline = time.time() + 60
        while time.time() < deadline and self.addr is None:
            text = open(self.log_path).read()
            m_ = re.search(r"listening on http://(\S+)", text)
            if m_:
                self.addr = m_.group(1)
            elif self.proc.poll() is not None:
                raise SystemExit(f"sidecar {name} exited: {text[-2000:]}")
            time.sleep(0.1)
        if self.addr is None:
            raise SystemExit(f"sidecar {name} did not start")
        self.source = re.search(r'fix-monitor started.*source="?(\w+)', open(self.log_path).read()).group(1)

    def session_health(self):
        """Whether /health says per-session tcp_info is measured (eBPF: by its in-kernel pass)."""
        body = urllib.request.urlopen(f"http://{self.addr}/health", timeout=10).read().decode()
        return json.loads(body)["session_health"]["available"]

    def rtt_samples(self):
        body = urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=10).read().decode()
        return sum(float(l.split()[-1]) for l in body.splitlines()
                   if l.startswith("fix_connection_rtt_seconds_count{"))

    def counter(self, name):
        body = urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=10).read().decode()
        return sum(float(l.split()[-1]) for l in body.splitlines()
                   if l.startswith(name + "{") or l.startswith(name + " "))

    def active(self):
        body = urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=10).read().decode()
        return sum(float(l.split()[-1]) for l in body.splitlines()
                   if l.startswith("fix_connections_active{"))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_load(loadgen, m, n, churn, workdir):
    ready = os.path.join(workdir, "ebpf-truth.json")
    if os.path.exists(ready):
        os.remove(ready)
    args = [loadgen, "--matching", str(m), "--unrelated", str(n), "--target", f"{TARGET}:{PORT}",
            "--min-port", str(MIN_PORT), "--ready-file", ready, "--timeout", "120"]
    if churn:
        args += ["--unrelated-churn", str(churn), "--per-process", "2500"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(workdir, f"ebpf-loadgen-{n}.log"), "w"))
    deadline = time.time() + 150
    while not os.path.exists(ready):
        if p.poll() is not None or time.time() > deadline:
            raise SystemExit(f"fix-loadgen failed (see {workdir}/ebpf-loadgen-{n}.log)")
        time.sleep(0.1)
    return p


def stop_load(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
    # Let the kernel finish closing the sockets before the next step.
    time.sleep(3)


def measure(args, m, n, churn):
    load = start_load(args.loadgen, m, n, churn, args.workdir)
    cars = {}
    try:
        cars["netlink"] = Sidecar(args.fm, "netlink", m, args.workdir, f"sidecar-netlink-{m}-{n}-{churn}")
        cars["ebpf"] = Sidecar(args.fm, args.ebpf_source, m, args.workdir, f"sidecar-ebpf-{m}-{n}-{churn}")
        if cars["ebpf"].source != "ebpf":
            raise SystemExit(f"the eBPF sidecar runs the {cars['ebpf'].source} source")
        # Both must count exactly the M matching connections, with health for each, before
        # anything is measured.
        deadline = time.time() + 60
        while not all(c.active() == m and c.rtt_samples() >= m for c in cars.values()):
            if time.time() > deadline:
                raise SystemExit(f"sidecars count {[c.active() for c in cars.values()]} "
                                 f"with {[c.rtt_samples() for c in cars.values()]} RTT samples, want {m}")
            time.sleep(0.5)
        for k, c in cars.items():
            if not c.session_health():
                raise SystemExit(f"the {k} sidecar says session health is not available")
        time.sleep(2)
        c0 = {k: cpu_ns(c.proc.pid) for k, c in cars.items()}
        p0 = prog_stats(cars["ebpf"].proc.pid)
        h0 = prog_stats(cars["ebpf"].proc.pid, PROG_TYPE_RAW_TRACEPOINT)
        s0, ss_runs, ss_lines = children_cpu_ns(), 0, 0
        o0, t0 = active_opens(), time.monotonic()
        while time.monotonic() - t0 < args.window - 1:
            tick = time.monotonic()
            out = subprocess.run(["ss", "-Htin", "state", "established", ss_filter(m)],
                                 stdout=subprocess.PIPE, check=True).stdout
            ss_runs += 1
            ss_lines = out.count(b"\n")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        time.sleep(max(0.0, args.window - (time.monotonic() - t0)))
        c1 = {k: cpu_ns(c.proc.pid) for k, c in cars.items()}
        p1 = prog_stats(cars["ebpf"].proc.pid)
        h1 = prog_stats(cars["ebpf"].proc.pid, PROG_TYPE_RAW_TRACEPOINT)
        s1 = children_cpu_ns()
        o1, t1 = active_opens(), time.monotonic()
        rss = {k: rss_kib(c.proc.pid) for k, c in cars.items()}
        counts = {k: c.active() for k, c in cars.items()}
        reconciles = cars["ebpf"].counter("fix_monitor_reconciles_total")
    finally:
        for c in cars.values():
            c.stop()
        stop_load(load)
    secs = t1 - t0
    r = {"section": "ebpf", "M": m, "N": n, "churn_target_per_s": churn,
         "opens_per_s": round((o1 - o0) / secs, 1), "window_s": round(secs, 2),
         "netlink_cpu_ms_per_s": round((c1["netlink"] - c0["netlink"]) / 1e6 / secs, 3),
         "ebpf_cpu_ms_per_s": round((c1["ebpf"] - c0["ebpf"]) / 1e6 / secs, 3),
         "ss_cpu_ms_per_s": round((s1 - s0) / 1e6 / secs, 3), "ss_runs": ss_runs,
         "ss_sessions": ss_lines // 2,
         "netlink_rss_mib": round(rss["netlink"] / 1024, 1), "ebpf_rss_mib": round(rss["ebpf"] / 1024, 1),
         "counted": counts, "ebpf_reconciles": reconciles}
    if p0 and p1:
        runs = p1[1] - p0[1]
        r["prog_runs_per_s"] = round(runs / secs, 1)
        r["prog_ms_per_s"] = round((p1[0] - p0[0]) / 1e6 / secs, 3)
        r["prog_ns_per_run"] = round((p1[0] - p0[0]) / runs, 1) if runs else None
    if h0 and h1:
        passes = h1[1] - h0[1]
        r["pass_runs_per_s"] = round(passes / secs, 2)
        r["pass_us_per_run"] = round((h1[0] - h0[0]) / 1e3 / passes, 1) if passes else None
    log(json.dumps(r))
    if any(v != m for v in counts.values()):
        raise SystemExit(f"a sidecar miscounted: {r}")
    return r


def svg(results, path):
    pts = [r for r in results if not r["churn_target_per_s"]]
    ms = sorted({r["M"] for r in pts})
    W, H, L, B, T, R = 700, 420, 70, 50, 30, 230
    xmax = max(r["N"] for r in pts) or 1
    keys = ("netlink_cpu_ms_per_s", "ebpf_cpu_ms_per_s", "ss_cpu_ms_per_s", "prog_ms_per_s")
    ymax = max((r.get(k) or 0) for r in pts for k in keys) * 1.1 or 1
    X = lambda n: L + (W - L - R) * n / xmax
    Y = lambda v: H - B - (H - B - T) * v / ymax
    colors = {"netlink_cpu_ms_per_s": "#d62728", "ss_cpu_ms_per_s": "#7f7f7f",
              "ebpf_cpu_ms_per_s": "#1f77b4", "prog_ms_per_s": "#2ca02c"}
    names = {"netlink_cpu_ms_per_s": "netlink polling, 1 s", "ss_cpu_ms_per_s": "ss -tin, once a second",
             "ebpf_cpu_ms_per_s": "eBPF mode: sidecar", "prog_ms_per_s": "eBPF: programs in the kernel"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="18" font-size="14">CPU per second, M watched sessions among N unrelated connections</text>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
           f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">N (unrelated connections on the host)</text>',
           f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">CPU ms per second</text>']
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<line x1="{L-4}" y1="{Y(v):.1f}" x2="{W-R}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L-8}" y="{Y(v)+4:.1f}" text-anchor="end">{v:.1f}</text>')
    for n in sorted({r["N"] for r in pts}):
        out.append(f'<text x="{X(n):.1f}" y="{H-B+16}" text-anchor="middle">{n//1000}k</text>')
    k = 0
    for m in ms:
        dash = "" if m == ms[0] else "6 3"
        for key in keys:
            sp = [(X(r["N"]), Y(r[key])) for r in sorted(pts, key=lambda r: r["N"])
                  if r["M"] == m and r.get(key) is not None]
            if not sp:
                continue
            color = colors[key]
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in sp)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in sp]
            ly = T + 20 + 16 * k
            k += 1
            out.append(f'<line x1="{W-R+10}" y1="{ly-4}" x2="{W-R+30}" y2="{ly-4}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
            out.append(f'<text x="{W-R+34}" y="{ly}" font-size="11">{names[key]}, M = {m:,}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def markdown(results, svg_name):
    rows = ["| M watched | N unrelated | TCP opens/s on the host | netlink polling 1 s: CPU ms/s | eBPF mode (defaults): CPU ms/s "
            "| `ss -tin`, same filter, once a second: CPU ms/s | eBPF tracing programs in the kernel: ms/s (runs/s, ns per run) "
            "| eBPF health pass: µs per pass (in the sidecar's CPU) | RSS MiB (netlink, eBPF) | counted (netlink, eBPF) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        prog = (f'{r["prog_ms_per_s"]} ({r["prog_runs_per_s"]:,}, {r["prog_ns_per_run"]})'
                if r.get("prog_ms_per_s") is not None else "n/a")
        rows.append(f'| {r["M"]:,} | {r["N"]:,} | {r["opens_per_s"]:,} | {r["netlink_cpu_ms_per_s"]} | **{r["ebpf_cpu_ms_per_s"]}** '
                    f'| {r["ss_cpu_ms_per_s"]} | {prog} | {r.get("pass_us_per_run", "n/a")} | {r["netlink_rss_mib"]}, {r["ebpf_rss_mib"]} '
                    f'| {int(r["counted"]["netlink"])}, {int(r["counted"]["ebpf"])} |')
    w = results[0]["window_s"]
    note = ("\nBoth sidecars run side by side on the same load with the defaults (1 s polls, "
            "session health every poll: netlink in each poll's dump, eBPF by one in-kernel pass over "
            "the watched sessions) and are checked to count exactly M with an RTT sample for every "
            f"session. Each window ({w:.0f} s) is as long as `poll.reconcile_interval`, so it holds "
            "the eBPF sidecar's periodic reconcile (from its programs' table, not a dump). `ss -tin` "
            "runs once a second with the same filter, as a script would; its CPU is the child "
            "processes' user and system time. The tracing programs' in-kernel time is what the "
            "kernel's `bpf_stats` counts for them (state changes, resets, retransmits): it lands on "
            "whatever thread changed a socket's state, not on the sidecar. The health pass (a "
            "program the sidecar runs with `BPF_PROG_TEST_RUN` on this kernel) runs in the "
            "sidecar's own system call: its time is part of the sidecar's CPU column.\n")
    return "\n".join(rows) + "\n" + note + f"\n![CPU per second against N]({svg_name})\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fm", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--ns", default="0 10000 100000")
    ap.add_argument("--ms", default="1000 10000")
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--churn", type=int, default=5000)
    ap.add_argument("--churn-n", type=int, default=10000)
    ap.add_argument("--ebpf-source", default="ebpf")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--svg-ref", help="how the markdown refers to the chart (default: its file name)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the eBPF benchmark needs root (CAP_BPF, CAP_PERFMON, bpf_stats)")
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    old = open(stats_path).read().strip()
    open(stats_path, "w").write("1")
    results = []
    try:
        ms = list(map(int, args.ms.split()))
        for m in ms:
            for n in map(int, args.ns.split()):
                results.append(measure(args, m, n, 0))
        if args.churn:
            results.append(measure(args, ms[0], args.churn_n, args.churn))
    finally:
        open(stats_path, "w").write(old)
    with open(args.json, "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    svg(results, args.svg)
    open(args.md, "w").write(markdown(results, args.svg_ref or os.path.basename(args.svg)))


if __name__ == "__main__":
    main()
