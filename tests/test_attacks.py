"""The attacks of section 8: they must measure without touching the kept weights, and split their data honestly."""
import re

import pytest
import torch


@pytest.mark.parametrize("topic_name", ["Harry Potter", "The Beatles"])
def test_relearning_groups_are_disjoint_and_outside_the_forget_set(amnesia, topic_name):
    topic = amnesia.TOPIC_PRESETS[topic_name]
    group_a, group_b = amnesia.relearning_split(topic)
    assert len(group_a) >= 5 and len(group_b) >= 10
    assert not {p.question for p in group_a} & {p.question for p in group_b}
    tuning, test = amnesia.split_probes(topic.forget_probes)
    assert all(p in tuning and p.kind == "unseen" for p in group_a) and all(p in test for p in group_b)
    forget_questions = {q for q, _ in topic.forget_exchanges}
    forget_text = " ".join(amnesia.parse_marks(a)[0] for _, a in topic.forget_exchanges)
    for probe in group_a:  # the attacker never trains on the forget set
        assert probe.question not in forget_questions
        assert not amnesia.topic_keywords_in(forget_text, probe.keywords), probe.question
    generic = {w.lower() for w in topic.keywords} | set(amnesia.topic_name(topic.question).lower().split())
    a_text = " ".join(f"{p.question} {p.answer}" for p in group_a)
    for probe in group_b:  # nothing A teaches answers B directly
        assert not amnesia.topic_keywords_in(a_text, [k for k in probe.keywords if k.lower() not in generic]), probe.question
        assert not any(re.search(r"\b" + re.escape(a.answer), probe.question, re.I) for a in group_a)


def test_a_custom_topic_is_refused_by_the_attacks_with_a_reason_before_any_work(amnesia):
    """A custom topic has no multiple-choice facts: the relearning groups would be empty. The attacks must say so, not
    fail inside a fine-tuning run with an empty batch; the check comes first, so no model is needed to reach it."""
    topic = amnesia.resolve_topic("custom", "Who is Sherlock Holmes?", "Sherlock Holmes is a detective in London.",
                                  amnesia.TOPIC_PRESETS)
    assert amnesia.relearning_split(topic) == ([], [])
    with pytest.raises(amnesia.AmnesiaError, match="multiple-choice facts"):
        amnesia.run_attacks(None, None, None, [], [], topic, ())


def test_recovered_fraction_on_fabricated_counts(amnesia):
    assert amnesia.recovered_fraction(original=20, unlearned=8, attacked=14) == pytest.approx(0.5)
    assert amnesia.recovered_fraction(20, 8, 8) == 0.0
    assert amnesia.recovered_fraction(20, 8, 20) == 1.0
    assert amnesia.recovered_fraction(20, 8, 5) == pytest.approx(-0.25)  # the attack can make things worse
    assert amnesia.recovered_fraction(20, 20, 20) is None  # nothing was lost: nothing to recover


def test_the_relearning_attack_never_touches_the_kept_weights(amnesia, bundled, fresh_model):
    _, tokenizer = bundled
    params = amnesia.select_trainable(fresh_model, "middle-mlp")
    original = amnesia.snapshot(params)
    with torch.no_grad():  # a stand-in "unlearned" model: the original with a nudge
        params[0].add_(0.01)
    before = amnesia.weights_fingerprint(fresh_model)
    group_a, group_b = amnesia.relearning_split(amnesia.HARRY_POTTER)
    attack = [amnesia.encode_chat_example(tokenizer, p.question, p.answer + ".") for p in group_a]
    probes_b = group_b[:4]
    curve = amnesia.relearning_curve(fresh_model, tokenizer, params, original, attack, probes_b, steps=2,
                                     learning_rate=1e-3, eval_every=1)
    assert [step for step, _ in curve] == [0, 1, 2] and all(n == 4 for _, (_, n) in curve)
    assert amnesia.weights_fingerprint(fresh_model) == before
    # the fingerprint is not blind: the attack's start (the original weights) differs from the kept ones
    with amnesia.weights_swapped(params, original):
        assert amnesia.weights_fingerprint(fresh_model) != before
    assert amnesia.weights_fingerprint(fresh_model) == before


