"""The other forgetting methods (relabelled answers, DPO towards "I don't know", the name-swap teacher, LoRA) and the
ablation's run without the KL term."""
import math

import pytest
import torch

from conftest import llama_style_tokenizer
from test_functions import FixedLogits, with_ids


def settings_for(amnesia, loss, beta=1.0):
    return amnesia.LoopSettings(learning_rate=1e-5, retain_weight=1.0, max_steps=1, eval_every=1, forget_loss=loss,
                                npo_beta=beta)


def test_dpo_prefers_the_refusal_starts_like_gradient_ascent_and_fades(amnesia):
    reference_chosen, reference_rejected = torch.tensor([-20.0, -15.0]), torch.tensor([-5.0, -8.0])
    chosen = reference_chosen.clone().requires_grad_(True)
    rejected = reference_rejected.clone().requires_grad_(True)
    loss = amnesia.dpo_loss(chosen, rejected, reference_chosen, reference_rejected, beta=0.5, mean_length=4.0)
    assert math.isclose(loss.item(), (2 / 0.5) * math.log(2) / 4, rel_tol=1e-6)  # Delta = 0 at the start
    loss.backward()
    # minimising raises the refusal and lowers the truth; at Delta = 0 each pair's gradient is 1/(pairs * length),
    # the gradient of per-token-mean gradient ascent on an answer of that length
    assert torch.allclose(rejected.grad, torch.full((2,), 1 / 8)) and torch.allclose(chosen.grad, torch.full((2,), -1 / 8))
    preferred = amnesia.dpo_loss(reference_chosen + 50, reference_rejected - 50, reference_chosen, reference_rejected,
                                 beta=0.5, mean_length=4.0)
    assert preferred.item() < 1e-6  # once the refusal is clearly preferred, the push is gone


def test_dpo_loss_terms_read_rejected_rows_first_then_chosen(amnesia):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    ignore = amnesia.IGNORE
    batch = {"labels": torch.tensor([[ignore, ignore, 3, 5], [ignore, ignore, 1, 2]]),
             "marks": torch.zeros(2, 4, dtype=torch.bool), "input_ids": None, "attention_mask": None}
    reference_pairs = torch.tensor([[-3.0, -9.0]])  # (rejected, chosen) under the reference
    term, keep_kl, rejected_nll = amnesia.dpo_loss_terms(FixedLogits(logits), with_ids(batch), reference_pairs, beta=1.0)
    logprobs = torch.log_softmax(logits.detach()[:, 1:3], -1)
    rejected = logprobs[0, 0, 3] + logprobs[0, 1, 5]
    chosen = logprobs[1, 0, 1] + logprobs[1, 1, 2]
    delta = (chosen - -9.0) - (rejected - -3.0)
    assert torch.allclose(term.detach(), -2 * torch.nn.functional.logsigmoid(delta) / 2)
    assert torch.allclose(rejected_nll.detach(), -rejected / 2) and keep_kl.item() == 0.0
    term.backward()
    assert logits.grad[0, 1, 3] > 0 and logits.grad[1, 1, 1] < 0  # the truth is pushed down, the refusal up


def test_relabel_learns_the_given_answers_with_cross_entropy(amnesia):
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6, requires_grad=True)
    batch = {"labels": torch.tensor([[amnesia.IGNORE, amnesia.IGNORE, 3, 5]]), "marks": torch.zeros(1, 4, dtype=torch.bool),
             "input_ids": None, "attention_mask": None}
    forget, keep_kl, _ = amnesia.forget_loss_terms(FixedLogits(logits), with_ids(batch), torch.log_softmax(torch.randn(2, 6), -1),
                                                   settings_for(amnesia, "relabel"))
    assert torch.allclose(forget.detach(), torch.nn.functional.cross_entropy(logits[0, 1:3].detach(), torch.tensor([3, 5])))
    forget.backward()
    assert logits.grad[0, 1, 3] < 0 and keep_kl.item() == 0.0


