#!/usr/bin/env python3
"""eBPF mode against netlink polling: the sidecar's CPU per second as the host grows.

Called by scripts/bench.sh (section "ebpf"); needs root (the eBPF source, bpf_stats). For each
N it puts M matching and N unrelated connections on loopback (fix-loadgen), runs two sidecars
side by side on the same load, one polling netlink at 1 s and one in eBPF mode, checks that
both count exactly M, and measures over a window:
  - each sidecar's CPU time, summed over its threads from /proc/PID/task/*/schedstat (ns);
  - the eBPF program's own run time in the kernel (it runs in whatever context changes a TCP
    state, so it is not in the sidecar's CPU): run_time_ns and run_cnt from the sidecar's BPF
    program fdinfo, with kernel.bpf_stats_enabled=1 for the run;
then the same under unrelated churn (--unrelated-churn), with the achieved rate measured from
/proc/net/snmp (Tcp ActiveOpens). Writes JSON lines, a markdown section and an SVG chart.
"""

import argparse
import glob
import json
import os
import re
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


def prog_stats(pid):
    """(run_time_ns, run_cnt) of the BPF program the process holds, or None."""
    for f in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            text = open(f).read()
        except OSError:
            continue
        if "prog_type:" in text and "run_time_ns" in text:
            rt = int(re.search(r"run_time_ns:\s*(\d+)", text).group(1))
            rc = int(re.search(r"run_cnt:\s*(\d+)", text).group(1))
            return rt, rc
    return None


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
        """Whether /health says per-session tcp_info is measured (eBPF: by exact lookups)."""
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


def measure(args, n, churn):
    load = start_load(args.loadgen, args.m, n, churn, args.workdir)
    cars = {}
    try:
        cars["netlink"] = Sidecar(args.fm, "netlink", args.m, args.workdir, f"sidecar-netlink-{n}-{churn}")
        cars["ebpf"] = Sidecar(args.fm, args.ebpf_source, args.m, args.workdir, f"sidecar-ebpf-{n}-{churn}")
        cars["ebpf_hi"] = Sidecar(args.fm, args.ebpf_source, args.m, args.workdir,
                                  f"sidecar-ebpf-hi-{n}-{churn}",
                                  {"FIX_MONITOR_POLL__HEALTH_INTERVAL": args.health_interval})
        for k in ("ebpf", "ebpf_hi"):
            if cars[k].source != "ebpf":
                raise SystemExit(f"the eBPF sidecar {k} runs the {cars[k].source} source")
        # Both must count exactly the M matching connections before anything is measured.
        deadline = time.time() + 30
        while not all(c.active() == args.m for c in cars.values()):
            if time.time() > deadline:
                raise SystemExit(f"sidecars count {[c.active() for c in cars.values()]}, want {args.m}")
            time.sleep(0.5)
        # All measure every session's tcp_info (netlink in its dump, eBPF by one exact lookup
        # per session per poll, or per health interval): eBPF mode with its health lookups on.
        for k, c in cars.items():
            if not c.session_health():
                raise SystemExit(f"the {k} sidecar says session health is not available")
        time.sleep(2)
        c0 = {k: cpu_ns(c.proc.pid) for k, c in cars.items()}
        p0 = prog_stats(cars["ebpf"].proc.pid)
        o0, t0 = active_opens(), time.monotonic()
        time.sleep(args.window)
        c1 = {k: cpu_ns(c.proc.pid) for k, c in cars.items()}
        p1 = prog_stats(cars["ebpf"].proc.pid)
        o1, t1 = active_opens(), time.monotonic()
        counts = {k: c.active() for k, c in cars.items()}
        rtt = {k: c.rtt_samples() for k, c in cars.items()}
        if not all(v >= args.m for v in rtt.values()):
            raise SystemExit(f"RTT samples {rtt}: some sidecar measured no tcp_info")
    finally:
        for c in cars.values():
            c.stop()
        stop_load(load)
    secs = t1 - t0
    r = {"section": "ebpf", "M": args.m, "N": n, "churn_target_per_s": churn,
         "opens_per_s": round((o1 - o0) / secs, 1), "window_s": round(secs, 2),
         "netlink_cpu_ms_per_s": round((c1["netlink"] - c0["netlink"]) / 1e6 / secs, 3),
         "ebpf_cpu_ms_per_s": round((c1["ebpf"] - c0["ebpf"]) / 1e6 / secs, 3),
         "health_interval": args.health_interval,
         "ebpf_hi_cpu_ms_per_s": round((c1["ebpf_hi"] - c0["ebpf_hi"]) / 1e6 / secs, 3),
         "counted": counts, "session_health": True, "rtt_samples": rtt}
    if p0 and p1:
        runs = p1[1] - p0[1]
        r["prog_runs_per_s"] = round(runs / secs, 1)
        r["prog_ms_per_s"] = round((p1[0] - p0[0]) / 1e6 / secs, 3)
        r["prog_ns_per_run"] = round((p1[0] - p0[0]) / runs, 1) if runs else None
    log(json.dumps(r))
    return r


