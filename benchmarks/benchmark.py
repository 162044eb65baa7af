"""Speed and memory benchmark of the notebook's training step.

Part 1 (CPU, bundled SmolLM2-135M-Instruct): seconds per step, tokens per second, the share of time in
forward, backward, optimizer and evaluation, the FLOP rate the step achieves, and the same step written
naively (reference model recomputed every step, every sequence padded to 128 tokens) for comparison.

Part 2 (TinyLlama-shaped model with random weights, built from its configuration, no download): the
parameter count and memory plan the notebook would use on a Colab T4, against the 14.7 GiB budget. The same recipe
measured on a GPU is `benchmarks/gpu_check.py`.

    python benchmarks/benchmark.py [--steps 6] [--output benchmarks/results.md]
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from notebook_loader import load_notebook_functions  # noqa: E402
from tinyllama_shape_check import TINYLLAMA  # noqa: E402

NAIVE_LENGTH = 128
MORE_RESULTS = "<!-- results of other scripts below; benchmark.py keeps them -->"


def pad_to(batch, length, pad_id, ignore):
    """The naive loop's batches: every sequence padded to a fixed length."""
    extra = length - batch["input_ids"].shape[1]
    return {"input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
            "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
            "labels": F.pad(batch["labels"], (0, extra), value=ignore),
            "marks": F.pad(batch["marks"], (0, extra), value=False)}


def timed_step(nb, model, reference, optimizer, forget, forget_logprobs, retain, retain_logprobs, settings, naive,
               precision=None):
    """One call of the notebook's own `training_step`, split into phases by hooks: the forward phase ends when the
    model's last forward pass returns, the optimizer phase starts when AdamW's step begins (the loss arithmetic after the
    last forward and the gradient clipping count as backward). The naive variant first recomputes the reference."""
    marks = {}
    started = time.perf_counter()
    if naive:
        with torch.no_grad():
            retain_logprobs = nb.label_logprobs(reference, retain)
            forget_logprobs = nb.label_logprobs(reference, forget)
    autocast, scaler = nb.precision_for(model.device.type, precision or nb.resolve_precision("cpu", "float32"))
    hooks = [model.register_forward_hook(lambda *_: marks.__setitem__("forward", time.perf_counter())),
             optimizer.register_step_pre_hook(lambda *_: marks.__setitem__("optimizer", time.perf_counter()))]
    try:
        nb.training_step(model, optimizer, forget, forget_logprobs, retain, retain_logprobs, settings, autocast, scaler)
    finally:
        for hook in hooks:
            hook.remove()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    ended = time.perf_counter()
    return {"forward": marks["forward"] - started, "backward": marks["optimizer"] - marks["forward"],
            "optimizer": ended - marks["optimizer"]}


def flops_per_token(model):
    """Forward 2N, backward 2N for activation gradients plus 2N_trainable for weight gradients (N without lookup-only embeddings)."""
    total = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        total -= model.get_input_embeddings().weight.numel()  # an untied embedding is a lookup, not a matmul
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * total + 2 * trainable


