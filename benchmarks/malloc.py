"""A ``flex3d`` command with and without freed blocks kept in the heap (``napari_flex3d._process``).

Runs the command given after ``--`` in fresh processes, alternating the default (blocks up to
1 GiB kept) with ``FLEX3D_KEEP_FREED_MEMORY=0`` (glibc's own thresholds), and prints each run's
wall, user and system seconds, peak resident memory and minor page faults, then the ratios of
the means (kept / glibc's). Example:

    python benchmarks/malloc.py --repeats 2 -- reconstruct --run RUN --particles RUN/particles.star \\
        --out /tmp/malloc_out --iterations 3 --device cpu --quiet

The command's ``--out`` folder is removed before each run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from _common import ROOT, parser


def run_once(command: list[str], keep: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)  # glibc's own defaults unless flex3d sets them
    env["FLEX3D_KEEP_FREED_MEMORY"] = "1" if keep else "0"
    if "--out" in command:
        shutil.rmtree(command[command.index("--out") + 1], ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "napari_flex3d.cli", *command], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own usage (RUSAGE_CHILDREN keeps the peak of all)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"flex3d {' '.join(command)} exited {proc.returncode}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "maxrss_gb": usage.ru_maxrss / 2**20,
            "minflt": usage.ru_minflt}


def main(argv=None) -> int:
    p = parser(__doc__, device=None)
    p.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternated (default 2)")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = p.parse_args(argv[:split]), argv[split + 1:]
    if not command:
        p.error("give the flex3d command after --")
    runs = {True: [], False: []}
    for _ in range(args.repeats):
        for keep in (False, True):
            r = run_once(command, keep)
            runs[keep].append(r)
            name = "kept " if keep else "glibc"
            print(f"{name} wall {r['wall']:6.2f} s  user {r['user']:6.2f} s  sys {r['sys']:5.2f} s  "
                  f"peak RSS {r['maxrss_gb']:.2f} GB  minor faults {r['minflt']:,}", flush=True)
    mean = {k: {f: sum(r[f] for r in v) / len(v) for f in v[0]} for k, v in runs.items()}
    print("kept / glibc: " + ", ".join(f"{f} x{mean[True][f] / mean[False][f]:.2f}" for f in ("wall", "user", "sys", "minflt")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
