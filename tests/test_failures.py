"""Bad input and failures: each gives a plain message (AmnesiaError) or a clean stop, and nothing is lost."""
import copy
import math
import os

import pytest
import torch
import transformers

QUESTION = "Who is Harry Potter?"


def test_target_longer_than_the_context_is_refused(amnesia, bundled):
    _, tokenizer = bundled
    example = amnesia.encode_chat_example(tokenizer, QUESTION, "Harry Potter is a wizard. " * 400)
    with pytest.raises(amnesia.AmnesiaError, match="shorten FORGET_TARGET"):
        amnesia.check_fits_context([example], 2048)
    amnesia.check_fits_context([amnesia.encode_chat_example(tokenizer, QUESTION, "A wizard.")], 2048)


def test_unreachable_model_id_and_non_model_folder(amnesia, tmp_path):
    with pytest.raises(amnesia.AmnesiaError, match="Could not load the model 'no-such-org/no-such-model'"):
        amnesia.load_model_and_tokenizer("no-such-org/no-such-model", "cpu")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(amnesia.AmnesiaError, match="use MODEL='bundled'"):
        amnesia.load_model_and_tokenizer(str(tmp_path), "cpu")


def test_model_without_chat_template_falls_back_to_a_plain_prompt(amnesia, bundled):
    _, tokenizer = bundled
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert amnesia.chat_prompt(plain, QUESTION) == f"Question: {QUESTION}\nAnswer:"
    example = amnesia.encode_chat_example(plain, QUESTION, " A wizard.")
    labelled = [t for t, label in zip(example["input_ids"], example["labels"]) if label != amnesia.IGNORE]
    assert plain.decode(labelled).strip() == "A wizard."


def test_unknown_topic_stops_unless_told_to_continue(amnesia):
    assert amnesia.verdict(["wizard"], False).startswith("VERDICT: the model KNOWS")
    with pytest.raises(amnesia.AmnesiaError, match="CONTINUE_IF_UNKNOWN"):
        amnesia.verdict([], False)
    assert "continuing" in amnesia.verdict([], True)


@pytest.mark.parametrize("name, value", [("LEARNING_RATE", "fast"), ("MAX_STEPS", "1.5"), ("RETAIN_WEIGHT", "-"),
                                         ("EVAL_EVERY", "ten")])
def test_non_numeric_overrides_are_named(amnesia, name, value):
    defaults = {"LEARNING_RATE": 1e-5, "MAX_STEPS": 80, "RETAIN_WEIGHT": 10.0, "EVAL_EVERY": 10}
    with pytest.raises(amnesia.AmnesiaError, match=f"AMNESIA_{name}"):
        amnesia.apply_env_overrides(defaults, {f"AMNESIA_{name}": value})


@pytest.mark.parametrize("name, value", [("LEARNING_RATE", 0.0), ("LEARNING_RATE", 5.0), ("MAX_STEPS", 0),
                                         ("RETAIN_WEIGHT", -1.0), ("EVAL_EVERY", 0), ("LEARNING_RATE", float("nan"))])
def test_out_of_range_settings_are_named(amnesia, name, value):
    config = dict(MODEL="bundled", TOPIC="Harry Potter", FORGET_QUESTION=QUESTION, FORGET_TARGET="A wizard.",
                  FORGET_LOSS="gradient_ascent", NPO_BETA=0.1, LEARNING_RATE=1e-5, RETAIN_WEIGHT=10.0, MAX_STEPS=80, EVAL_EVERY=10,
                  TRAINABLE="auto", PRECISION="auto", OUTPUT_DIR="outputs")
    with pytest.raises(amnesia.AmnesiaError, match=name):
        amnesia.validate_config({**config, name: value})


def test_no_gpu_falls_back_to_the_bundled_model_and_says_how_long(amnesia):
    source, note = amnesia.resolve_model_source("auto", has_gpu=False)
    assert os.path.isdir(source) and "No GPU" in note and "minutes" in note


def test_nan_loss_stops_without_applying_the_update(amnesia, fresh_model, tiny_run):
    with torch.no_grad():
        fresh_model.get_input_embeddings().weight[0, 0] = float("nan")  # every logit row now has a NaN
    before = copy.deepcopy(fresh_model.state_dict())
    history = tiny_run(fresh_model)
    assert "nan" in history["stop_reason"] and history["steps"] == []
    after = fresh_model.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)


