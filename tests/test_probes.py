"""Probe sets, scoring, stop decisions and the kept checkpoint."""
import copy
import math
import re

import pytest
import torch


@pytest.mark.parametrize("name", ["Harry Potter", "The Beatles"])
def test_probe_sets_are_large_and_well_formed(amnesia, name):
    for set_name, probes in amnesia.probe_sets_for(amnesia.TOPIC_PRESETS[name]).items():
        assert len(probes) >= 12, set_name
        for probe in probes:
            assert len(probe.distractors) == 3 and probe.answer not in probe.distractors, probe
            assert probe.keywords and all(k == k.lower() for k in probe.keywords), probe


@pytest.mark.parametrize("name", ["Harry Potter", "The Beatles"])
def test_neighbour_distractors_never_use_the_forget_topics_answers(amnesia, name):
    topic = amnesia.TOPIC_PRESETS[name]
    forget_answers = {p.answer.lower() for p in topic.forget_probes}
    words = lambda text: {w.rstrip(".") for w in re.findall(r"[\w.']+", text)}
    proper_nouns = {w for w in words(topic.target) if w[0].isupper()} - {"The", "English"}
    for probe in topic.neighbour_probes:
        for distractor in probe.distractors:
            assert distractor.lower() not in forget_answers, (probe, distractor)
            assert not proper_nouns & words(distractor), (probe, distractor)


@pytest.mark.parametrize("name", ["Harry Potter", "The Beatles"])
def test_probes_are_disjoint_from_all_training_questions(amnesia, name):
    topic = amnesia.TOPIC_PRESETS[name]
    probe_sets = amnesia.probe_sets_for(topic)
    amnesia.check_probes_are_held_out(probe_sets, [topic.question], [q for q, _ in topic.extra_forget],
                                      [q for q, _ in amnesia.RETAIN_CHATS], [q for q, _ in amnesia.HELDOUT_CHATS])
    clash = probe_sets["neighbour"][0].question.lower()
    with pytest.raises(amnesia.AmnesiaError, match="reword"):
        amnesia.check_probes_are_held_out(probe_sets, [clash])


def test_custom_topic_uses_the_form_strings(amnesia):
    topic = amnesia.resolve_topic("custom", "Who is Sherlock Holmes?", "Sherlock Holmes is a detective in London.",
                                  amnesia.TOPIC_PRESETS)
    assert topic.question == "Who is Sherlock Holmes?" and topic.extra_forget == () and topic.forget_probes == ()
    assert "detective" in topic.keywords and "sherlock" not in topic.keywords
    assert amnesia.resolve_topic("The Beatles", "q", "t", amnesia.TOPIC_PRESETS) is amnesia.THE_BEATLES
    with pytest.raises(amnesia.AmnesiaError, match="not a preset"):
        amnesia.resolve_topic("Star Wars", "q", "t", amnesia.TOPIC_PRESETS)


def test_keyword_hits_match_word_starts(amnesia):
    probe = amnesia.Probe("Who are Harry's friends?", ("ron", "hermione"), "Ron", ("a", "b", "c"))
    answers = ["Ron Weasley and Hermione.", "He has strong friendships.", "RONALD, of course."]
    assert amnesia.keyword_hits(answers, [probe] * 3) == [True, False, True]


def test_known_share_counts_only_what_the_original_knew(amnesia):
    assert amnesia.known_share([True, False, True, False], [True, True, False, False]) == 0.5
    assert amnesia.known_share([False, False], [False, False]) == 1.0


def test_likelihood_prefers_the_correct_answer(amnesia, bundled):
    model, tokenizer = bundled
    right = amnesia.Probe("What is the capital of France?", ("paris",), "Paris", ("Bananas", "Seven", "Blue"))
    wrong = amnesia.Probe("What is the capital of France?", ("paris",), "Bananas", ("Paris", "Seven", "Blue"))
    assert amnesia.likelihood_hits(model, tokenizer, [right, wrong]) == [True, False]


def test_npo_loss_starts_at_2_log_2_over_beta_and_fades(amnesia):
    token_nll = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    reference = torch.tensor([-3.0])
    loss = amnesia.npo_loss(token_nll, mask, reference, beta=0.1)
    assert math.isclose(loss.item(), 2 / 0.1 * math.log(2), rel_tol=1e-5)
    loss.backward()
    assert (token_nll.grad[0, :2] < 0).all()  # minimising NPO raises the NLL of the forget answer
    far = amnesia.npo_loss(torch.tensor([[500.0, 500.0, 0.0]]), mask, reference, beta=0.1)
    assert far.item() < 1e-3  # once the answer is very unlikely, the push is gone


def point(forget=(1.0, 1.0), neighbour=(1.0, 1.0), general=(1.0, 1.0), accuracy=0.47, fluency=2.0,
          answer="Harry Potter is a wizard.", perplexity=2.5):
    return {"scores": {"forget": dict(zip(("keyword", "likelihood"), forget)),
                       "neighbour": dict(zip(("keyword", "likelihood"), neighbour)),
                       "general": dict(zip(("keyword", "likelihood"), general))},
            "retain_accuracy": accuracy, "fluency": fluency, "answer": answer, "perplexity": perplexity}


def test_decide_names_the_rule_that_fires(amnesia):
    rules, baseline = amnesia.StopRules(), point()
    assert amnesia.decide(point(forget=(0.5, 0.9)), baseline, rules) is None
    assert amnesia.decide(point(forget=(0.1, 0.3)), baseline, rules).startswith("forgotten")
    assert amnesia.decide(point(forget=(0.1, 0.3), neighbour=(0.7, 1.0)), baseline, rules).startswith("collateral damage: neighbour keyword")
    assert "held-out accuracy" in amnesia.decide(point(accuracy=0.40), baseline, rules)
    assert "fluency" in amnesia.decide(point(fluency=3.5), baseline, rules)
    assert amnesia.decide(point(answer="I don't know who that is."), baseline, rules).startswith("refusal")


def test_collateral_damage_stops_and_restores_the_original_weights(fresh_model, tiny_run):
    """A reckless learning rate must trip the collateral-damage rule and leave the original weights in place."""
    original = copy.deepcopy(fresh_model.state_dict())
    history = tiny_run(fresh_model, steps=4, learning_rate=3e-4, retain_weight=0.0, eval_every=2)
    assert history["steps"][-1]["forget_loss"] > history["steps"][0]["forget_loss"]
    assert history["stop_reason"].startswith(("collateral damage", "nonsense")), history["stop_reason"]
    assert history["kept_step"] == 0
    restored = fresh_model.state_dict()
    assert all(torch.equal(original[k], restored[k]) for k in original)