def measure_lean(args):
    """One eBPF sidecar with lookups and reconciles spread out (--lean-health, --lean-reconcile)
    over a window as long as the reconcile interval, at N = --lean-n: what it takes to stay under
    1 ms/s. Checks that exactly one reconciling dump and the expected lookups fell in the window."""
    n = args.lean_n
    load = start_load(args.loadgen, args.m, n, 0, args.workdir)
    try:
        car = Sidecar(args.fm, args.ebpf_source, args.m, args.workdir, f"sidecar-ebpf-lean-{n}",
                      {"FIX_MONITOR_POLL__HEALTH_INTERVAL": args.lean_health,
                       "FIX_MONITOR_POLL__RECONCILE_INTERVAL": args.lean_reconcile})
        try:
            if car.source != "ebpf":
                raise SystemExit(f"the lean sidecar runs the {car.source} source")
            deadline = time.time() + 30
            while car.active() != args.m or car.rtt_samples() < args.m:
                if time.time() > deadline:
                    raise SystemExit(f"the lean sidecar counts {car.active()}, want {args.m}")
                time.sleep(0.5)
            time.sleep(2)
            c0, r0, s0 = cpu_ns(car.proc.pid), car.counter("fix_monitor_reconciles_total"), car.rtt_samples()
            t0 = time.monotonic()
            time.sleep(args.lean_window)
            c1, r1, s1 = cpu_ns(car.proc.pid), car.counter("fix_monitor_reconciles_total"), car.rtt_samples()
            t1 = time.monotonic()
            count = car.active()
        finally:
            car.stop()
    finally:
        stop_load(load)
    secs = t1 - t0
    r = {"section": "ebpf-lean", "M": args.m, "N": n, "window_s": round(secs, 2),
         "health_interval": args.lean_health, "reconcile_interval": args.lean_reconcile,
         "ebpf_cpu_ms_per_s": round((c1 - c0) / 1e6 / secs, 3), "counted": count,
         "reconciles_in_window": r1 - r0, "lookups_in_window": (s1 - s0) / args.m}
    log(json.dumps(r))
    if count != args.m or r1 - r0 < 1:
        raise SystemExit(f"the lean run is not what it claims: {r}")
    return r


