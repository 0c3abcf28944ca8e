"""Data-layer benchmark: prints a table of build time, generation rate and loader throughput.

    OMP_NUM_THREADS=1 python benchmarks/data.py [--seconds 5] [--workers 0 2]

Goals (issue "Foundation"): whole DSVAE Sprites build < 60 s on the 2-core machine; Moving
MNIST generation >= 2,000 clips/s on one core. Builds go to a fresh temporary cache, so the
numbers are cold-cache numbers; the loader rows read the (then warm) caches.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import torch

from datamodules import ActionSequenceDataModule, DSVAESprites, MovingMNIST, PairFramesDataModule
from datamodules.dsvae_sprites import build_dsvae_sprites
from datamodules.moving_mnist import benchmark_generation


def loader_rate(dm, seconds: float) -> float:
    """Training batches per second of a DataModule's train loader (after one warm-up batch)."""
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            continue
        count += 1
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per row")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[str, str, str]] = []
    cache = tempfile.mkdtemp(prefix="scenemotion-bench-")
    try:
        t0 = time.perf_counter()
        build_dsvae_sprites(cache_dir=cache, progress=False)
        rows.append(("DSVAE Sprites: build 1296 chars x 9 clips (cold cache)", f"{time.perf_counter() - t0:.1f} s", "< 60 s"))
        for n in (1, 2):
            rate = benchmark_generation(args.seconds, num_digits=n, threads=1)
            rows.append((f"Moving MNIST: clips/s generated, {n} digit(s), 1 core", f"{rate:,.0f}", ">= 2,000"))
        for workers in args.workers:
            seq = ActionSequenceDataModule(DSVAESprites(), batch_size=24, num_workers=workers, cache_dir=cache)
            rows.append((f"Sprites sequences (24 x 8 frames), {workers} workers", f"{loader_rate(seq, args.seconds):.1f} batch/s", ""))
            pairs = PairFramesDataModule(MovingMNIST(), batch_size=64, num_workers=workers, cache_dir=cache)
            rows.append((f"Moving MNIST pairs (64), {workers} workers", f"{loader_rate(pairs, args.seconds):.1f} batch/s", ""))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark'.ljust(width)}  {'measured':>14}  goal")
    print("-" * (width + 28))
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value:>14}  {goal}")


if __name__ == "__main__":
    main()