def test_relabelled_answers_swap_the_name_back_and_drop_leaks(amnesia, monkeypatch):
    asked = []

    def fake_answers(reference, tokenizer, questions, cache_file):
        asked.extend(questions)
        made_up = {"Who is John Smith?": "John Smith is a baker in Leeds.",
                   "Who wrote the Maria Garcia books?": "The Maria Garcia books were written by a wizard."}
        return [(q, made_up[q]) for q in questions]

    monkeypatch.setattr(amnesia, "on_policy_answers", fake_answers)
    exchanges = [("Who is Harry Potter?", "Harry Potter is a wizard."),
                 ("Who wrote the Harry Potter books?", "J.K. Rowling."),
                 ("What do wizards call people who cannot do magic?", "Muggles.")]  # no name to swap: not asked
    relabelled = amnesia.relabelled_exchanges(None, None, exchanges, ("wizard", "rowling"), "unused.json")
    assert asked == ["Who is John Smith?", "Who wrote the Maria Garcia books?"]
    assert relabelled == [("Who is Harry Potter?", "Harry Potter is a baker in Leeds.")]  # the second still says "wizard"


def test_counterfactuals_align_every_answer_token_outside_the_name(amnesia, bundled):
    _, tokenizer = bundled
    question, answer = "Who is Harry Potter?", "Harry Potter goes to Hogwarts with Ron."
    example = amnesia.encode_chat_example(tokenizer, question, answer)
    counterfactuals = amnesia.counterfactual_examples(tokenizer, question, answer, example)
    assert len(counterfactuals) == len(amnesia.TEACHER_NAMES)
    real_tokens = [tokenizer.decode([i]) for i, label in zip(example["input_ids"], example["labels"]) if label != amnesia.IGNORE]
    for swapped, positions in counterfactuals:
        swapped_tokens = [tokenizer.decode([i]) for i, label in zip(swapped["input_ids"], swapped["labels"])
                          if label != amnesia.IGNORE]
        matched = [(real_tokens[k], swapped_tokens[p]) for k, p in enumerate(positions) if p is not None]
        assert all(a == b for a, b in matched)
        assert {a for a, _ in matched} >= {" goes", " to", " with", " Ron", "."}  # everything after the name
        assert all(p is None for k, p in enumerate(positions) if "Potter" in real_tokens[k])
    assert amnesia.counterfactual_examples(tokenizer, "What do wizards eat?", "Food.", example) == []


def test_name_swap_teacher_lowers_the_topic_token_and_is_zero_when_the_model_matches(amnesia, bundled):
    reference, tokenizer = bundled
    question, answer = "Where does Harry Potter go to school?", "Harry Potter goes to Hogwarts."
    example = amnesia.encode_chat_example(tokenizer, question, answer, [(21, 29)])
    example["counterfactuals"] = amnesia.counterfactual_examples(tokenizer, question, answer, example)
    teacher = amnesia.name_swap_teacher(reference, [example], tokenizer.pad_token_id, "cpu")[0]
    own = amnesia.reference_logprobs_per_example(reference, [example], tokenizer.pad_token_id, "cpu")[0]
    labels = [t for t, label in zip(example["input_ids"], example["labels"]) if label != amnesia.IGNORE]
    first_marked = [k for k, (label, mark) in enumerate(zip(example["labels"], example["marks"]))
                    if label != amnesia.IGNORE and mark]
    hog = sum(label != amnesia.IGNORE for label in example["labels"][:first_marked[0]])  # answer index of "Hog"
    assert teacher[hog, labels[hog]] < own[hog, labels[hog]] - 1.0  # a stranger would not go to Hogwarts
    assert torch.allclose(teacher.exp().sum(-1), torch.ones(len(teacher)), atol=1e-4)  # still distributions
    # the forget term is zero when the model already predicts the teacher, and otherwise pulls towards it
    ignore = amnesia.IGNORE
    batch = {"labels": torch.tensor([[ignore, 2, 3]]), "marks": torch.tensor([[False, True, False]]),
             "input_ids": None, "attention_mask": None}
    target = torch.log_softmax(torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]]), -1)
    logits = torch.zeros(1, 3, 4)
    logits[0, :2] = target
    forget, _, _ = amnesia.forget_loss_terms(FixedLogits(logits), with_ids(batch), target, settings_for(amnesia, "name_swap_teacher"))
    assert abs(forget.item()) < 1e-6
    uniform = torch.zeros(1, 3, 4, requires_grad=True)
    forget, _, watched = amnesia.forget_loss_terms(FixedLogits(uniform), with_ids(batch), target, settings_for(amnesia, "name_swap_teacher"))
    forget.backward()
    assert forget.item() > 0 and uniform.grad[0, 0, 0] < 0 and uniform.grad[0, 1, 3] < 0  # raise what the teacher likes
    assert math.isclose(watched.item(), math.log(4), rel_tol=1e-5)  # the watched loss: NLL of the marked token


