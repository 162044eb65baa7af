"""The Colab T4 recipe on a TinyLlama-shaped model with random weights, on the CPU: one training step and one
evaluation point, and the memory plan's byte counts checked against the real tensors. Prints one JSON line.

    python tests/tinyllama_shape_check.py                      # float16 autocast + loss scaler, as on a T4
    python tests/tinyllama_shape_check.py --precision bfloat16

No download: the configuration is TinyLlama-1.1B-Chat's, written below, and the tokenizer is a small stand-in with
TinyLlama's chat format (its ids stay far below the 32000 of the vocabulary)."""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.initialization import no_init_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import llama_style_tokenizer  # noqa: E402
from notebook_loader import load_notebook_functions  # noqa: E402

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)


def tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def random_tinyllama():
    """TinyLlama's architecture with random weights: built without transformers' initialisation, then every matrix
    drawn once, uniformly with the standard deviation 0.02 of TinyLlama's initialiser (three times faster than
    normal draws here), and every norm weight set to one."""
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(LlamaConfig(**TINYLLAMA), dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.02 * 3 ** 0.5, 0.02 * 3 ** 0.5) if param.dim() > 1 else param.fill_(1.0)
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--max-steps", type=int, default=3, help="steps tried until one update is applied")
    parser.add_argument("--examples", type=int, default=2, help="forget and retain examples per step (a T4 takes 8 + 4)")
    args = parser.parse_args()
    nb = load_notebook_functions()
    torch.manual_seed(0)
    started = begun = time.time()
    model = random_tinyllama()
    tokenizer = llama_style_tokenizer()
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.unk_token, "left"
    precision = nb.resolve_precision("cpu", args.precision)
    reference = nb.make_frozen_reference(model, precision)
    params = nb.select_trainable(model, "auto")
    built = time.time() - started
    defaults = nb.defaults_for(sum(p.numel() for p in model.parameters()))  # the set the notebook prints for TinyLlama
    settings = nb.LoopSettings(learning_rate=defaults.learning_rate, retain_weight=defaults.retain_weight, max_steps=1, eval_every=1,
                               forget_loss="targeted_npo", precision=args.precision)
    forget = [nb.encode_chat_example(tokenizer, q, *nb.parse_marks(a))
              for q, a in nb.HARRY_POTTER.forget_exchanges[:args.examples]]
    retain = [nb.encode_text_example(tokenizer, t) for t in nb.RETAIN_TEXTS[:args.examples]]
    pad = tokenizer.pad_token_id
    forget_batch, retain_batch = nb.collate(forget, pad, "cpu"), nb.collate(retain, pad, "cpu")
    tokens = forget_batch["input_ids"].numel() + retain_batch["input_ids"].numel()
    plan = nb.memory_plan(model, tokens, precision.name != "float32")
    forget_reference = torch.cat(nb.reference_logprobs_per_example(reference, forget, pad, "cpu"))
    retain_reference = torch.cat(nb.reference_logprobs_per_example(reference, retain, pad, "cpu"))
    autocast, scaler = nb.precision_for("cpu", precision)
    optimizer = nb.adamw(params, settings.learning_rate)
    log = lambda text: print(f"{time.time() - begun:6.0f} s  {text}", file=sys.stderr, flush=True)
    log(f"built in {built:.0f} s, {tokens} tokens per step; reference log-probabilities done")
    steps = []
    for _ in range(args.max_steps):  # float16 may skip the first updates (gradient overflow at the scaler's start)
        started = time.time()
        losses = nb.training_step(model, optimizer, forget_batch, forget_reference, retain_batch, retain_reference,
                                  settings, autocast, scaler)
        steps.append({"seconds": round(time.time() - started, 1), **losses})
        log(f"training step: {steps[-1]}")
        if not losses["skipped"]:
            break
    real = {"weights": tensor_bytes(model.parameters()),
            "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                                      if torch.is_tensor(v) and v.dim() > 0),
            "reference": tensor_bytes(reference.parameters())}
    probes = {name: probes[:2] for name, probes in nb.probe_sets_for(nb.HARRY_POTTER, "tuning").items()}
    heldout = nb.collate([nb.encode_text_example(tokenizer, t) for t in nb.HELDOUT_TEXTS[:2]], pad, "cpu")
    started = time.time()
    point = nb.measure(model, reference, tokenizer, [nb.HARRY_POTTER.question], probes, heldout)
    print(json.dumps({
        "precision": precision.note, "tokens_per_step": tokens, "build_seconds": round(built, 1), "steps": steps,
        "evaluation_seconds": round(time.time() - started, 1), "evaluation_finite": point["fluency"] == point["fluency"],
        "parameters": plan["parameters"], "trainable": plan["trainable"],
        "trainable_real": sum(p.numel() for p in params),
        "plan_bytes": {k: plan["parts"][k] for k in real}, "real_bytes": real,
        "plan_total_gib": round(plan["total"] / 2 ** 30, 2),
        "peak_resident_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}))


if __name__ == "__main__":
    main()