def cpu_benchmark(nb, steps):
    source, _ = nb.resolve_model_source("bundled", has_gpu=False)
    model, tokenizer = nb.load_model_and_tokenizer(source, "cpu")
    reference = nb.make_frozen_reference(model)
    pad = tokenizer.pad_token_id
    topic = nb.HARRY_POTTER
    settings = nb.LoopSettings(learning_rate=1e-5, retain_weight=5.0, max_steps=steps, eval_every=10)
    forget_examples = [nb.encode_chat_example(tokenizer, q, *nb.parse_marks(a))
                       for q, a in topic.forget_exchanges[:settings.forget_batch_size]]
    forget = nb.collate(forget_examples, pad, "cpu")
    with torch.no_grad():
        forget_logprobs = nb.label_logprobs(reference, forget)
    chats = nb.on_policy_answers(reference, tokenizer, nb.RETAIN_QUESTIONS, nb.retain_cache_file(source))
    retain_examples = nb.encode_texts_and_chats(tokenizer, nb.RETAIN_TEXTS, chats)
    heldout = nb.collate(nb.encode_texts_and_chats(tokenizer, nb.HELDOUT_TEXTS, nb.HELDOUT_CHATS), pad, "cpu")
    nb.select_trainable(model, "all")
    results = {}
    for variant in ("optimised", "naive"):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (nb.adamw(params, settings.learning_rate) if variant == "optimised"  # the notebook's fused AdamW
                     else torch.optim.AdamW(params, lr=settings.learning_rate))
        started = time.perf_counter()
        per_example = nb.reference_logprobs_per_example(reference, retain_examples, pad, "cpu")
        precompute = time.perf_counter() - started
        phases, tokens = [], 0
        for step in range(steps):
            chosen = [(step * settings.retain_batch_size + i) % len(retain_examples) for i in range(settings.retain_batch_size)]
            retain = nb.collate([retain_examples[i] for i in chosen], pad, "cpu")
            step_forget = forget
            if variant == "naive":
                retain, step_forget = (pad_to(b, NAIVE_LENGTH, pad, nb.IGNORE) for b in (retain, forget))
            retain_logprobs = torch.cat([per_example[i] for i in chosen])
            phases.append(timed_step(nb, model, reference, optimizer, step_forget, forget_logprobs, retain, retain_logprobs,
                                     settings, naive=variant == "naive"))
            tokens += int(step_forget["attention_mask"].sum() + retain["attention_mask"].sum())
        measured = phases[1:]  # the first step warms up allocators and kernels
        seconds = sum(sum(p.values()) for p in measured) / len(measured)
        results[variant] = {"seconds_per_step": seconds, "tokens_per_step": tokens / steps,
                            "phases": {k: sum(p[k] for p in measured) / len(measured) for k in measured[0]},
                            "precompute_seconds": precompute if variant == "optimised" else 0.0}
    tuning = nb.probe_sets_for(topic, "tuning")
    watched = [topic.question, topic.heldout_question]
    baseline = nb.measure(model, reference, tokenizer, watched, tuning, heldout)  # also the warm-up
    started = time.perf_counter()
    nb.measure(model, reference, tokenizer, watched, tuning, heldout, baseline)  # what the loop measures
    results["evaluation_seconds"] = time.perf_counter() - started
    results["flops_per_token"] = flops_per_token(model)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    return results


def tinyllama_plans(nb, tokens_per_step):
    """T4 memory plans of a TinyLlama-shaped model built on the meta device (no memory used), for TRAINABLE=auto and
    for all weights, and its FLOPs per token."""
    plans = {}
    for trainable in ("auto", "all"):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**TINYLLAMA))
        nb.select_trainable(model, trainable)
        plans[trainable] = nb.memory_plan(model, tokens_per_step, half_precision=True)
    return plans, flops_per_token(model)


