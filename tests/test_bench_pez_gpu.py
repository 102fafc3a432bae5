"""bench/pez_gpu.py runs end to end on CPU with the tiny CLIP (the GPU figures come from a CUDA device)."""

import importlib.util
import json
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "pez_gpu.py"
    spec = importlib.util.spec_from_file_location("pez_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pez_gpu_bench_runs_on_cpu_with_tiny(capsys):
    assert _bench().main(["--model", "tiny", "--device", "cpu", "--batches", "2,4", "--precisions", "fp32,bf16",
                          "--steps", "2", "--warmup", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 2), ("fp32", 4), ("bf16", 2), ("bf16", 4)]
    for r in rows:
        assert r["s_per_step"] > 0 and r["achieved_tflop_s"] > 0
        # images per hour at 300 steps are ten times those at 3000 steps, both from the same step time
        assert abs(r["images_per_gpu_hour_at_300_steps"] - 10 * r["images_per_gpu_hour_at_3000_steps"]) <= 10
        assert -1 <= r["mean_best_cosine"] <= 1
    assert out["best"] in rows


def test_pez_gpu_bench_refuses_cuda_without_a_device(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _bench().main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
