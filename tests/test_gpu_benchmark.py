"""benchmarks/gpu.py on CPU: every setting in fp32 and bf16 (tiny ViT, 224 px), errors and the time budget."""
import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks import gpu


def test_every_setting_and_precision_runs_and_bf16_runs_under_autocast(tmp_path):
    out = tmp_path / "gpu" / "gpu.json"
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    gpu.main(["--device", "cpu", "--backbone", "vit_tiny_patch16_224", "--batch", "2", "--warmup", "1",
              "--steps", "1", "--time-budget", "100000", "--output", str(out), "--no-progress"])
    assert torch.backends.cuda.matmul.allow_tf32 == tf32_before          # the TF32 switch is put back
    result = json.loads(out.read_text())
    assert result["settings"] == list(gpu.SETTINGS) and result["precisions"] == ["fp32", "bf16"]
    assert result["skipped"] == [] and result["fp32_tf32_off"] is True
    for setting in gpu.SETTINGS:
        for precision, dtype in (("fp32", "torch.float32"), ("bf16", "torch.bfloat16")):
            r = result["results"][setting][precision]
            assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0, (setting, precision, r)
            assert r["train_peak_mib"] is None            # no peak memory off CUDA
            # the forwards' outputs: bfloat16 only if the forward really ran under autocast
            assert r["train_output_dtype"] == dtype and r["eval_output_dtype"] == dtype
        assert result["results"][setting]["bf16"]["train_speedup_vs_fp32"] > 0
    assert result["results"]["plain"]["bf16"]["train_time_vs_plain"] == pytest.approx(1.0)
    table = (tmp_path / "gpu" / "gpu.md").read_text()
    assert "train img/s fp32" in table and "bf16 speed-up train" in table
    for setting in gpu.SETTINGS:
        assert f"| {setting} |" in table


def test_a_failing_setting_is_recorded_and_the_budget_skips_the_rest(tmp_path, monkeypatch):
    clock = [0.0]          # a fake clock: every measurement that runs takes one "second"

    def fake(setting, precision, args, device):
        if setting == "convprompt-5":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        clock[0] += 1.0
        return {"train_images_per_s": 10.0, "eval_images_per_s": 20.0, "train_peak_mib": 1.0,
                "eval_peak_mib": 1.0, "train_output_dtype": "torch.float32", "build_s": 0.0, "wall_s": 0.05}

    monkeypatch.setattr(gpu, "measure_setting", fake)
    monkeypatch.setattr(gpu, "time", SimpleNamespace(time=lambda: clock[0], perf_counter=lambda: clock[0]))
    out = tmp_path / "gpu.json"
    result = gpu.main(["--device", "cpu", "--time-budget", "2.5", "--output", str(out), "--no-progress"])
    assert result == json.loads(out.read_text())
    # plain x 2 (2 s), convprompt-5 x 2 fail at once, convprompt-50 fp32 starts at 2 s < 2.5 s; the rest skipped
    assert result["results"]["convprompt-50"]["fp32"]["train_images_per_s"] == 10.0
    assert result["skipped"] == [f"{s}/{p}" for s in gpu.SETTINGS[2:] for p in ("fp32", "bf16")][1:]
    assert "OutOfMemoryError: CUDA out of memory" in result["results"]["convprompt-5"]["fp32"]["error"]
    assert result["results"]["plain"]["fp32"]["train_images_per_s"] == 10.0      # the first always runs
    for name in result["skipped"]:
        setting, precision = name.split("/")
        assert result["results"][setting][precision] == {"skipped": "time budget"}
    table = (tmp_path / "gpu.md").read_text()
    assert "error" in table and "coda/bf16" in table and "CUDA out of memory" in table