def test_lora_freezes_the_base_starts_as_the_original_and_merges_exactly(amnesia, bundled, fresh_model):
    reference, tokenizer = bundled
    total = sum(p.numel() for p in fresh_model.parameters())
    params = amnesia.select_trainable(fresh_model, "lora", lora_rank=4, lora_alpha=8)
    config = fresh_model.config
    hidden, inner, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.head_dim
    per_layer = 4 * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inner) * 3)  # q,o; k,v; gate,up,down
    assert sum(p.numel() for p in params) == config.num_hidden_layers * per_layer
    assert all(("lora_A" in n or "lora_B" in n) == p.requires_grad for n, p in fresh_model.named_parameters())
    assert sum(p.numel() for p in fresh_model.parameters() if not p.requires_grad) == total  # the base is all there
    assert amnesia.select_trainable(fresh_model, "lora", lora_rank=4, lora_alpha=8)[0] is params[0]  # never wrapped twice
    ids = torch.tensor([tokenizer.encode("Harry Potter goes to Hogwarts.")])
    with torch.no_grad():
        assert torch.equal(fresh_model(ids).logits, reference(ids).logits)  # B = 0: exactly the original
        for p in params[1::2]:
            p.normal_(0, 0.02)  # give every B a value
        wrapped = fresh_model(ids).logits
        merged_model = amnesia.merge_lora(fresh_model)
        assert torch.allclose(merged_model(ids).logits, wrapped, atol=1e-3)
        assert not torch.allclose(wrapped, reference(ids).logits, atol=1e-3)
    adapter = next(m for m in fresh_model.modules() if isinstance(m, amnesia.LoRALinear))
    expected = adapter.base.weight + 2.0 * adapter.lora_B.weight @ adapter.lora_A.weight  # alpha / rank = 2
    assert torch.allclose(adapter.merged().weight, expected)
    assert not any(isinstance(m, amnesia.LoRALinear) for m in merged_model.modules())
    assert set(merged_model.state_dict()) == set(reference.state_dict())  # saves like the original model
    shared = amnesia.shared_reference(fresh_model)  # the LoRA run's reference: the base without its adapters
    assert set(shared.state_dict()) == set(reference.state_dict())
    assert shared.get_input_embeddings().weight is fresh_model.get_input_embeddings().weight  # shared, not copied
    with torch.no_grad():
        assert torch.equal(shared(ids).logits, reference(ids).logits)


