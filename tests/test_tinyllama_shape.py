"""The T4 plan against real tensors: a TinyLlama-shaped model (random weights, no download) trains one step and
runs one evaluation point on the CPU in a separate process, so its peak memory is its own.

Half precision (the T4's float16, or bfloat16) is too slow on a CPU without native 16-bit arithmetic for a 1.1B
model (one step took over five minutes here), so this check runs the step in float32; the half-precision path itself
runs on the bundled model in test_failures.py::test_the_t4_recipe_runs_on_the_cpu."""
import json
import math
import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parent / "tinyllama_shape_check.py"


def test_tinyllama_shaped_step_matches_the_memory_plan():
    done = subprocess.run([sys.executable, str(CHECK), "--precision", "float32"], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))  # shown with -s: the peak resident memory next to the plan
    assert result["parameters"] == 1_100_048_384  # TinyLlama-1.1B's count, from its configuration alone
    assert result["trainable"] == result["trainable_real"] == 4 * 3 * 2048 * 5632  # 'auto': MLPs of 4 middle layers
    for part in ("weights", "gradients", "optimizer", "reference"):
        planned, real = result["plan_bytes"][part], result["real_bytes"][part]
        assert abs(planned - real) <= 0.05 * real, (part, planned, real)
    step = result["steps"][-1]
    assert not step["skipped"] and all(math.isfinite(step[k]) for k in ("loss", "forget_loss", "kl"))
    assert result["evaluation_finite"]
    assert result["peak_resident_gib"] < 2 * result["plan_total_gib"]  # the plan is not off by a factor


def test_the_lora_variant_plans_its_16_bit_projections_to_the_byte():
    """The same script with TRAINABLE=lora, float16 and a small model of TinyLlama's layout (a dry run of the T4's
    LoRA path): the projections under the adapters stored in float16, the shared reference costing nothing of its
    own, and the plan's bytes equal to the real tensors'."""
    done = subprocess.run([sys.executable, str(CHECK), "--shape", "small", "--trainable", "lora", "--precision", "float16",
                           "--max-steps", "8"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trainable_choice"] == "lora" and result["weight_dtypes"] == ["float16", "float32"]
    assert result["trainable"] == result["trainable_real"] == 5 * 8 * (2 * 256 + 2 * 192 + 3 * 480)  # rank 8, 7 projections
    assert result["real_bytes"]["reference"] == 0
    assert result["plan_bytes"] == result["real_bytes"]
    step = result["steps"][-1]
    assert not step["skipped"] and all(math.isfinite(step[k]) for k in ("loss", "forget_loss", "kl"))
    assert result["evaluation_finite"]
