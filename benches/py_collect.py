#!/usr/bin/env python3
"""Times the original Python exporter's FIXMetricsCollector.collect_metrics() (scripts/bench.sh).

    py_collect.py --variant shipped|fixed --target-ip 127.0.0.2 --target-port 7001 \
                  --min-port 20000 --max-port 29999 [--runs 10] [--warmup 1] [--gap 0.25]

Prints one JSON object: median/min/max wall seconds per call, median CPU seconds per call
(this process plus its `ss` child, from getrusage), connections found, and peak RSS of this
process and of its largest child.

Variants:
  shipped  the reference class exactly as it was (benches/reference_exporter.py). It finds 0
           connections: `ss -tna state established` prints no State column, so the address
           columns are parts[2] and parts[3], not parts[3] and parts[4] (every line has 4
           fields and fails the `len(parts) < 5` check).
  fixed    the same method with the smallest change that makes it count what it was meant to:
           read parts[2]/parts[3], skip the header line, and split "addr:port" on the LAST ':'
           (rsplit, as its own netstat path already does). Everything else -- one `ss` run
           over the whole table, parsing every line in Python, the bookkeeping in
           collect_metrics() -- is untouched, so its cost is the original design's cost.

_get_local_ip() is replaced by a constant in both variants: it only labels metrics, and the
original opens a UDP socket towards 8.8.8.8 to find it (the benchmark stays on loopback).
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_exporter  # noqa: E402  (the vendored reference)
from reference_exporter import FIXMetricsCollector  # noqa: E402


class Shipped(FIXMetricsCollector):
    def _get_local_ip(self) -> str:
        return "127.0.0.1"


class Fixed(Shipped):
    def _get_connections_ss(self):
        connections = []
        try:
            cmd = ['ss', '-tna', 'state', 'established']
            result = reference_exporter.subprocess.run(cmd, capture_output=True, text=True, timeout=5)

            for line in result.stdout.split('\n'):
                if not line.strip():
                    continue

                parts = line.split()
                if len(parts) < 4 or parts[0] == 'Recv-Q':  # FIX: 4 columns; skip the header
                    continue

                local = parts[2]   # FIX: was parts[3]
                remote = parts[3]  # FIX: was parts[4]

                if ':' in remote:
                    remote_ip, remote_port = remote.rsplit(':', 1)  # FIX: was split(':')[0], [1]
                    remote_port = int(remote_port)

                    if ':' in local:
                        local_ip, local_port = local.rsplit(':', 1)  # FIX: as above
                        local_port = int(local_port)

                        if remote_ip == self.target_ip:
                            if self.target_port and remote_port != self.target_port:
                                continue

                            if not (self.fix_port_range[0] <= local_port <= self.fix_port_range[1]):
                                continue

                            conn_id = f"{local_ip}:{local_port}-{remote_ip}:{remote_port}"
                            connections.append({
                                'id': conn_id,
                                'local_addr': f"{local_ip}:{local_port}",
                                'remote_addr': f"{remote_ip}:{remote_port}",
                                'local_port': local_port,
                                'remote_port': remote_port,
                                'timestamp': time.time()
                            })
        except Exception as e:
            print(f"获取连接信息失败: {e}", file=sys.stderr)

        return connections


def cpu_seconds():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--variant', choices=['shipped', 'fixed'], required=True)
    ap.add_argument('--target-ip', required=True)
    ap.add_argument('--target-port', type=int, required=True)
    ap.add_argument('--min-port', type=int, required=True)
    ap.add_argument('--max-port', type=int, required=True)
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--gap', type=float, default=0.0,
                    help='idle seconds before each timed call (as between real polls)')
    a = ap.parse_args()

    cls = Shipped if a.variant == 'shipped' else Fixed
    with contextlib.redirect_stdout(sys.stderr):  # the constructor prints a banner
        c = cls(target_ip=a.target_ip, target_port=a.target_port,
                fix_port_range=(a.min_port, a.max_port), scrape_interval=1)
        for _ in range(a.warmup):
            c.collect_metrics()
        walls, cpus = [], []
        for _ in range(a.runs):
            time.sleep(a.gap)
            c0, t0 = cpu_seconds(), time.perf_counter()
            ok = c.collect_metrics()
            t1, c1 = time.perf_counter(), cpu_seconds()
            if not ok:
                raise SystemExit('collect_metrics() failed')
            walls.append(t1 - t0)
            cpus.append(c1 - c0)
    print(json.dumps({
        'variant': a.variant,
        'runs': a.runs,
        'wall_median_s': statistics.median(walls),
        'wall_min_s': min(walls),
        'wall_max_s': max(walls),
        'cpu_median_s': statistics.median(cpus),
        'found': c.metrics['fix_connections_active'],
        'rss_peak_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        'child_rss_peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }))


if __name__ == '__main__':
    main()
