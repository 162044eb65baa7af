"""Probe sets, scoring, stop decisions and the kept checkpoint."""
import copy
import math
import re

import pytest
import torch


@pytest.mark.parametrize("name, forget_exchanges", [("Harry Potter", 30), ("The Beatles", 20)])
def test_forget_sets_and_probe_sets_are_large_and_well_formed(amnesia, name, forget_exchanges):
    topic = amnesia.TOPIC_PRESETS[name]
    assert len(topic.forget_exchanges) >= forget_exchanges
    assert topic.forget_exchanges[0] == (topic.question, amnesia.bracket_spans(topic.target, amnesia.parse_marks(topic.forget_exchanges[0][1])[1]))
    assert all(amnesia.parse_marks(answer)[1] for _, answer in topic.forget_exchanges)  # every answer has marks
    kinds = [p.kind for p in topic.forget_probes]
    assert kinds.count("paraphrase") >= 10 and kinds.count("unseen") >= 8
    for set_name, probes in amnesia.probe_sets_for(topic).items():
        assert len(probes) >= 20, set_name
        for probe in probes:
            assert len(probe.distractors) == 3 and probe.answer not in probe.distractors, probe
            assert probe.keywords and all(k == k.lower() for k in probe.keywords), probe


def test_tuning_and_test_halves_split_every_kind(amnesia):
    probes = amnesia.HARRY_POTTER.forget_probes
    tuning, test = amnesia.split_probes(probes)
    assert not set(tuning) & set(test) and len(tuning) + len(test) == len(probes)
    for kind in ("paraphrase", "unseen"):
        assert abs(sum(p.kind == kind for p in tuning) - sum(p.kind == kind for p in test)) <= 1
    halves = amnesia.probe_sets_for(amnesia.HARRY_POTTER, "test")
    assert halves["forget"] == test and halves["general"] == amnesia.split_probes(amnesia.GENERAL_PROBES)[1]


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


def generic_words(amnesia, topic):
    return topic.keywords + tuple(amnesia.topic_name(topic.question).lower().split())


@pytest.mark.parametrize("name", ["Harry Potter", "The Beatles"])
def test_presets_do_not_leak_and_planted_leaks_are_caught(amnesia, name):
    topic = amnesia.TOPIC_PRESETS[name]
    probe_sets = amnesia.probe_sets_for(topic)
    questions = [(q, "A plain answer.") for q in amnesia.RETAIN_QUESTIONS]  # the questions alone must not leak
    assert amnesia.probe_leaks(probe_sets, amnesia.RETAIN_TEXTS, questions, topic.forget_exchanges, generic_words(amnesia, topic)) == []
    neighbour, unseen = probe_sets["neighbour"][0], next(p for p in topic.forget_probes if p.kind == "unseen")
    planted_chat = [("Tell me something.", f"Everyone knows the answer is {neighbour.keywords[0].title()}.")]
    leaks = amnesia.probe_leaks(probe_sets, [], planted_chat, [], generic_words(amnesia, topic))
    assert (neighbour.question, f"'{neighbour.keywords[0]}' occurs in the retain set") in leaks
    planted_fact = list(topic.forget_exchanges) + [("Tell me more.", f"It is [{unseen.keywords[0].title()}].")]
    leaks = amnesia.probe_leaks(probe_sets, [], [], planted_fact, generic_words(amnesia, topic))
    assert (unseen.question, f"'{unseen.keywords[0]}' occurs in the forget set") in leaks
    trained = amnesia.probe_leaks(probe_sets, [], [(neighbour.question.upper(), "x")], [], ())
    assert (neighbour.question, "the question is trained on") in trained


def test_leaking_retain_answers_are_dropped(amnesia):
    sets = amnesia.probe_sets_for(amnesia.HARRY_POTTER)
    chats = [("What is chess?", "Chess is a board game for two players."),
             ("Who is Robinson Crusoe?", "A castaway in the novel by Daniel Defoe.")]
    kept, dropped = amnesia.drop_leaking_retain(chats, sets, generic_words(amnesia, amnesia.HARRY_POTTER))
    assert kept == chats[:1] and dropped == ["Who is Robinson Crusoe?"]


def test_custom_topic_uses_the_form_strings(amnesia):
    topic = amnesia.resolve_topic("custom", "Who is Sherlock Holmes?", "Sherlock Holmes is a detective in London.",
                                  amnesia.TOPIC_PRESETS)
    assert topic.question == "Who is Sherlock Holmes?" and topic.forget_probes == ()
    assert topic.forget_exchanges == (("Who is Sherlock Holmes?", "Sherlock Holmes is a detective in London."),)
    assert "detective" in topic.keywords and "sherlock" not in topic.keywords
    assert amnesia.resolve_topic("The Beatles", "q", "t", amnesia.TOPIC_PRESETS) is amnesia.THE_BEATLES
    with pytest.raises(amnesia.AmnesiaError, match="not a preset"):
        amnesia.resolve_topic("Star Wars", "q", "t", amnesia.TOPIC_PRESETS)


def test_keyword_hits_match_word_starts(amnesia):
    probe = amnesia.Probe("Who are Harry's friends?", ("ron", "hermione"), "Ron", ("a", "b", "c"))
    answers = ["Ron Weasley and Hermione.", "He has strong friendships.", "RONALD, of course."]
    assert amnesia.keyword_hits(answers, [probe] * 3) == [True, False, True]


def test_known_share_counts_only_what_the_original_knew_and_was_measured(amnesia):
    assert amnesia.known_share([True, False, True, False], [True, True, False, False]) == 0.5
    assert amnesia.known_share([False, False], [False, False]) == 1.0
    assert amnesia.known_count([True, None, False, None], [True, True, True, False]) == (1, 2)


