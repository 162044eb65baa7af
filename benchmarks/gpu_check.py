"""The Colab T4 recipe on a real GPU, with TinyLlama's shape and random weights (no download, no hub).

1. `tests/tinyllama_shape_check.py` on the GPU: the T4 recipe (float16 autocast, GradScaler, float16 reference, the
   middle MLPs) with the notebook's batch (8 forget and 4 retain examples) and PyTorch held to the 14.7 GiB a T4
   offers: seconds per step, one evaluation point on every tuning probe, peak memory against the plan. Then the same
   with LoRA adapters over a float16 base (`TRAINABLE=lora`), and, last, with bfloat16, the path `auto` takes on a
   GPU that has it.
2. The whole notebook, every cell, on a random TinyLlama saved to a folder with a stand-in tokenizer of TinyLlama's
   32000 tokens and chat format (`AMNESIA_MODEL=<folder>`, `PRECISION=float16`, `CONTINUE_IF_UNKNOWN`), executed by
   nbclient with the same 14.7 GiB limit: which cells fail on CUDA, each cell's seconds, the peak memory.

Random weights know nothing, so the notebook's scores mean nothing here; this checks that the code runs on CUDA, fits
a T4's memory and how long its parts take.

    python benchmarks/gpu_check.py OUT_DIR                         # on a machine with a GPU
    python benchmarks/gpu_check.py OUT_DIR --shape small --skip-shape-check   # a dry run of part 2 on the CPU
    python benchmarks/gpu_check.py OUT_DIR --bundled float32,float16,float16@1   # the bundled model's default run
        # per precision (@SEED: another seed; runs with a seed keep only their metrics.json)
        # (on a CPU: bfloat16, or standin = float16 with float16 autocast hidden: bfloat16 with the loss scaler)
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import llama_style_tokenizer  # noqa: E402
from tinyllama_shape_check import SMALL, TINYLLAMA, random_tinyllama  # noqa: E402

T4_GIB = 14.7  # what PyTorch can allocate on a 15 GiB Colab T4 (the notebook's T4_USABLE_GIB)
CAP_CELL = """import torch  # added by benchmarks/gpu_check.py: hold PyTorch to a T4's memory
if torch.cuda.is_available():
    torch.cuda.set_per_process_memory_fraction({gib} * 2 ** 30 / torch.cuda.mem_get_info()[1])
    print(f"GPU memory held to {gib} GiB of {{torch.cuda.mem_get_info()[1] / 2 ** 30:.1f}}")"""
PEAK_CELL = """import json, torch  # added by benchmarks/gpu_check.py
print("GPU_PEAK", json.dumps({"allocated_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
                              "reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 2)}
                             if torch.cuda.is_available() else {}))"""


STANDIN_CELL = """_cpu_autocast_works = cpu_autocast_works  # added by benchmarks/gpu_check.py: float16 autocast hidden
cpu_autocast_works = lambda dtype: False if dtype == torch.float16 else _cpu_autocast_works(dtype)"""


def insert_standin_cell(notebook):
    """Put STANDIN_CELL right before the cell that resolves the run's precision; return its index."""
    at = next(i for i, cell in enumerate(notebook.cells)
              if 'precision = resolve_precision(DEVICE, CONFIG["PRECISION"])' in cell.source)
    notebook.cells.insert(at, nbformat.v4.new_code_cell(STANDIN_CELL))
    return at


def standin_tokenizer(vocab_size):
    """The tests' small TinyLlama-format tokenizer, filled up to `vocab_size` with pseudo-words, so that every id a
    random model generates decodes to some text."""
    tokenizer = llama_style_tokenizer()
    tokenizer.add_tokens([f"zq{i}x" for i in range(vocab_size - len(tokenizer))])
    return tokenizer


def save_random_model(folder, shape, device):
    """A random model of `shape` in float16 (the notebook loads it in float32) and its stand-in tokenizer."""
    model = random_tinyllama(device, shape).half()
    model.save_pretrained(folder)
    standin_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def cell_seconds(cell):
    """Seconds a cell ran, from the timestamps nbclient records."""
    execution = cell.metadata.get("execution", {})
    try:
        start, end = (datetime.fromisoformat(execution[k].replace("Z", "+00:00"))
                      for k in ("iopub.execute_input", "shell.execute_reply"))
    except KeyError:
        return None
    return round((end - start).total_seconds(), 1)


def run_notebook(model, precision, output_dir, executed_path, gib, cell_timeout):
    """Execute every cell of the notebook (MODEL=`model`, PRECISION=`precision`, the other settings at their defaults,
    PyTorch held to `gib` GiB when given); return a summary of errors, timings and peak memory. PRECISION `standin`:
    `float16` with this torch's float16 autocast hidden, so that a CPU takes the T4 recipe's stand-in (bfloat16
    autocast with the loss scaler) even where it could emulate float16."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(ROOT / "targeted_amnesia.ipynb", as_version=4)
    if precision == "standin":
        precision = "float16"
        insert_standin_cell(notebook)
    if gib:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(CAP_CELL.format(gib=gib)))
    notebook.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    os.environ.update(AMNESIA_MODEL=str(model), AMNESIA_PRECISION=precision, AMNESIA_OUTPUT_DIR=str(output_dir),
                      AMNESIA_CONTINUE_IF_UNKNOWN="0" if model == "bundled" else "1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    started = time.time()
    client = NotebookClient(notebook, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, executed_path)
    summary = {"seconds": round(time.time() - started, 1), "errors": [], "slowest_cells": [], "peak": None}
    timings = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        timings.append((cell_seconds(cell) or 0, index, cell.source.splitlines()[0][:70] if cell.source else ""))
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                summary["errors"].append({"cell": index, "error": f"{output.ename}: {output.evalue[:300]}"})
            text = output.get("text", "")
            if "GPU_PEAK" in text:
                summary["peak"] = json.loads(text.split("GPU_PEAK", 1)[1].strip().splitlines()[0])
    summary["slowest_cells"] = [{"cell": i, "seconds": s, "first_line": line} for s, i, line in sorted(timings, reverse=True)[:12]]
    summary["code_cells_run"] = sum(1 for s, _, _ in timings if s)
    return summary


def shape_check(device, shape, precision, cap, timeout, trainable="auto"):
    """tests/tinyllama_shape_check.py with the notebook's batch, 5 timed steps and every tuning probe."""
    command = [sys.executable, str(ROOT / "tests" / "tinyllama_shape_check.py"), "--device", device, "--precision",
               precision, "--shape", shape, "--trainable", trainable, "--examples", "8", "--retain-examples", "4", "--timed-steps", "5",
               "--probes", "0"] + (["--gpu-memory-gib", str(cap)] if cap else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    print(done.stderr[-2500:], flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"rc": done.returncode}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", default="tinyllama", choices=["tinyllama", "small"])
    parser.add_argument("--skip-shape-check", action="store_true")
    parser.add_argument("--gpu-memory-gib", type=float, default=T4_GIB)
    parser.add_argument("--cell-timeout", type=int, default=240)
    parser.add_argument("--bundled", default="", help="instead: the bundled model's default run at these precisions, "
                        "comma-separated, each optionally @SEED (float32,float16@1); each run's metrics.json lands in OUT_DIR")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped: out of time"))  # so that what is done gets written
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "CPU", "torch": torch.__version__}
    save = lambda: (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    log = lambda text: print(f"[gpu_check] {text}", flush=True)

    def part(name, work):
        started = time.time()
        try:
            results[name] = work()
        except Exception as error:  # one part failing must not lose the others
            results[name] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
        log(f"{name} ({time.time() - started:.0f} s): {json.dumps(results[name], indent=1)}")
        save()

    if args.bundled:
        for run in args.bundled.split(","):  # PRECISION or PRECISION@SEED
            precision, _, seed = run.partition("@")
            name = f"bundled_{precision}" + (f"_seed{seed}" if seed else "")
            output_dir = Path(f"/tmp/{name}")

            def bundled_run():
                os.environ["AMNESIA_SEED"] = seed or "0"
                executed = args.out / f"executed_{name}.ipynb" if not seed else output_dir / "executed.ipynb"
                summary = run_notebook("bundled", precision, output_dir, executed, None, args.cell_timeout)
                shutil.copy(output_dir / "metrics.json", args.out / f"metrics_{name}.json")
                return summary
            part(name, bundled_run)
        return
    if not args.skip_shape_check:
        part("t4_recipe", lambda: shape_check(device, args.shape, "float16", args.gpu_memory_gib, 240))
        part("t4_lora", lambda: shape_check(device, args.shape, "float16", args.gpu_memory_gib, 240, trainable="lora"))
    folder = Path("/tmp/random-tinyllama" if args.shape == "tinyllama" else "/tmp/random-small-llama")
    part("random_model_parameters", lambda: save_random_model(folder, TINYLLAMA if args.shape == "tinyllama" else SMALL, device))
    if device == "cuda":
        torch.cuda.empty_cache()  # give the random model's memory back before the notebook's kernel starts
    part("notebook", lambda: run_notebook(folder, "float16", args.out / "notebook_outputs",
                                          args.out / "executed_notebook.ipynb", args.gpu_memory_gib, args.cell_timeout))
    if not args.skip_shape_check:
        part("bfloat16", lambda: shape_check(device, args.shape, "bfloat16", None, 150))


if __name__ == "__main__":
    main()