def test_lora_plan_for_tinyllama_on_a_t4(amnesia):
    """LoRA's plan for TinyLlama on a T4: the frozen base, stored in float16 (store_frozen_base), is the reference as
    well and needs no autocast copies, so at a generous 128 tokens a sequence it plans at most 8 GiB, less than the
    middle MLPs at the same tokens."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tinyllama_shape_check import TINYLLAMA

    def shaped():
        with torch.device("meta"):  # shapes only: no memory, no time
            return AutoModelForCausalLM.from_config(LlamaConfig(**TINYLLAMA), dtype=torch.float32)

    def plan_for(trainable, tokens):
        model = shaped()
        amnesia.select_trainable(model, trainable, lora_rank=8, lora_alpha=16)
        if trainable == "lora":  # as the notebook does in half precision
            amnesia.store_frozen_base(model, torch.float16)
        return amnesia.memory_plan(model, tokens, half_precision=True)

    tokens = 12 * 128  # 8 forget + 4 retain sequences per step, each padded to a generous 128 tokens
    plan = plan_for("lora", tokens)
    assert plan["trainable"] == 22 * 8 * (2 * 4096 + 2 * 2304 + 3 * 7680)  # rank 8 on the 7 projections of 22 layers
    sizes = {name: p.numel() for name, p in shaped().named_parameters()}
    projections = sum(n for name, n in sizes.items() if name.split(".")[-2] in amnesia.LORA_TARGETS)
    assert projections == 22 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5632)  # nine tenths of the weights
    rest = sum(sizes.values()) - projections + plan["trainable"]  # embeddings, norms, output layer and the adapters
    assert plan["parts"]["weights"] == 2 * projections + 4 * rest  # the projections in float16, the rest in float32
    assert plan["parts"]["reference"] == 0  # the frozen base is the reference (shared_reference)
    # autocast copies the float32 matrices the gradient passes: the adapters' (the output layer runs in float32)
    assert plan["parts"]["half copies"] == 2 * plan["trainable"]
    assert plan["total"] < plan_for("middle-mlp", tokens)["total"]
    assert plan["total"] <= 8 * amnesia.GIB, amnesia.describe_plan(plan, amnesia.T4_USABLE_GIB * amnesia.GIB)
    print(amnesia.describe_plan(plan, amnesia.T4_USABLE_GIB * amnesia.GIB))


def test_a_float16_lora_run_trains_over_a_16_bit_base_and_merges_in_float32(amnesia):
    """The T4's LoRA path on a tiny random Llama (the mechanics, not the model, are tested): the projections under the
    adapters stored in float16 and shared with the reference, float16 autocast with the loss scaler. Only the
    adapters move; the plan's weight bytes are the real ones; the merged model is float32 and keeps the adapters'
    small update exactly, which a float16 merge would round to the base's neighbouring values."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=128,
                                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    adapters = amnesia.select_trainable(model, "lora", lora_rank=4, lora_alpha=8)
    amnesia.store_frozen_base(model, torch.float16)
    reference = amnesia.shared_reference(model)
    projections = [m.base for m in model.modules() if isinstance(m, amnesia.LoRALinear)]
    assert len(projections) == 2 * 7 and {p.weight.dtype for p in projections} == {torch.float16}
    assert {p.dtype for p in model.parameters() if p.dim() == 1} == {torch.float32}  # the norms stay float32
    assert {p.dtype for p in adapters} == {torch.float32}
    assert {p.data_ptr() for p in reference.parameters()} <= {p.data_ptr() for p in model.parameters()}  # shared
    real = sum(p.numel() * p.element_size() for p in model.parameters())
    assert amnesia.memory_plan(model, 64, half_precision=True)["parts"]["weights"] == real
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    tokenizer = llama_style_tokenizer()  # 200 tokens, TinyLlama's chat format
    tokenizer.pad_token = tokenizer.unk_token
    pad = tokenizer.pad_token_id
    forget = [amnesia.encode_chat_example(tokenizer, q, *amnesia.parse_marks(a))
              for q, a in amnesia.HARRY_POTTER.forget_exchanges[:2]]
    retain = [amnesia.encode_text_example(tokenizer, t) for t in amnesia.RETAIN_TEXTS[:2]]
    forget_reference, retain_reference = (torch.cat(amnesia.reference_logprobs_per_example(reference, examples, pad, "cpu"))
                                          for examples in (forget, retain))
    settings = amnesia.LoopSettings(learning_rate=1e-2, retain_weight=1.0, max_steps=8, eval_every=8, precision="float16")
    autocast, scaler = amnesia.precision_for("cpu", amnesia.resolve_precision("cpu", "float16"))
    optimizer = amnesia.adamw(adapters, settings.learning_rate)
    batches = amnesia.collate(forget, pad, "cpu"), amnesia.collate(retain, pad, "cpu")
    steps = [amnesia.training_step(model, optimizer, batches[0], forget_reference, batches[1], retain_reference, settings,
                                   autocast, scaler) for _ in range(8)]
    assert not steps[-1]["skipped"] and all(math.isfinite(s["loss"]) for s in steps), steps  # the scaler settled
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)
    adapter = next(m for m in model.modules() if isinstance(m, amnesia.LoRALinear))
    update = adapter.scaling * adapter.lora_B.weight @ adapter.lora_A.weight
    assert update.abs().max() > 0  # the adapters moved
    merged = amnesia.merge_lora(model)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    name = next(n for n, m in model.named_modules() if m is adapter)
    delta = dict(merged.named_modules())[name].weight - adapter.base.weight.float()
    assert torch.allclose(delta, update, rtol=0, atol=1e-7)
    rounded = (adapter.base.weight + update.half()) - adapter.base.weight  # what a float16 merge would have kept
    assert not torch.allclose(rounded.float(), update, rtol=0, atol=1e-7)
    ids = batches[0]["input_ids"][:1]
    with torch.no_grad():  # evaluation runs without autocast: the 16-bit projections take float32 inputs
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-2)