def test_likelihood_prefers_the_correct_answer(amnesia, bundled):
    model, tokenizer = bundled
    right = amnesia.Probe("What is the capital of France?", ("paris",), "Paris", ("Bananas", "Seven", "Blue"))
    wrong = amnesia.Probe("What is the capital of France?", ("paris",), "Bananas", ("Paris", "Seven", "Blue"))
    assert amnesia.likelihood_hits(model, tokenizer, [right, wrong]) == [True, False]
    # batched by answer length, the results still come back in the probes' order (the long answer first here)
    long_right = amnesia.Probe("Who wrote Romeo and Juliet?", ("shakespeare",), "William Shakespeare, the English playwright",
                               ("A chef in Paris", "Bananas", "Seven"))
    probes = [long_right, wrong, right] * 3
    assert amnesia.likelihood_hits(model, tokenizer, probes, batch_size=2) == [True, False, True] * 3


def point(forget=(1.0, 1.0), neighbour=(1.0, 1.0), general=(1.0, 1.0), accuracy=0.47, fluency=2.0,
          answer="Harry Potter is a wizard.", perplexity=2.5):
    scores = {"forget": dict(zip(("keyword", "likelihood"), forget)),
              "neighbour": dict(zip(("keyword", "likelihood"), neighbour)),
              "general": dict(zip(("keyword", "likelihood"), general))}
    counts = {name: {m: (round(10 * v), 10) for m, v in s.items()} for name, s in scores.items()}
    return {"scores": scores, "counts": counts, "retain_accuracy": accuracy, "fluency": fluency, "answer": answer,
            "perplexity": perplexity}


def test_decide_needs_two_points_in_a_row_for_forgotten_and_for_damage(amnesia):
    rules, baseline = amnesia.StopRules(), point()
    keywords = amnesia.HARRY_POTTER.keywords
    decide = lambda *points: amnesia.decide(list(points), baseline, rules, keywords)
    forgotten, damaged = point(forget=(0.1, 0.3)), point(neighbour=(0.7, 1.0))
    assert decide(point(forget=(0.5, 0.9))) is None
    assert decide(forgotten) is None  # one point is not enough
    assert decide(point(), forgotten) is None
    assert decide(forgotten, forgotten).startswith("forgotten: forget probes 1/10 by keyword and 3/10 by likelihood")
    assert decide(point(forget=(0.1, 0.6)), point(forget=(0.1, 0.6))) is None  # keyword alone is not forgetting
    assert decide(damaged) is None and decide(damaged, point()) is None
    assert decide(point(), damaged, damaged).startswith("collateral damage: neighbour keyword score 7/10")
    assert "held-out accuracy" in decide(point(accuracy=0.40), point(accuracy=0.40))
    assert "fluency" in decide(point(fluency=2.7), point(fluency=2.7))
    damaged_forgotten = point(forget=(0.1, 0.3), neighbour=(0.7, 1.0))
    assert decide(damaged_forgotten, damaged_forgotten).startswith("collateral damage")


def test_refusal_stops_at_once_but_not_a_hedged_answer_that_names_the_facts(amnesia):
    rules, baseline = amnesia.StopRules(), point()
    keywords = amnesia.HARRY_POTTER.keywords
    refusal = point(answer="I don't know who that is.")
    assert amnesia.decide([refusal], baseline, rules, keywords).startswith("refusal")
    hedged = point(answer="I'm not sure, but I think he is a young wizard at Hogwarts.")
    assert amnesia.decide([hedged], baseline, rules, keywords) is None


def test_collateral_damage_stops_and_restores_the_original_weights(fresh_model, tiny_run):
    """A reckless learning rate must trip the collateral-damage (or nonsense) rule and leave the original weights in place."""
    original = copy.deepcopy(fresh_model.state_dict())
    history = tiny_run(fresh_model, steps=4, learning_rate=3e-4, retain_weight=0.0, eval_every=2)
    assert history["steps"][-1]["forget_loss"] > history["steps"][0]["forget_loss"]
    assert history["stop_reason"].startswith(("collateral damage", "nonsense")), history["stop_reason"]
    assert history["kept_step"] == 0
    restored = fresh_model.state_dict()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_measuring_only_the_known_probes_scores_each_one_as_a_full_measurement_does(amnesia, bundled, tiny_data):
    """Only the probes the original knew are scored (the others get None), and each score and answer comes back to its
    own probe: the same as measuring every probe."""
    model, tokenizer = bundled
    full = tiny_data.baseline
    known = copy.deepcopy(full)  # a fabricated original that knew a different subset in each set and measure
    for i, result in enumerate(known["sets"].values()):
        result["likelihood_hits"] = [(i + j) % 2 == 0 for j in range(len(result["likelihood_hits"]))]
        result["keyword_hits"] = [(i + j) % 2 == 1 for j in range(len(result["keyword_hits"]))]
    partial = amnesia.measure(model, model, tokenizer, tiny_data.watched, tiny_data.probe_sets, tiny_data.heldout_batch,
                              only_known=known)
    for name, result in partial["sets"].items():
        for wanted, got, expected in zip(known["sets"][name]["likelihood_hits"], result["likelihood_scores"],
                                         full["sets"][name]["likelihood_scores"]):
            assert (got is None) != wanted
            assert got is None or max(abs(a - b) for a, b in zip(got, expected)) < 1e-3
        for wanted, got, expected in zip(known["sets"][name]["keyword_hits"], result["answers"], full["sets"][name]["answers"]):
            assert got == expected if (wanted or name == "general") else got is None
