"""report.py keeps the BENCHMARKS.md sections it does not write (the soak's, the kernel close
events', the eBPF splice's, anything by hand) when scripts/bench.sh regenerates the file.

    python3 benches/test_report.py            # on the repository's BENCHMARKS.md

Runs report.py itself (as bench.sh does, with --keep) on the current BENCHMARKS.md and a
small generated result set: no benchmark needs to run.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import report  # noqa: E402

with open(os.path.join(ROOT, "BENCHMARKS.md")) as _f:
    CURRENT = _f.read()


def headings(text):
    return [h for h, _ in report.sections(text) if h is not None]


def body(text, prefix):
    return next(b for h, b in report.sections(text) if h is not None and h.startswith(prefix))


class Splice(unittest.TestCase):
    def test_the_current_file_has_sections_report_py_does_not_write(self):
        # Otherwise this test proves nothing.
        foreign = [h for h in headings(CURRENT) if not h.startswith(report.OWNED)]
        self.assertIn("Soak", foreign)
        self.assertTrue(any(h.startswith("Kernel close events") for h in foreign), foreign)

    def test_regenerating_keeps_foreign_sections_whole_and_replaces_its_own(self):
        generated = "# Benchmarks\n\nnew preamble\n\n## Summary\n\nnew summary\n\n## Findings\n\nnew\n"
        out = report.splice(generated, CURRENT)
        self.assertTrue(out.startswith(generated.rstrip("\n")))
        # Its own sections: the new ones only, the old ones gone (old Summary text absent).
        self.assertEqual(headings(out).count("Summary"), 1)
        self.assertEqual(body(out, "Summary").strip(), "## Summary\n\nnew summary")
        self.assertNotIn(body(CURRENT, "Summary").strip(), out)
        self.assertFalse(any(h.startswith("Cost of one poll") for h in headings(out)))
        # Every foreign section, byte for byte, in its order.
        foreign = [(h, b) for h, b in report.sections(CURRENT)
                   if h is not None and not h.startswith(report.OWNED)]
        for h, b in foreign:
            self.assertIn(b.strip("\n"), out, h)
        self.assertEqual([h for h in headings(out) if not h.startswith(report.OWNED)],
                         [h for h, _ in foreign])
        # Twice is once.
        self.assertEqual(report.splice(generated, out), out)

    def test_a_section_the_caller_rewrites_is_not_kept(self):
        out = report.splice("# B\n", CURRENT, report.OWNED + ("Kernel close events",))
        self.assertFalse(any(h.startswith("Kernel close events") for h in headings(out)))
        self.assertIn("Soak", headings(out))

    def test_headings_inside_code_blocks_do_not_split(self):
        text = "# T\n\n## Soak\n\n```sh\n## not a heading\n```\ntail\n\n## Summary\nx\n"
        self.assertEqual(headings(text), ["Soak", "Summary"])
        out = report.splice("# T\n\n## Summary\ny\n", text)
        self.assertIn("```sh\n## not a heading\n```\ntail", out)

    def test_the_script_as_bench_sh_runs_it(self):
        with tempfile.TemporaryDirectory() as d:
            meta = {"only": "tcpinfo", "date": "2026-11-30 18:00 UTC", "nproc": 2, "cpu": "test",
                    "kernel": "6.18", "git": "test", "loadavg_start": ["0", "0", "0"], "m": 1000}
            mp, rp, old = (os.path.join(d, n) for n in ("meta.json", "results.jsonl", "old.md"))
            for path, text in ((mp, json.dumps(meta)), (rp, ""), (old, CURRENT)):
                with open(path, "w") as f:
                    f.write(text)
            run = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), mp, rp,
                                  "--keep", old, "--owned", "Kernel close events"],
                                 capture_output=True, text=True, check=True)
            out = run.stdout
            self.assertTrue(out.startswith("# Benchmarks: session health only"), out[:200])
            self.assertIn(body(CURRENT, "Soak").strip("\n"), out)
            self.assertNotIn("## Kernel close events", out)
            # Without --keep: the report alone, as before.
            alone = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), mp, rp],
                                   capture_output=True, text=True, check=True).stdout
            self.assertNotIn("## Soak", alone)


if __name__ == "__main__":
    unittest.main()
