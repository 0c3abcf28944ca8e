"""benchmarks/gpu_check.sh (issue 17): its CPU fallback runs end to end with tiny settings.

On a CUDA machine the same script times the paper-scale steps at 32 / bf16-mixed / 16-mixed
and trains the paper-scale Hamiltonian config for a few minutes (README, "GPU check")."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_fallback(tmp_path, cache_dir):
    out = tmp_path / "gpu_check"
    env = dict(os.environ, OMP_NUM_THREADS="1", SCENEMOTION_CACHE=str(cache_dir))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--minutes", "0.2", "--tiny",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GPU check on CPU" in proc.stdout and "FAILED" not in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    rows = report["rows"]
    assert [r["row"] for r in rows] == [f"{c} {p}" for c in ("sprites_hamiltonian_cpu", "mnist_equivariant_cpu")
                                        for p in ("32", "bf16-mixed", "16-mixed")]
    for r in rows:
        assert r["step_s"] > 0 and r["gflop_per_step"] > 0 and 0 < r["pct_of_peak"], r
    fit = report["fit"]
    assert fit["steps"] >= 2 and fit["finite"] and fit["steps_per_s"] > 0
    curve = (out / "learning_curve.csv").read_text().splitlines()
    assert curve[0] == "step,seconds,train_loss" and len(curve) >= 3
    assert (out / "learning_curve.svg").read_text().startswith("<svg")
    grid = Path(fit["grid"][0])
    assert grid.is_file() and grid.suffix == ".png" and grid.parent == out / "fit" / "images"