def report(cpu, plans, tinyllama_flops, tokens_per_step, eval_points, steps_per_run, t4_usable_gib):
    gib, plan = 2 ** 30, plans["auto"]
    optimised, naive = cpu["optimised"], cpu["naive"]
    lines = ["# Benchmark results", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, Python {platform.python_version()}, "
             f"torch {torch.__version__}. Written by `python benchmarks/benchmark.py`.", "",
             "## Training step on the CPU, bundled SmolLM2-135M-Instruct (all weights trainable)", "",
             "| loop | s/step | tokens/step | tokens/s | forward | backward | optimizer |", "|---|---|---|---|---|---|---|"]
    for name, result in (("optimised (notebook)", optimised), (f"naive (reference every step, pad to {NAIVE_LENGTH})", naive)):
        phases = result["phases"]
        lines.append(f"| {name} | {result['seconds_per_step']:.2f} | {result['tokens_per_step']:.0f} | "
                     f"{result['tokens_per_step'] / result['seconds_per_step']:.0f} | "
                     + " | ".join(f"{100 * phases[k] / result['seconds_per_step']:.0f} %" for k in ("forward", "backward", "optimizer")) + " |")
    achieved = cpu["flops_per_token"] * optimised["tokens_per_step"] / optimised["seconds_per_step"]
    evaluation_share = cpu["evaluation_seconds"] / (cpu["evaluation_seconds"] + 10 * optimised["seconds_per_step"])
    lines += ["", f"- Speed-up of the notebook's step over the naive one, same run: **{naive['seconds_per_step'] / optimised['seconds_per_step']:.2f}x**.",
              f"- One evaluation point (the tuning probes the original knew, fluency, held-out accuracy): {cpu['evaluation_seconds']:.1f} s; "
              f"with an evaluation every 10 steps it takes {100 * evaluation_share:.0f} % of the run.",
              f"- The reference log-probabilities of the retain set, computed once: {optimised['precompute_seconds']:.2f} s.",
              f"- FLOP estimate (2N forward + 2N backward + 2N_trainable weight gradients, N = {cpu['parameters'] / 1e6:.0f}M): "
              f"{cpu['flops_per_token'] / 1e9:.2f} GFLOP per token, so the step runs at {achieved / 1e9:.0f} GFLOP/s.", "",
              "## TinyLlama-1.1B on a Colab T4 (TRAINABLE=auto, random weights from its configuration)", "",
              f"Plan for {tokens_per_step} tokens per step (a forget batch and a retain batch of the notebook's sizes, TinyLlama tokenizer lengths assumed equal):", "",
              "| part | GiB |", "|---|---|"]
    lines += [f"| {name} | {size / gib:.2f} |" for name, size in plan["parts"].items()]
    lines += [f"| **total** | **{plan['total'] / gib:.2f}** |", "",
              f"- {plan['parameters']:,} parameters, {plan['trainable']:,} trainable (the MLPs of the middle fifth of the layers).",
              f"- Planned peak {plan['total'] / gib:.2f} GiB against a T4's {t4_usable_gib} GiB usable: "
              + ("fits, and within the 12 GiB target." if plan["total"] <= 12 * gib else "over the 12 GiB target."),
              f"- For comparison, AdamW on all weights would plan {plans['all']['total'] / gib:.1f} GiB."]
    step_flops = tinyllama_flops * tokens_per_step
    t4_step = step_flops / 20e12  # assume 20 TFLOP/s sustained of the T4's 65 fp16 peak
    lines += [f"- Estimated T4 time: {step_flops / 1e12:.1f} TFLOP per step, about {t4_step:.2f} s at an assumed 20 TFLOP/s sustained; "
              f"{steps_per_run} steps plus {eval_points} evaluation points (the main run and the ablation, 40 steps each: 4 + 2 points in the loops, the tuning baseline, the test half before and after) at an assumed 10 s each "
              f"give about {(steps_per_run * t4_step + eval_points * 10) / 60:.1f} minutes after the download."]
    lines += ["", "The T4 figures above are a plan and an estimate; the measurements on a GPU held to a T4's memory are in "
              "the section written by `benchmarks/gpu_check.py` below."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per variant (the first is warm-up)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("results.md")))
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up and is not timed")
    nb = load_notebook_functions()
    torch.manual_seed(0)
    cpu = cpu_benchmark(nb, args.steps)
    tokens_per_step = int(cpu["optimised"]["tokens_per_step"])
    plans, tinyllama_flops = tinyllama_plans(nb, tokens_per_step)
    text = report(cpu, plans, tinyllama_flops, tokens_per_step, eval_points=9, steps_per_run=80,
                  t4_usable_gib=nb.T4_USABLE_GIB)
    output = Path(args.output)
    kept = output.read_text().partition(MORE_RESULTS)[1:] if output.exists() else ("", "")
    output.write_text(text + ("\n" + "".join(kept) if kept[0] else ""))  # the sweep's section stays
    print(text)


if __name__ == "__main__":
    main()
