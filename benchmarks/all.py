"""Run the intake, matching and sign-in flood benchmarks; print their targets as one table.

    .venv/bin/python benchmarks/all.py [--quick]

Each benchmark's full report is kept in instance/bench/<name>.log; the table below collects
every line where a benchmark compared a figure with its target.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {
    "intake": ["benchmarks/intake.py"],
    "matching": ["benchmarks/matching.py"],
    "flood": ["benchmarks/flood.py"],
}
VERDICT = re.compile(r"\b(PASS|MISS)\b")


def run(name: str, command: list[str], log_dir: Path) -> tuple[int, list[str], float]:
    started = time.monotonic()
    log_path = log_dir / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            log.write(line)
            print(f"[{name}] {line}", end="", flush=True)
            if VERDICT.search(line):
                lines.append(" ".join(line.split()))
        code = proc.wait()
    return code, lines, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs of each benchmark")
    args = parser.parse_args(argv)
    log_dir = ROOT / "instance" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, command in BENCHMARKS.items():
        results[name] = run(name, command + (["--quick"] if args.quick else []), log_dir)
    print("\n" + "=" * 100)
    print(f"{'benchmark':<10} {'verdict':<7} target and figures")
    print("-" * 100)
    for name, (code, lines, seconds) in results.items():
        if code not in (0, 1):
            print(f"{name:<10} {'ERROR':<7} exited {code} after {seconds:.0f}s; see "
                  f"{log_dir / (name + '.log')}")
        for line in lines:
            verdict = VERDICT.search(line).group(1)  # type: ignore[union-attr]
            text = VERDICT.sub("", line).strip(" :-")
            print(f"{name:<10} {verdict:<7} {text}")
    print("=" * 100)
    print(f"full reports: {log_dir}/")
    return 0 if all(code in (0, 1) for code, _, _ in results.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
