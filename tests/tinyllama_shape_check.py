"""The Colab T4 recipe on a TinyLlama-shaped model with random weights: training steps and one evaluation point,
and the memory plan's byte counts checked against the real tensors. Prints one JSON line.

    python tests/tinyllama_shape_check.py                      # float16 autocast + loss scaler, as on a T4
    python tests/tinyllama_shape_check.py --precision bfloat16
    python tests/tinyllama_shape_check.py --trainable lora      # adapters over a 16-bit frozen base that is the reference
    python tests/tinyllama_shape_check.py --device cuda --gpu-memory-gib 14.7 --examples 8 --retain-examples 4 \
        --timed-steps 5 --probes 0                             # a GPU held to a T4's memory, the notebook's batch

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
SMALL = dict(TINYLLAMA, hidden_size=128, intermediate_size=352, num_hidden_layers=5, num_attention_heads=4,
             num_key_value_heads=2)  # the same layout, small enough for a quick dry run of this script


def tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


class SavedForBackward:
    """Bytes of the tensors autograd keeps for the backward pass, measured on any device (saved-tensor hooks, each
    storage counted once, the model's own weights left out): what the plan calls activations and half copies."""

    def __init__(self, model):
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages, self.peak = {}, 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self.storages = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        self.peak = max(self.peak, sum(self.storages.values()))


def random_tinyllama(device="cpu", shape=TINYLLAMA):
    """TinyLlama's architecture with random weights: built without transformers' initialisation, then every matrix
    drawn once, uniformly with the standard deviation 0.02 of TinyLlama's initialiser (three times faster than
    normal draws here), and every norm weight set to one."""
    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.02 * 3 ** 0.5, 0.02 * 3 ** 0.5) if param.dim() > 1 else param.fill_(1.0)
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--max-steps", type=int, default=3, help="steps tried until one update is applied")
    parser.add_argument("--examples", type=int, default=2, help="forget examples per step (the notebook takes 8)")
    parser.add_argument("--retain-examples", type=int, default=None, help="retain examples per step (the notebook "
                        "takes 4; default: as many as --examples)")
    parser.add_argument("--timed-steps", type=int, default=1, help="steps timed after the first applied update")
    parser.add_argument("--probes", type=int, default=2, help="tuning probes per set at the evaluation point (0: all)")
    parser.add_argument("--trainable", default="auto", choices=["auto", "lora"], help="auto: the notebook's choice for "
                        "TinyLlama (the middle MLPs); lora: rank-8 adapters, the base frozen (in 16 bits in half precision)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="tinyllama", choices=["tinyllama", "small"], help="small: a dry run")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="hold PyTorch to this much GPU memory (14.7: what it can allocate on a 15 GiB T4)")
    args = parser.parse_args()
    device, retain_count = args.device, args.retain_examples or args.examples
    if device == "cuda" and args.gpu_memory_gib:
        torch.cuda.set_per_process_memory_fraction(args.gpu_memory_gib * 2 ** 30 / torch.cuda.mem_get_info()[1])
    nb = load_notebook_functions()
    torch.manual_seed(0)
    started = begun = time.time()
    model = random_tinyllama(device, TINYLLAMA if args.shape == "tinyllama" else SMALL)
    tokenizer = llama_style_tokenizer()
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.unk_token, "left"
    precision = nb.resolve_precision(device, args.precision)
    reference = nb.make_frozen_reference(model, precision)
    params = nb.select_trainable(model, args.trainable)
    if args.trainable == "lora":  # as the notebook does: the frozen base is the reference, in 16 bits in half precision
        if precision.name != "float32":
            nb.store_frozen_base(model, precision.dtype)
        reference = nb.shared_reference(model)
    built = time.time() - started
    defaults = nb.defaults_for(sum(p.numel() for p in model.parameters()))  # the set the notebook prints for TinyLlama
    settings = nb.LoopSettings(learning_rate=defaults.learning_rate, retain_weight=defaults.retain_weight, max_steps=1, eval_every=1,
                               forget_loss="targeted_npo", precision=args.precision)
    forget = [nb.encode_chat_example(tokenizer, q, *nb.parse_marks(a))
              for q, a in nb.HARRY_POTTER.forget_exchanges[:args.examples]]
    retain = [nb.encode_text_example(tokenizer, t) for t in nb.RETAIN_TEXTS[:retain_count]]
    pad = tokenizer.pad_token_id
    forget_batch, retain_batch = nb.collate(forget, pad, device), nb.collate(retain, pad, device)
    tokens = forget_batch["input_ids"].numel() + retain_batch["input_ids"].numel()
    plan = nb.memory_plan(model, tokens, precision.name != "float32")
    forget_reference = torch.cat(nb.reference_logprobs_per_example(reference, forget, pad, device)).to(device)
    retain_reference = torch.cat(nb.reference_logprobs_per_example(reference, retain, pad, device)).to(device)
    autocast, scaler = nb.precision_for(device, precision)
    synchronise = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    optimizer = nb.adamw(params, settings.learning_rate)
    log = lambda text: print(f"{time.time() - begun:6.0f} s  {text}", file=sys.stderr, flush=True)
    log(f"built in {built:.0f} s, {tokens} tokens per step; reference log-probabilities done")

    saved = SavedForBackward(model)
    if device == "cuda":  # the build (a float32 model and its 16-bit reference) peaks on its own; the steps are measured apart
        build_peak, build_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        torch.cuda.reset_peak_memory_stats()

    def timed_step():
        started = time.time()
        with saved:
            losses = nb.training_step(model, optimizer, forget_batch, forget_reference, retain_batch, retain_reference,
                                      settings, autocast, scaler)
        synchronise()
        return {"seconds": round(time.time() - started, 3), **losses}

    steps = []
    for _ in range(args.max_steps):  # float16 may skip the first updates (gradient overflow at the scaler's start)
        steps.append(timed_step())
        log(f"training step: {steps[-1]}")
        if not steps[-1]["skipped"]:
            break
    timed = [timed_step() for _ in range(args.timed_steps - 1)]  # the first step paid for kernel choice and allocation
    log(f"{len(timed)} more steps: {[t['seconds'] for t in timed]} s")
    step_peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    model_storage = {p.data_ptr() for p in model.parameters()}  # a shared reference costs nothing of its own
    real = {"weights": tensor_bytes(model.parameters()),
            "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                                      if torch.is_tensor(v) and v.dim() > 0),
            "reference": tensor_bytes(p for p in reference.parameters() if p.data_ptr() not in model_storage)}
    probes = {name: probes[:args.probes or None] for name, probes in nb.probe_sets_for(nb.HARRY_POTTER, "tuning").items()}
    heldout = nb.collate([nb.encode_text_example(tokenizer, t) for t in nb.HELDOUT_TEXTS[:args.probes or None]], pad, device)
    started = time.time()
    point = nb.measure(model, reference, tokenizer, [nb.HARRY_POTTER.question], probes, heldout)
    synchronise()
    gpu = {} if device != "cuda" else {
        "gpu": torch.cuda.get_device_name(0), "gpu_memory_cap_gib": args.gpu_memory_gib,
        "gpu_peak_allocated_build_gib": round(build_peak / 2 ** 30, 2),
        "gpu_peak_allocated_training_gib": round(step_peak / 2 ** 30, 2),
        "gpu_peak_allocated_gib": round(max(build_peak, torch.cuda.max_memory_allocated()) / 2 ** 30, 2),
        "gpu_peak_reserved_gib": round(max(build_reserved, torch.cuda.max_memory_reserved()) / 2 ** 30, 2)}
    print(json.dumps({
        "precision": precision.note, "device": device, "forget_examples": len(forget), "retain_examples": len(retain),
        "tokens_per_step": tokens, "build_seconds": round(built, 1), "steps": steps, "timed_steps": timed,
        "seconds_per_step": round(sum(t["seconds"] for t in timed) / len(timed), 3) if timed else None,
        "probes_per_set": {name: len(p) for name, p in probes.items()},
        "evaluation_seconds": round(time.time() - started, 1), "evaluation_finite": point["fluency"] == point["fluency"],
        "parameters": plan["parameters"], "trainable": plan["trainable"],
        "trainable_real": sum(p.numel() for p in params),
        "plan_bytes": {k: plan["parts"][k] for k in real}, "real_bytes": real,
        "plan_saved_for_backward": plan["parts"]["activations"] + plan["parts"]["half copies"],
        "saved_for_backward": saved.peak,
        "plan_total_gib": round(plan["total"] / 2 ** 30, 2), "trainable_choice": args.trainable,
        "weight_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}),
        "peak_resident_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2), **gpu}))


if __name__ == "__main__":
    main()