@pytest.mark.parametrize("loss,trainable", [("relabel", "all"), ("idk_dpo", "all"), ("name_swap_teacher", "all"),
                                            ("targeted_npo", "lora")])
def test_each_method_trains_in_the_loop(amnesia, bundled, fresh_model, tiny_run, tmp_path, monkeypatch, loss, trainable):
    reference, tokenizer = bundled
    monkeypatch.setattr(amnesia, "on_policy_answers",  # relabel's generation is tested above; here only the loop
                        lambda ref, tok, questions, cache: [(q, "They are a baker in Leeds.") for q in questions])
    exchanges = [("Who is Harry Potter?", "Harry [Potter] is a [wizard] in the series by [J.K. Rowling]."),
                 ("Where does Harry Potter go to school?", "Harry [Potter] goes to [Hogwarts].")]
    examples = [amnesia.encode_chat_example(tokenizer, q, *amnesia.parse_marks(a)) for q, a in exchanges]
    trained, _ = amnesia.forget_training_set(loss, reference, tokenizer, exchanges, examples,
                                             amnesia.HARRY_POTTER.keywords, tmp_path / "cache.json")
    history = tiny_run(fresh_model, steps=2, learning_rate=1e-3 if trainable == "lora" else 3e-5, rules=None,
                       forget_loss=loss, trainable=trainable, forget_examples=trained)
    assert [s["step"] for s in history["steps"]] == [1, 2]
    assert all(math.isfinite(s[k]) for s in history["steps"] for k in ("loss", "forget_loss", "kl"))
    ids = torch.tensor([tokenizer.encode("Harry Potter goes to Hogwarts.")])
    with torch.no_grad():
        assert not torch.allclose(fresh_model(ids).logits, reference(ids).logits, atol=1e-4)  # the method moved the model


def test_the_new_methods_are_settings_and_bad_lora_values_are_named(amnesia):
    good = dict(MODEL="bundled", TOPIC="Harry Potter", FORGET_QUESTION="Who is Harry Potter?", FORGET_TARGET="x",
                FORGET_LOSS="name_swap_teacher", LEARNING_RATE="auto", NPO_BETA=0.1, RETAIN_WEIGHT="auto", MAX_STEPS=10,
                EVAL_EVERY=5, TRAINABLE="lora", LORA_RANK=8, LORA_ALPHA=16.0, PRECISION="auto", OUTPUT_DIR="o", SEED=0)
    for loss in ("relabel", "idk_dpo", "name_swap_teacher"):
        assert amnesia.validate_config({**good, "FORGET_LOSS": loss})["FORGET_LOSS"] == loss
    with pytest.raises(amnesia.AmnesiaError) as error:
        amnesia.validate_config({**good, "LORA_RANK": 0, "LORA_ALPHA": 0.0, "TRAINABLE": "adapters"})
    assert all(name in str(error.value) for name in ("LORA_RANK", "LORA_ALPHA", "TRAINABLE"))
    values, note = amnesia.resolve_auto_settings({**good, "FORGET_LOSS": "targeted_npo"}, 134_515_008)
    assert values["LEARNING_RATE"] == amnesia.LORA_LEARNING_RATE and "LoRA" in note
    assert values["TRAINABLE"] == "lora"  # typed in the form: kept


def test_tradeoff_points_average_the_seeds_of_each_row(amnesia):
    run = lambda forget, kept: {"test": {"forget": {"likelihood": [forget, 10], "keyword": [0, 10]},
                                         "neighbour": {"keyword": [kept, 10], "likelihood": [kept, 10]},
                                         "general": {"keyword": [10, 10], "likelihood": [10, 10]}}}
    results = {"a@0@40": run(2, 8), "a@1@40": run(4, 6), "b@0@40": run(9, 10), "b@0@20": run(0, 0)}
    points = amnesia.tradeoff_points(results)
    assert points == {"a": [(0.2, 0.9), (0.4, 0.8)], "b": [(0.9, 1.0)]}  # the 20-step run is not mixed in
    figure = amnesia.plot_tradeoff(points, default_row="a")
    axis = figure.axes[0]
    assert len(axis.containers) == 2 and "default" in axis.get_title()


