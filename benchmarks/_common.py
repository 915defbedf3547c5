"""What every benchmark script shares: the path to ``src/``, the device, timing and peak memory.

A benchmark prints figures and ratios against a reference run in the same process; these
helpers make sure each script times and measures memory the same way (synchronising the
GPU around a timed call, reading the same peak counter), so their rows in
``benchmarks/RESULTS.md`` compare.
"""

from __future__ import annotations

import argparse
import os
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def src_on_path() -> None:
    """Import ``napari_flex3d`` from this checkout's ``src/`` even when it is not installed."""
    for folder in (ROOT / "src", ROOT / "benchmarks"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def parser(doc: str | None, *, device: str | None = "cpu", threads: int | None = None) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring, with ``--device`` and ``--threads`` if asked."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if device is not None:
        p.add_argument("--device", default=device, help=f"cpu, cuda[:i] or auto (default {device})")
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default {threads})")
    return p


def resolve_device(name: str):
    """``auto``: the first GPU if there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def sync(device) -> None:
    """Wait for the GPU's queued work (nothing on the CPU), so a timer sees the work itself."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timings(fn, device="cpu", repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def best_time(fn, device="cpu", repeats: int = 5, warmup: int = 0) -> float:
    return min(timings(fn, device, repeats, warmup))


def reset_peak_memory(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device="cpu") -> float:
    """Peak GPU memory allocated since the last reset, or this process's peak resident memory (CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_json(code: str, *args: str, src=None, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (``python -c code args``) and return the JSON object on
    its last line of output; ``src``: the ``src/`` folder it imports ``napari_flex3d`` from (a
    start-up figure needs a process in which nothing is imported yet)."""
    env = dict(os.environ if env is None else env)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