def test_run_attacks_fine_tunes_the_merged_copy_of_a_lora_model_and_leaves_the_model_alone(amnesia, bundled, fresh_model,
                                                                                          monkeypatch):
    """run_attacks picks its own target: every attack must act on the merged copy with all its weights, never on the
    LoRA model that the notebook goes on to save. The measurements are replaced by recorders to keep this fast."""
    reference, tokenizer = bundled
    adapters = amnesia.select_trainable(fresh_model, "lora", lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for p in adapters[1::2]:
            p.normal_(0, 0.02)
    before = amnesia.weights_fingerprint(fresh_model)
    seen = []

    def fake_curve(model, tokenizer, params, start_weights, *args, start_count=None, **kwargs):
        seen.append((model, len(params), len(start_weights)))
        return [(0, start_count or (1, 1)), (1, (1, 1))]

    monkeypatch.setattr(amnesia, "relearning_curve", fake_curve)
    monkeypatch.setattr(amnesia, "likelihood_hits", lambda model, tokenizer, probes: [True] * len(probes))
    monkeypatch.setattr(amnesia, "candidate_states", lambda model, tokenizer, probes, layer: torch.randn(len(probes), 4, 8))
    result = amnesia.run_attacks(fresh_model, reference, tokenizer, adapters, amnesia.snapshot(adapters),
                                 amnesia.HARRY_POTTER, (), attack_steps=1)
    weights = len(list(reference.parameters()))
    assert result["attacked"] == "the merged model, all weights"
    assert len(seen) == 3 and all(model is not fresh_model and (n, m) == (weights, weights) for model, n, m in seen)
    assert not any(isinstance(m, amnesia.LoRALinear) for m in seen[0][0].modules())
    assert amnesia.weights_fingerprint(fresh_model) == before


def test_weights_come_back_even_when_the_attack_fails(amnesia, fresh_model):
    params = amnesia.select_trainable(fresh_model, "middle-mlp")
    before = amnesia.weights_fingerprint(fresh_model)
    with pytest.raises(RuntimeError):
        with amnesia.weights_swapped(params, [torch.zeros_like(p) for p in params]):
            raise RuntimeError("the attack broke half-way")
    assert amnesia.weights_fingerprint(fresh_model) == before


def test_extraction_table_has_one_row_per_prompt(amnesia, bundled):
    model, tokenizer = bundled
    prompts = amnesia.EXTRACTION_PROMPTS["Harry Potter"]
    assert len(prompts) >= 20 and len({p.kind for p in prompts}) >= 8
    chosen = [p for p in prompts if p.kind in ("yes/no", "author")][:3]  # a prompt with keywords only, one without
    scores = amnesia.score_prompts(model, tokenizer, chosen, max_new_tokens=8)
    rows = amnesia.extraction_rows(chosen, scores, scores)
    assert [r["prompt"] for r in rows] == [p.question for p in chosen]
    for row, probe in zip(rows, chosen):
        assert (row["original_keyword"] is None) == (not probe.keywords)
        assert (row["unlearned_likelihood"] is None) == (not probe.distractors)


def test_the_latent_probe_finds_a_planted_truth_direction_and_only_then(amnesia):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(60, 4, 16, generator=generator)
    planted = states.clone()
    planted[:, 0, 3] += 3.0  # the true candidate stands out along one direction
    probe = amnesia.fit_truth_probe(planted[:30])
    k, n = amnesia.truth_probe_count(probe, planted[30:])
    assert n == 30 and k >= 24  # the best possible rule gets about 28
    k, _ = amnesia.truth_probe_count(amnesia.fit_truth_probe(states[:30]), states[30:])
    assert k <= 15  # pure noise: around chance (7.5 of 30), far from the planted case


def test_the_verdict_reads_the_numbers(amnesia):
    latent = {"refitted": (9, 37), "original": (30, 37)}
    text = amnesia.attack_verdict((2, 16), 0.8, 0.1, latent, 15)
    assert "2 of the 16" in text and "80%" in text and "suppressed, not removed" in text and "within 10 points of chance" in text
    text = amnesia.attack_verdict((10, 16), 0.2, None, {"refitted": (25, 37), "original": (30, 37)}, 15)
    assert "still work" in text and "stayed lost" in text and "still readable" in text
    assert "nothing to recover" in amnesia.attack_verdict((0, 0), None, None, latent, 15)


def test_no_probe_can_be_answered_from_the_relearning_control(amnesia):
    """The control fine-tunes on unrelated facts: none may carry a probe's answer (nor be a retain question)."""
    for topic in amnesia.TOPIC_PRESETS.values():
        generic = topic.keywords + tuple(amnesia.topic_name(topic.question).lower().split())
        leaks = amnesia.probe_leaks(amnesia.probe_sets_for(topic), [], list(amnesia.RELEARN_CONTROL), [], generic)
        assert not leaks, leaks
    assert not {q for q, _ in amnesia.RELEARN_CONTROL} & set(amnesia.RETAIN_QUESTIONS)


def test_candidate_states_are_the_full_runs_hidden_states_at_the_last_answer_token(amnesia, bundled):
    """The latent probe's states skip the layers above the probed one and share the prompt's prefix: they must still be
    the hidden states a whole forward pass has there."""
    model, tokenizer = bundled
    probes = amnesia.HARRY_POTTER.forget_probes[:2]
    layer = len(amnesia.decoder_layers(model)) // 2
    states = amnesia.candidate_states(model, tokenizer, probes, layer, batch_size=5)  # batches that cut across probes
    assert states.shape == (2, 4, model.config.hidden_size)
    for k, (probe, candidate) in enumerate([(p, c) for p in probes for c in (p.answer, *p.distractors)]):
        example = amnesia.encode_chat_example(tokenizer, probe.question, candidate)
        with torch.no_grad():
            full = model(input_ids=torch.tensor([example["input_ids"]]), output_hidden_states=True).hidden_states
        last = max(i for i, label in enumerate(example["labels"]) if label != amnesia.IGNORE)
        assert torch.allclose(states[k // 4, k % 4], full[layer + 1][0, last], atol=1e-3, rtol=1e-3)  # [0] is the embedding


def test_a_lora_run_is_attacked_merged_with_the_base_as_its_original(amnesia, bundled, fresh_model, monkeypatch):
    reference, tokenizer = bundled
    adapters = amnesia.select_trainable(fresh_model, "lora", lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for p in adapters[1::2]:
            p.normal_(0, 0.02)  # an unlearned LoRA model: every B moved
    plain = amnesia.attack_target(reference, reference, [], [])
    assert plain[0] is reference and plain[3] == "the weights unlearning changed"  # no adapters: attacked as it is
    attacked, params, original, what = amnesia.attack_target(fresh_model, reference, adapters, amnesia.snapshot(adapters))
    assert what == "the merged model, all weights" and attacked is not fresh_model
    assert not any(isinstance(m, amnesia.LoRALinear) for m in attacked.modules())
    assert len(params) == len(list(attacked.parameters())) == len(original) and all(p.requires_grad for p in params)
    ids = torch.tensor([tokenizer.encode("Harry Potter goes to Hogwarts.")])
    with torch.no_grad():
        assert torch.allclose(attacked(ids).logits, fresh_model(ids).logits, atol=1e-3)  # the kept, merged
        assert not torch.allclose(attacked(ids).logits, reference(ids).logits, atol=1e-3)
        with amnesia.weights_swapped(params, original):
            assert torch.equal(attacked(ids).logits, reference(ids).logits)  # the original: exactly the base
    monkeypatch.setattr(amnesia, "available_memory", lambda device: 2 ** 30)  # a merged copy cannot fit in 1 GiB
    fallback = amnesia.attack_target(fresh_model, reference, adapters, [])
    assert fallback[0] is fresh_model and fallback[1] is adapters and "adapters" in fallback[3]