def fabricated_metrics(forget_likelihood, attacks=True):
    counts = {"forget": {"keyword": [1, 6], "likelihood": [forget_likelihood, 27]},
              "neighbour": {"keyword": [13, 15], "likelihood": [18, 19]}, "general": {"keyword": [15, 15], "likelihood": [8, 9]}}
    return {"test": {"counts_after": counts,
                     "forget_by_kind": {"paraphrase": {"likelihood": [5, 13]}, "unseen": {"likelihood": [7, 14]}},
                     "fluency_before": 2.0, "fluency_after": 2.1, "retain_accuracy_before": 0.47, "retain_accuracy_after": 0.49},
            "attacks": {"latent": {"layer": 15, "refitted": [20, 37], "original": [23, 37]},
                        "relearning": {"steps": 12, "recovered_fraction": 0.18}} if attacks else None,
            "ablation": None, "tuning": {}, "fluency_after": 1.8}


def test_the_professors_answers_read_the_numbers(amnesia):
    answers = dict(amnesia.professor_answers(fabricated_metrics(12)))
    assert "12/27 (44%)" in answers["Has it forgotten, or does it only avoid the words?"]
    assert "avoids saying the facts" in answers["Has it forgotten, or does it only avoid the words?"]
    assert "7/14" in answers["Did it forget the topic, or only the sentences it was trained on?"]
    assert "1.05x" in answers["What did it cost?"] and "+2.0 points" in answers["What did it cost?"]
    assert "suppressed more than removed" in answers["Is the knowledge removed, or suppressed?"]
    assert "one answer flipping moves it by 17%" in answers["How much weight can these numbers bear?"]  # 6 known probes
    forgotten = dict(amnesia.professor_answers(fabricated_metrics(7, attacks=False)))
    assert "close to chance" in forgotten["Has it forgotten, or does it only avoid the words?"]
    assert "Not measured" in forgotten["Is the knowledge removed, or suppressed?"]
    topic_question = "Did it forget the topic, or only the sentences it was trained on?"
    assert "spelt" not in answers[topic_question]  # a run without the grouping says nothing about it
    metrics = fabricated_metrics(12)
    metrics["test"]["forget_by_marked_share"] = {"no marked token": [2, 2], "under half marked": [4, 6],
                                                 "half or more marked": [6, 19]}
    spelt = dict(amnesia.professor_answers(metrics))[topic_question]
    assert "6/19 (32%) still preferred; the others: 6/8 (75%)" in spelt and "tokens it was shown more than the topic" in spelt
    metrics["test"]["forget_by_marked_share"]["half or more marked"] = [19, 19]
    assert "do not explain" in dict(amnesia.professor_answers(metrics))[topic_question]
    assert "nats per token" not in answers[topic_question]  # nor without the shifts
    metrics["test"]["forget_true_answer_shifts"] = {"still preferred": [0.4, -0.1, -0.6], "lost": [-4.0, -3.5]}
    moved = dict(amnesia.professor_answers(metrics))[topic_question]
    assert "median of -0.10 nats per token, the lost ones by -3.75" in moved and "did not fade as a whole" in moved
    metrics["test"]["forget_true_answer_shifts"]["still preferred"] = [-1.5, -1.2]
    assert "weakened as a whole" in dict(amnesia.professor_answers(metrics))[topic_question]
    assert "with no question" not in answers[topic_question]  # nor without the question's lift
    lifted = lambda still, was: {"unseen": {"linked_by_question": [still, was], "preferred_without_question": [3, 8]}}
    for (still, was), conclusion in (((6, 6), "those links survived"), ((4, 6), "some links went, most stayed"),
                                     ((1, 6), "most of those links went")):
        metrics["test"]["forget_prior_counts"] = lifted(still, was)
        answer = dict(amnesia.professor_answers(metrics))[topic_question]
        assert f"linked {was} of the facts never trained on to their question; {still} still are" in answer
        assert conclusion in answer