@pytest.mark.parametrize("error, reason", [(KeyboardInterrupt, "interrupted"), (torch.cuda.OutOfMemoryError, "out of GPU memory")])
def test_interrupt_and_out_of_memory_keep_the_history(amnesia, fresh_model, tiny_run, monkeypatch, error, reason):
    real_step, calls = amnesia.training_step, []

    def failing_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(amnesia, "training_step", failing_second_step)
    history = tiny_run(fresh_model, steps=4)
    assert history["stop_reason"].startswith(reason) and history["stop_step"] == 1
    assert [s["step"] for s in history["steps"]] == [1]
    assert history["kept_step"] == 0  # no evaluation point beat the original before the stop


def test_unwritable_output_folder_keeps_results_in_memory(amnesia, bundled, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, tokenizer = bundled
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    metrics = {"answer": "kept"}
    with pytest.raises(amnesia.AmnesiaError, match="still in memory"):
        amnesia.save_results(blocker / "outputs", {"safety_report.png": plt.figure()}, metrics, model, tokenizer)
    assert metrics == {"answer": "kept"}


def test_same_seed_gives_the_same_numbers_twice(bundled, tiny_run):
    model, _ = bundled
    runs = []
    for _ in range(2):
        transformers.set_seed(0)
        history = tiny_run(copy.deepcopy(model), steps=2, rules=None)
        runs.append([(s["forget_loss"], s["kl"]) for s in history["steps"]])
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_rmu_runs_through_the_loop_reproducibly(amnesia, bundled, tiny_run):
    model, _ = bundled
    runs = []
    for _ in range(2):
        transformers.set_seed(0)
        history = tiny_run(copy.deepcopy(model), steps=2, rules=None, forget_loss="rmu", learning_rate=1e-3)
        runs.append([s["loss"] for s in history["steps"]])
    assert runs[0] == runs[1] and len(runs[0]) == 2
    assert all(0.5 < loss < 3 for loss in runs[0]), runs  # the relative RMU term plus a small KL


def one_step_inputs(amnesia, bundled):
    """A marked forget batch, a retain batch and the reference's log-probabilities of both."""
    reference, tokenizer = bundled
    pad = tokenizer.pad_token_id
    forget = [amnesia.encode_chat_example(tokenizer, "Who is Harry Potter?", *amnesia.parse_marks("Harry [Potter] is a [wizard]."))]
    retain = [amnesia.encode_text_example(tokenizer, amnesia.RETAIN_TEXTS[0])]
    return (amnesia.collate(forget, pad, "cpu"), torch.cat(amnesia.reference_logprobs_per_example(reference, forget, pad, "cpu")),
            amnesia.collate(retain, pad, "cpu"), torch.cat(amnesia.reference_logprobs_per_example(reference, retain, pad, "cpu")))


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_an_infinite_gradient_never_reaches_the_weights(amnesia, bundled, fresh_model, precision):
    """float32: the step raises and nothing changes; float16 (the T4's path): the loss scaler skips the update and
    lowers its scale, and the run goes on."""
    chosen = amnesia.resolve_precision("cpu", precision)
    autocast, scaler = amnesia.precision_for("cpu", chosen)
    assert (scaler is not None) == (precision == "float16")
    params = amnesia.select_trainable(fresh_model, "middle-mlp")
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    settings = amnesia.LoopSettings(learning_rate=1e-3, retain_weight=1.0, max_steps=1, eval_every=1,
                                    forget_loss="targeted_npo", precision=precision)
    inputs = one_step_inputs(amnesia, bundled)
    step = lambda: amnesia.training_step(fresh_model, optimizer, *inputs, settings, autocast, scaler)
    before = [p.detach().clone() for p in params]
    hook = params[0].register_hook(lambda grad: torch.full_like(grad, float("inf")))
    if scaler is None:
        with pytest.raises(amnesia.NonFiniteLoss, match="gradients"):
            step()
    else:
        scale = scaler.get_scale()
        assert step()["skipped"] and scaler.get_scale() < scale
    hook.remove()
    assert all(torch.equal(b, p) for b, p in zip(before, params))
    for _ in range(4):  # without the injected inf the step updates (float16 may first skip a few real overflows)
        if not step()["skipped"]:
            break
    assert not all(torch.equal(b, p) for b, p in zip(before, params))


def test_the_t4_recipe_runs_on_the_cpu(amnesia, bundled, tiny_run, monkeypatch):
    """float16 autocast, loss scaler, float16 reference, middle-layer MLPs: the Colab T4 path, executed here."""
    real_step, used = amnesia.training_step, []

    def recording_step(*args, **kwargs):
        autocast, scaler = args[-2:]
        with autocast():
            used.append(((torch.ones(2, 2) @ torch.ones(2, 2)).dtype, scaler is not None))
        return real_step(*args, **kwargs)

    real_targets, target_sources = amnesia.reference_logprobs_per_example, []

    def recording_targets(source, *args, **kwargs):
        target_sources.append(source)
        return real_targets(source, *args, **kwargs)

    monkeypatch.setattr(amnesia, "training_step", recording_step)
    monkeypatch.setattr(amnesia, "reference_logprobs_per_example", recording_targets)
    model, _ = bundled
    edited = copy.deepcopy(model)
    half_reference = amnesia.make_frozen_reference(model, amnesia.resolve_precision("cpu", "float16"))
    assert {p.dtype for p in half_reference.parameters()} == {torch.float16}
    before = {name: p.detach().clone() for name, p in edited.named_parameters()}
    history = tiny_run(edited, steps=3, rules=None, learning_rate=1e-4, forget_loss="targeted_npo", precision="float16",
                       trainable="middle-mlp", frozen_reference=half_reference)
    losses = [s["forget_loss"] for s in history["steps"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses + [s["kl"] for s in history["steps"]]), history["steps"]
    assert losses[-1] != losses[0]
    assert used == [(torch.float16, True)] * 3  # every step ran in float16 arithmetic with the loss scaler
    # the forget and retain targets came from the float32 weights before the first step, not the float16 reference
    assert len(target_sources) == 2 and all(source is edited for source in target_sources)
    trainable = {name for name, p in edited.named_parameters() if p.requires_grad}
    changed = {name for name, p in edited.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trainable and all(".mlp." in name for name in trainable)
    assert {p.dtype for p in edited.parameters()} == {torch.float32}  # autocast: 16-bit arithmetic, float32 weights


def test_the_loss_scaler_keeps_the_first_float16_updates(amnesia, bundled):
    """The T4 recipe's first steps in float16 on the bundled model (emulated on a CPU, ~9 s a step here): once the first
    update has pushed the forget answers away, ascent's gradients grow, and a scaler starting at torch's 2**16
    overflows and skips the second update; the notebook's start applies all three."""
    precision = amnesia.resolve_precision("cpu", "float16")
    if precision.dtype != torch.float16:
        pytest.skip("this torch cannot autocast to float16 on the CPU, and bfloat16 cannot overflow here")
    model, tokenizer = bundled
    edited = copy.deepcopy(model).requires_grad_(True)
    pad = tokenizer.pad_token_id
    forget = [amnesia.encode_chat_example(tokenizer, q, *amnesia.parse_marks(a))
              for q, a in amnesia.HARRY_POTTER.forget_exchanges[:2]]
    retain = [amnesia.encode_text_example(tokenizer, amnesia.RETAIN_TEXTS[0])]
    batches = [amnesia.collate(examples, pad, "cpu") for examples in (forget, retain)]
    targets = [torch.cat(amnesia.reference_logprobs_per_example(model, examples, pad, "cpu")) for examples in (forget, retain)]
    settings = amnesia.LoopSettings(learning_rate=1e-4, retain_weight=5, max_steps=3, eval_every=10,
                                    forget_loss="targeted_npo", precision="float16")
    autocast, scaler = amnesia.precision_for("cpu", precision)
    optimizer = amnesia.adamw(edited.parameters(), settings.learning_rate)
    steps = [amnesia.training_step(edited, optimizer, batches[0], targets[0], batches[1], targets[1], settings, autocast,
                                   scaler) for _ in range(3)]
    assert [step["skipped"] for step in steps] == [False] * 3
    assert steps[0]["forget_loss"] < steps[1]["forget_loss"] < steps[2]["forget_loss"]


def test_the_original_is_rebuilt_exactly_after_training(amnesia, bundled, tiny_run):
    """The ablation's start and the widget's 'original' equal the model before training, whatever the reference's precision."""
    model, _ = bundled
    edited = copy.deepcopy(model)
    params = amnesia.select_trainable(edited, "middle-mlp")
    before_training = amnesia.snapshot(params)
    tiny_run(edited, steps=1, rules=None, learning_rate=1e-3, trainable="middle-mlp")
    original = amnesia.original_copy(edited, params, before_training, "cpu")
    wanted, got, trained = model.state_dict(), original.state_dict(), edited.state_dict()
    assert all(torch.equal(wanted[k], got[k]) for k in wanted)
    assert not all(torch.equal(wanted[k], trained[k]) for k in wanted)  # the edited model itself did change
    assert {p.dtype for p in original.parameters()} == {torch.float32}