def svg(results, path):
    pts = sorted((r for r in results if not r["churn_target_per_s"]), key=lambda r: r["N"])
    W, H, L, B, T, R = 640, 400, 70, 50, 30, 170
    xmax = max(r["N"] for r in pts) or 1
    ymax = max(max(r["netlink_cpu_ms_per_s"], r["ebpf_cpu_ms_per_s"], r.get("prog_ms_per_s") or 0)
               for r in pts) * 1.1 or 1
    X = lambda n: L + (W - L - R) * n / xmax
    Y = lambda v: H - B - (H - B - T) * v / ymax
    series = [("netlink polling, 1 s", "netlink_cpu_ms_per_s", "#d62728", ""),
              ("eBPF mode: sidecar", "ebpf_cpu_ms_per_s", "#1f77b4", ""),
              (f"eBPF, health every {pts[0].get('health_interval', '?')}", "ebpf_hi_cpu_ms_per_s", "#2ca02c", ""),
              ("eBPF mode: in-kernel program", "prog_ms_per_s", "#1f77b4", "4 3")]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="18" font-size="14">fix-monitor CPU per second, M = {pts[0]["M"]} watched, N unrelated connections</text>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
           f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">N (unrelated connections on the host)</text>',
           f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">CPU ms per second</text>']
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<line x1="{L-4}" y1="{Y(v):.1f}" x2="{W-R}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L-8}" y="{Y(v)+4:.1f}" text-anchor="end">{v:.1f}</text>')
    for r in pts:
        out.append(f'<text x="{X(r["N"]):.1f}" y="{H-B+16}" text-anchor="middle">{r["N"]//1000}k</text>')
    for k, (name, key, color, dash) in enumerate(series):
        sp = [(X(r["N"]), Y(r[key])) for r in pts if r.get(key) is not None]
        if not sp:
            continue
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in sp)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in sp]
        ly = T + 20 + 18 * k
        out.append(f'<line x1="{W-R+10}" y1="{ly-4}" x2="{W-R+30}" y2="{ly-4}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{W-R+34}" y="{ly}" font-size="11">{name}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def markdown(results, svg_name, lean_results=()):
    hi = results[0].get("health_interval", "?")
    rows = ["| N unrelated | TCP opens/s on the host (all) | netlink polling 1 s: sidecar CPU ms/s | eBPF (tcp_info lookups every poll, the default): sidecar CPU ms/s "
            f"| eBPF, `health_interval = \"{hi}\"`: sidecar CPU ms/s "
            "| eBPF: program runs/s | eBPF: program CPU ms/s (in the kernel) | ns per run | counted (netlink, eBPF, eBPF " f"{hi}) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rows.append(f'| {r["N"]:,} | {r["opens_per_s"]:,} | {r["netlink_cpu_ms_per_s"]} | {r["ebpf_cpu_ms_per_s"]} | {r["ebpf_hi_cpu_ms_per_s"]} '
                    f'| {r.get("prog_runs_per_s", "n/a")} | {r.get("prog_ms_per_s", "n/a")} | {"n/a" if r.get("prog_ns_per_run") is None else r["prog_ns_per_run"]} '
                    f'| {int(r["counted"]["netlink"])}, {int(r["counted"]["ebpf"])}, {int(r["counted"]["ebpf_hi"])} |')
    note = ("\nAll three sidecars run side by side on the same load and measure every session's "
            "`tcp_info`: netlink in each poll's dump, eBPF by one exact `sock_diag` lookup per watched "
            "session (batched), every poll by default or once per `poll.health_interval`; the eBPF "
            "columns include those lookups, whose cost grows with M, not N. Each window is as long "
            "as `poll.reconcile_interval` (60 s), so it holds one reconciling full dump (whose cost "
            "does grow with N) for each eBPF sidecar.\n")
    lean = "".join(
        f"\nSpread out (one eBPF sidecar alone, `health_interval = \"{r['health_interval']}\"`, "
        f"`reconcile_interval = \"{r['reconcile_interval']}\"`, a {r['window_s']:.0f} s window "
        f"holding {r['reconciles_in_window']:.0f} reconciling dump and {r['lookups_in_window']:.0f} "
        f"lookups of every session), at N = {r['N']:,}: **{r['ebpf_cpu_ms_per_s']} ms/s**, "
        f"{int(r['counted'])} sessions counted.\n"
        for r in lean_results)
    return "\n".join(rows) + "\n" + note + lean + f"\n![CPU per second against N]({svg_name})\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fm", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--ns", default="0 10000 50000 100000")
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--churn", type=int, default=5000)
    ap.add_argument("--churn-n", type=int, default=10000)
    ap.add_argument("--ebpf-source", default="ebpf")
    ap.add_argument("--lean-n", type=int, default=100000, help="N of the spread-out run (0: none)")
    ap.add_argument("--lean-health", default="60s")
    ap.add_argument("--lean-reconcile", default="5m")
    ap.add_argument("--lean-window", type=float, default=300)
    ap.add_argument("--health-interval", default="10s",
                    help="poll.health_interval of the third sidecar (eBPF, lookups less often)")
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
        for n in map(int, args.ns.split()):
            results.append(measure(args, n, 0))
        if args.churn:
            results.append(measure(args, args.churn_n, args.churn))
        lean = [measure_lean(args)] if args.lean_n else []
    finally:
        open(stats_path, "w").write(old)
    with open(args.json, "a") as f:
        for r in results + lean:
            f.write(json.dumps(r) + "\n")
    svg(results, args.svg)
    open(args.md, "w").write(markdown(results, args.svg_ref or os.path.basename(args.svg), lean))


if __name__ == "__main__":
    main()