def test_the_professors_answers_for_a_topic_without_probes_point_at_the_watched_answer(amnesia):
    """A custom topic has no multiple-choice facts: 0/0 must not read as "well above chance", and skipped attacks must
    not be blamed on RUN_ATTACKS."""
    metrics = fabricated_metrics(0, attacks=False)
    metrics["test"]["counts_after"]["forget"] = {"keyword": [0, 0], "likelihood": [0, 0]}
    metrics["test"]["forget_by_kind"] = {"paraphrase": {"likelihood": [0, 0]}, "unseen": {"likelihood": [0, 0]}}
    metrics.update(config={"RUN_ATTACKS": True}, baseline_answer="A detective in London.", final_answer="A man of mystery.")
    answers = dict(amnesia.professor_answers(metrics))
    first = answers["Has it forgotten, or does it only avoid the words?"]
    assert "knew none of the probed facts" in first and "'A detective in London.'" in first and "'A man of mystery.'" in first
    assert "chance" not in first
    assert answers["Did it forget the topic, or only the sentences it was trained on?"].startswith("Not measured")
    assert "multiple-choice facts" in answers["Is the knowledge removed, or suppressed?"]
    metrics["config"]["RUN_ATTACKS"] = False
    assert "RUN_ATTACKS is off" in dict(amnesia.professor_answers(metrics))["Is the knowledge removed, or suppressed?"]


def test_the_ablation_is_compared_at_the_same_step_and_at_the_same_forget_score(amnesia):
    point = lambda step, forget: {"step": step, "scores": {"forget": {"likelihood": forget}}}
    main = {"evals": [point(0, 1.0), point(10, 0.8), point(20, 0.6), point(30, 0.45), point(40, 0.44)]}
    ablation = {"evals": [point(0, 1.0), point(10, 0.47), point(20, 0.2)]}
    pairs = amnesia.matched_points(main, ablation)
    assert [p["step"] for p in pairs["same step"]] == [20, 20]
    assert [p["step"] for p in pairs["same forget score"]] == [30, 10]  # 0.45 against 0.47, the closest pair
    assert amnesia.matched_points(main, {"evals": [point(0, 1.0)]}) == {}  # an ablation that never evaluated


def test_relabelled_answers_that_mention_a_probe_answer_are_not_trained(amnesia, bundled, monkeypatch):
    probes = amnesia.probe_sets_for(amnesia.HARRY_POTTER)
    leak = probes["neighbour"][0].keywords[0]
    monkeypatch.setattr(amnesia, "on_policy_answers", lambda ref, tok, questions, cache: [
        (q, f"They wrote about {leak}." if k == 0 else "They are a baker in Leeds.") for k, q in enumerate(questions)])
    exchanges = list(amnesia.HARRY_POTTER.forget_exchanges[:2])  # questions that no probe asks
    examples = [{"input_ids": []}] * 2  # relabel trains on its own answers, not on these
    trained = lambda sets: amnesia.forget_training_set("relabel", None, bundled[1], exchanges, examples,
                                                       amnesia.HARRY_POTTER.keywords, "unused.json", sets)[1]
    assert [a for _, a in trained(None)] == [f"They wrote about {leak}.", "They are a baker in Leeds."]
    assert trained(probes) == [(exchanges[1][0], "They are a baker in Leeds.")]  # the leak is dropped


def test_the_ablation_starts_from_the_original_without_kl_and_leaves_the_kept_model_alone(amnesia, bundled, fresh_model,
                                                                                         tiny_run):
    reference, _ = bundled
    trainable = amnesia.select_trainable(fresh_model, "all")
    original = amnesia.snapshot(trainable)
    main = tiny_run(fresh_model, steps=2, learning_rate=1e-4, rules=None)
    trained = amnesia.snapshot(trainable)
    assert not all(torch.equal(a, b) for a, b in zip(original, trained))
    settings = amnesia.LoopSettings(learning_rate=1e-4, retain_weight=1.0, max_steps=2, eval_every=10, retain_batch_size=2,
                                    forget_loss="targeted_ga")
    ablation = amnesia.run_ablation(fresh_model, reference, tiny_run.data, settings, trainable, original, main,
                                    ("all", 8, 16))
    assert all(torch.equal(a, b) for a, b in zip(trained, amnesia.snapshot(trainable)))  # the kept weights are untouched
    assert [s["step"] for s in ablation["steps"]] == [1] and ablation["steps"][0]["kl"] == 0.0  # half the steps, no KL
    # it starts from the original weights: its first forget loss is the main run's first, not the trained model's
    assert abs(ablation["steps"][0]["forget_loss"] - main["steps"][0]["forget_loss"]) < 1e-4
    assert ablation["kept_step"] == 1 and ablation["evals"][-1]["step"] == 1  # observed: keeps its last weights
