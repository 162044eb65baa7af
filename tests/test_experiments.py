"""The forgetting experiments' data (benchmarks/forgetting_experiments.py): what RMU steers, and the larger forget set."""
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import forgetting_experiments as experiments  # noqa: E402


def test_rmu_steers_the_question_and_the_answer_not_the_template(amnesia, bundled):
    _, tokenizer = bundled
    exchanges = amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges[:3]
    for (question, marked), example in zip(exchanges, experiments.steered_examples(amnesia, tokenizer, exchanges)):
        steered = [token for token, on in zip(example["input_ids"], example["steer"]) if on]
        assert tokenizer.decode(steered) == question + amnesia.parse_marks(marked)[0]
        assert len(example["steer"]) == len(example["input_ids"])


def test_the_larger_forget_set_leaks_no_probe_and_a_leaking_fact_is_refused(amnesia):
    topic = amnesia.TOPIC_PRESETS["Harry Potter"]
    larger = experiments.with_more_facts(amnesia, topic)
    assert len(larger.forget_exchanges) == len(topic.forget_exchanges) + len(experiments.MORE_HARRY_POTTER_EXCHANGES)
    with pytest.raises(amnesia.AmnesiaError, match="Fawkes|fawkes"):  # an unseen probe's answer may not be trained
        experiments.with_more_facts(amnesia, topic, [("Who is Dumbledore's pet?", "His phoenix is called [Fawkes].")])


def test_unmarking_takes_a_word_out_of_its_mark_and_keeps_the_text(amnesia):
    assert experiments.unmark_words("by [J.K. Rowling].", ["J.K."]) == "by J.K. [Rowling]."
    assert experiments.unmark_words("Harry [Potter] is a [wizard].", ["wizard"]) == "Harry [Potter] is a wizard."
    assert experiments.unmark_words("the [dark wizard] [Lord Voldemort]", ["wizard"]) == "the [dark] wizard [Lord Voldemort]"
    topic = experiments.with_unmarked(amnesia.TOPIC_PRESETS["Harry Potter"], ["J.K."])
    for (question, before), (same_question, after) in zip(amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges,
                                                          topic.forget_exchanges):
        assert same_question == question and amnesia.parse_marks(after)[0] == amnesia.parse_marks(before)[0]
    marked = [answer[a:b] for _, text in topic.forget_exchanges for answer, spans in [amnesia.parse_marks(text)]
              for a, b in spans]
    assert "Rowling" in marked and not any("J.K." in text for text in marked)
    with pytest.raises(SystemExit, match="Hedwig's"):  # a word in no mark is named, not silently ignored
        experiments.with_unmarked(amnesia.TOPIC_PRESETS["Harry Potter"], ["Hedwig's"])


def test_names_only_keeps_the_marks_that_name_something_and_the_text(amnesia):
    assert experiments.names_only("[Aragog] is a giant [spider] that [Hagrid] raised.") == \
        "[Aragog] is a giant spider that [Hagrid] raised."
    assert experiments.names_only("They read [the Daily Prophet] and [dark wizards] fear it.") == \
        "They read [the Daily Prophet] and dark wizards fear it."
    for _, answer in experiments.MORE_HARRY_POTTER_EXCHANGES:
        kept = experiments.names_only(answer)
        assert amnesia.parse_marks(kept)[0] == amnesia.parse_marks(answer)[0]
        spans = amnesia.parse_marks(kept)[1]
        assert spans and all(any(c.isupper() for c in amnesia.parse_marks(kept)[0][a:b]) for a, b in spans)


def test_the_generic_prediction_takes_away_what_the_reinforced_model_boosts():
    base = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]), -1)
    assert torch.allclose(experiments.generic_logprobs(base, base, 5.0), base)  # nothing boosted: the reference itself
    boosted = torch.log_softmax(torch.tensor([[4.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]), -1)
    generic = experiments.generic_logprobs(base, boosted, 5.0)
    assert generic[0].argmax() != 0 and generic[0, 0] < base[0, 0]  # the boosted token loses its place ...
    assert torch.allclose(generic[0, 1:] - generic[0, 1], base[0, 1:] - base[0, 1])  # ... the others keep their ratios
    assert torch.allclose(generic.exp().sum(-1), torch.ones(2))
    stronger = experiments.generic_logprobs(base, boosted, 20.0)
    assert stronger[0, 0] < generic[0, 0]


def test_the_reinforced_model_is_a_fine_tuned_copy_and_the_reference_stays(amnesia, bundled):
    model, tokenizer = bundled
    examples = [amnesia.encode_chat_example(tokenizer, q, *amnesia.parse_marks(a))
                for q, a in amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges[:2]]
    batch = amnesia.collate(examples, tokenizer.pad_token_id, "cpu")
    before = [p.detach().clone() for p in list(model.parameters())[:3]]
    with torch.no_grad():
        reference_nll = amnesia.answer_nll(model, batch).item()
    reinforced = experiments.reinforced_model(amnesia, model, examples, tokenizer.pad_token_id, steps=2, learning_rate=5e-5)
    with torch.no_grad():
        assert amnesia.answer_nll(reinforced, batch).item() < reference_nll
    assert all(torch.equal(a, b) for a, b in zip(before, list(model.parameters())[:3]))
    assert not any(p.requires_grad for p in reinforced.parameters())


def test_negation_subtracts_the_scaled_task_vector_and_fine_tunes_only_the_marked_tokens(amnesia):
    torch.manual_seed(0)
    reference, fine_tuned, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    vector = experiments.task_vector(reference, fine_tuned)
    assert all(torch.equal(v, f - r) for v, f, r in zip(vector, fine_tuned.parameters(), reference.parameters()))
    experiments.negate(model, reference, vector, 0.0)
    assert all(torch.equal(m, r) for m, r in zip(model.parameters(), reference.parameters()))  # scale 0: the original
    experiments.negate(model, reference, vector, 2.0)
    assert all(torch.allclose(m, 3 * r - 2 * f) for m, r, f in zip(model.parameters(), reference.parameters(),
                                                                    fine_tuned.parameters()))  # away from the task
    example = {"input_ids": [5, 6, 7, 8], "labels": [amnesia.IGNORE, 6, 7, 8], "marks": [0, 0, 1, 0]}
    assert experiments.marked_only(amnesia, [example])[0]["labels"] == [amnesia.IGNORE, amnesia.IGNORE, 7, amnesia.IGNORE]
    assert example["labels"] == [amnesia.IGNORE, 6, 7, 8]  # the forget set itself is left as it was


def test_the_later_retain_questions_close_the_notebooks_set_and_none_is_a_probe_or_held_out_question(amnesia):
    extra = [amnesia.normalise(q) for q in amnesia.OTHER_STORIES_QUESTIONS]
    retain = [amnesia.normalise(q) for q in amnesia.RETAIN_QUESTIONS]
    assert retain[-len(extra):] == extra  # appended in the order the sweep's row trained them
    assert len(set(retain)) == len(retain)
    taken = {amnesia.normalise(q) for q, _ in amnesia.HELDOUT_CHATS}
    taken |= {amnesia.normalise(p.question) for topic in amnesia.TOPIC_PRESETS.values()
              for probes in amnesia.probe_sets_for(topic).values() for p in probes}
    taken |= {amnesia.normalise(q) for topic in amnesia.TOPIC_PRESETS.values() for q, _ in topic.forget_exchanges}
    assert not taken & set(retain)


def test_each_sweep_row_gets_the_retain_set_it_ran_with_whichever_the_notebook_holds():
    import types

    import unlearning_sweep as sweep

    extra = ["Who is Anne Shirley?", "Who wrote Inkheart?"]
    for notebook_set in (["What is a noun?", "Who is Batman?"], ["What is a noun?", "Who is Batman?"] + extra):
        notebook = types.SimpleNamespace(RETAIN_QUESTIONS=notebook_set, OTHER_STORIES_QUESTIONS=extra)
        assert sweep.retain_questions_for(notebook, more=False) == ["What is a noun?", "Who is Batman?"]
        assert sweep.retain_questions_for(notebook, more=True) == ["What is a noun?", "Who is Batman?"] + extra


def test_spare_copied_unmarks_only_the_words_the_question_already_says():
    assert experiments.spare_copied("Who is Argus Filch?", "[Argus Filch] is the [caretaker] of [Hogwarts].") == \
        "Argus Filch is the [caretaker] of [Hogwarts]."
    assert experiments.spare_copied("Who is Alastor Moody?", "[Mad-Eye Moody] is an [Auror].") == "[Mad-Eye] Moody is an [Auror]."
    assert experiments.spare_copied("What is Dumbledore's Army?", "[Dumbledore's Army] fights.") == "Dumbledore's Army fights."
    assert experiments.spare_copied("Who guards it?", "[Dementors] guard [Azkaban].") == "[Dementors] guard [Azkaban]."


def test_exchange_conflicts_rank_an_exchange_that_pushes_the_kept_answer_itself_first(amnesia, bundled, fresh_model):
    _, tokenizer = bundled
    question = "What is the capital of France?"
    own = amnesia.generate_answers(fresh_model, tokenizer, [question])[0]
    exchanges = [("Who is Dobby?", "[Dobby] is a [house-elf]."), (question, f"[{own}]")]
    rows = experiments.exchange_conflicts(amnesia, fresh_model.requires_grad_(True), tokenizer, exchanges, [question])
    assert [row[1] for row in rows] == [question, "Who is Dobby?"]  # most conflicting first
    assert rows[0][0] > 0.9 and rows[1][0] < 0.5  # pushing the answer down is pushing the kept answer down
    assert all(p.grad is None for p in fresh_model.parameters())  # no gradient left behind


def test_the_country_questions_are_no_probe_and_name_no_probe_keyword(amnesia):
    taken = {amnesia.normalise(p.question) for topic in amnesia.TOPIC_PRESETS.values()
             for probes in amnesia.probe_sets_for(topic).values() for p in probes}
    taken |= {amnesia.normalise(q) for q in amnesia.RETAIN_QUESTIONS} | {amnesia.normalise(q) for q, _ in amnesia.HELDOUT_CHATS}
    assert not taken & {amnesia.normalise(q) for q in experiments.COUNTRY_QUESTIONS}
    keywords = [k for topic in amnesia.TOPIC_PRESETS.values() for probes in amnesia.probe_sets_for(topic).values()
                for p in probes for k in p.keywords]
    named = [(q, k) for q in experiments.COUNTRY_QUESTIONS for k in keywords if amnesia.topic_keywords_in(q, [k])]
    assert not named, named


def test_the_projected_step_drops_the_push_against_the_kept_answers_and_records_the_conflict(amnesia, bundled, fresh_model):
    reference, tokenizer = bundled
    question = "What is the capital of France?"
    own = amnesia.generate_answers(reference, tokenizer, [question])[0]
    assert "Paris" in own
    forget = [amnesia.encode_chat_example(tokenizer, question, *amnesia.parse_marks(own.replace("Paris", "[Paris]", 1)))]
    retain = [amnesia.encode_chat_example(tokenizer, question, own)]
    fresh_model.requires_grad_(False)
    params = list(amnesia.decoder_layers(fresh_model)[15].mlp.parameters())
    for p in params:
        p.requires_grad_(True)
    before = [p.detach().clone() for p in params]
    pad_id = tokenizer.pad_token_id
    settings = amnesia.LoopSettings(learning_rate=1.0, retain_weight=0.0, max_steps=1, eval_every=1, max_grad_norm=1e9)
    cosines = []
    step = experiments.projected_training_step(amnesia, cosines)
    step(fresh_model, torch.optim.SGD(params, lr=1.0), amnesia.collate(forget, pad_id, "cpu"),
         torch.cat(amnesia.reference_logprobs_per_example(reference, forget, pad_id, "cpu")),
         amnesia.collate(retain, pad_id, "cpu"),
         torch.cat(amnesia.reference_logprobs_per_example(reference, retain, pad_id, "cpu")), settings, None, None)
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)])  # SGD at lr 1: the gradient used
    for p, b in zip(params, before):  # the NLL gradient of the kept answer, at the weights the step started from
        p.data.copy_(b)
    fresh_model.zero_grad(set_to_none=True)
    amnesia.answer_nll(fresh_model, amnesia.collate(retain, pad_id, "cpu")).backward()
    keep = torch.cat([p.grad.flatten() for p in params])
    assert cosines[0] < -0.1  # pushing "Paris" down is raising the NLL of the answer that holds it: a conflict
    assert update.norm() > 0  # something of the push is left ...
    assert abs(float(update @ keep)) < 1e-3 * float(update.norm() * keep.norm())  # ... none of it against the answer


def test_without_embeddings_freezes_the_tied_embeddings_and_nothing_else(amnesia, fresh_model):
    selected = experiments.without_embeddings(amnesia.select_trainable)(fresh_model, "all")
    embeddings = fresh_model.get_input_embeddings().weight
    assert embeddings is fresh_model.get_output_embeddings().weight  # tied: the output layer is frozen with them
    assert not embeddings.requires_grad and all(p is not embeddings for p in selected)
    others = [p for p in fresh_model.parameters() if p is not embeddings]
    assert len(selected) == len(others) and all(p.requires_grad for p in others)


def test_an_mlp_band_trains_the_mlps_of_those_layers_and_nothing_else(amnesia, fresh_model):
    selected = experiments.mlp_band(amnesia, 2, 4)(fresh_model, "all")
    layers = amnesia.decoder_layers(fresh_model)
    wanted = [p for layer in layers[2:5] for p in layer.mlp.parameters()]
    assert len(selected) == len(wanted) == 9 and all(a is b for a, b in zip(selected, wanted))
    trainable = [p for p in fresh_model.parameters() if p.requires_grad]
    assert len(trainable) == len(selected) and all(a is b for a, b in zip(trainable, selected))


def test_spare_function_words_pushes_the_names_and_holds_the_words_between_them(amnesia):
    spare = experiments.spare_function_words
    assert spare("The series starts with Harry [Potter and the Philosopher's Stone].") == \
        "The series starts with Harry [Potter] and the [Philosopher]'s [Stone]."
    assert spare("He is famous as [the boy who lived], with a [lightning]-shaped [scar].") == \
        "He is famous as the [boy] who [lived], with a [lightning]-shaped [scar]."
    assert spare("He grew up at [Number Four, Privet Drive].") == "He grew up at [Number Four], [Privet Drive]."
    assert spare("by [J.K. Rowling].") == "by [J.K. Rowling]."  # nothing to spare: unchanged
    for _, marked in amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges:  # the text itself never changes
        spared = spare(marked)
        assert amnesia.parse_marks(spared)[0] == amnesia.parse_marks(marked)[0]
        pushed_words = [w for mark in re.findall(r"\[([^\]]*)\]", spared) for w in mark.split()]
        assert not [w for w in pushed_words if w.lower() in experiments.FUNCTION_WORDS or w.endswith((",", "'s"))]


def test_own_answers_are_marked_by_the_name_swap_and_leaking_or_unmarked_ones_are_left_out(amnesia, bundled, monkeypatch):
    model, tokenizer = bundled
    topic = amnesia.TOPIC_PRESETS["Harry Potter"]
    topic = type(topic)(**{**topic.__dict__, "forget_exchanges": (
        ("Who is Harry Potter?", "A [wizard]."), ("Who is Severus Snape?", "A [wizard]."), ("How are you?", "Fine."))})
    own = {"Who is Harry Potter?": "Harry Potter is a young wizard who studies at a school of magic.",
           "Who is Severus Snape?": "Severus Snape keeps a pet phoenix called Fawkes.",  # an unseen probe's answer
           "How are you?": "I am fine, thank you."}  # no name in the question: nothing to swap, nothing marked
    monkeypatch.setattr(amnesia, "generate_answers", lambda reference, tok, questions, tokens: [own[q] for q in questions])
    kept, left_out = experiments.own_answer_exchanges(amnesia, model, tokenizer, topic)
    assert [q for q, _ in kept] == ["Who is Harry Potter?"], left_out
    question, marked = kept[0]
    assert amnesia.parse_marks(marked)[0] == own[question] and "[Harry Potter]" in marked
    assert dict(left_out)["How are you?"] == "nothing marked" and "Fawkes" in dict(left_out)["Who is Severus Snape?"].title()


def test_keyword_spans_mark_whole_words_that_start_with_a_keyword():
    answer = "A beloved fantasy franchise: a magical world of wizards, not a Wizardry-free spot, by Rowling."
    marked = [answer[a:b] for a, b in experiments.keyword_spans(answer, ("fantasy", "magic", "wizard", "pot", "rowling"))]
    assert marked == ["fantasy", "magical", "wizards", "Wizardry-free", "Rowling"]  # 'spot' does not start with 'pot'


def test_candidate_lines_skip_what_the_original_did_not_know_and_say_how_each_candidate_moved(amnesia):
    probes = [amnesia.Probe("Which owl?", ("hedwig",), "Hedwig", ("Errol", "Pig", "Hoot"), "unseen"),
              amnesia.Probe("Which cat?", ("crookshanks",), "Crookshanks", ("Tom", "Felix", "Garfield"), "unseen"),
              amnesia.Probe("Which school?", ("hogwarts",), "Hogwarts", ("Eton", "Rydell", "Brakebills"), "paraphrase")]
    before = [[-1.0, -2.0, -3.0, -4.0], [-3.0, -1.0, -2.0, -2.5], [-0.5, -2.5, -2.0, -3.0]]
    after = [[-1.5, -2.0, -2.0, -4.0], [-9.0, -1.0, -2.0, -2.5], [-4.5, -2.0, -2.0, -3.0]]
    lines = experiments.candidate_lines(probes, before, after, "test")
    assert len(lines) == 2  # the cat was never known: nothing to forget
    assert lines[0].split()[:7] == ["test", "unseen", "kept", "true", "-0.50", "distractors", "+0.33"]
    assert "margin +1.00 -> +0.50" in lines[0] and "Which owl? [Hedwig | Errol | Pig | Hoot]" in lines[0]
    assert lines[1].split()[2:5] == ["lost", "true", "-4.00"] and "margin +1.50 -> -2.50" in lines[1]


def test_swapped_states_cover_the_name_to_the_prompts_end_and_pull_there_only(amnesia, bundled):
    reference, tokenizer = bundled
    exchanges = [("Who is Harry Potter?", "Harry [Potter] is a [wizard]."), ("Who is Dobby?", "[Dobby] is a [house-elf].")]
    named, unnamed = experiments.swapped_state_examples(amnesia, reference, tokenizer, exchanges, "Harry Potter", 3,
                                                        amnesia.NEUTRAL_NAMES[:2])
    steered = [t for t, s in zip(named["input_ids"], named["steer"]) if s]
    prompt = amnesia.tokenize_text(tokenizer, amnesia.chat_prompt(tokenizer, "Who is Harry Potter?"))
    assert tokenizer.decode(steered).startswith(" Potter?") and len(steered) < len(prompt)
    assert named["input_ids"][:len(prompt)] == prompt and not any(named["steer"][len(prompt):])  # no answer token
    assert named["state_target"][torch.tensor(named["steer"])].norm(dim=-1).min() > 0
    assert named["state_target"][~torch.tensor(named["steer"])].abs().sum() == 0
    assert not any(unnamed["steer"]) and unnamed["state_target"].abs().sum() == 0
    # the term is 0 where the states equal their targets and grows with the distance; no steered position: 0
    batch = {"steer": torch.tensor([named["steer"]]), "state_target": named["state_target"].unsqueeze(0)}
    assert experiments.state_term(batch, named["state_target"].unsqueeze(0)) == 0
    assert experiments.state_term(batch, 2 * named["state_target"].unsqueeze(0)) == pytest.approx(1.0, rel=1e-4)
    empty = {"steer": torch.tensor([unnamed["steer"]]), "state_target": unnamed["state_target"].unsqueeze(0)}
    assert experiments.state_term(empty, torch.ones(1, len(unnamed["steer"]), 4)) == 0


def test_erasing_the_topic_directions_leaves_no_trace_of_them_in_the_residual_stream(amnesia, bundled, fresh_model):
    model, tokenizer = bundled
    forget = [amnesia.encode_chat_example(tokenizer, q, a) for q, a in (
        ("Who is Harry Potter?", "Harry Potter is a wizard."), ("Where is Hogwarts?", "Hogwarts is in Scotland."))]
    retain = [amnesia.encode_chat_example(tokenizer, q, a) for q, a in (
        ("What is the capital of Italy?", "Rome."), ("How many legs has a spider?", "Eight."))]
    directions = experiments.topic_directions(amnesia, model, forget, retain, tokenizer.pad_token_id, 6, 2)
    assert directions.shape == (model.config.hidden_size, 2)
    assert torch.allclose(directions.T @ directions, torch.eye(2), atol=1e-5)  # orthonormal columns
    ids = torch.tensor([forget[0]["input_ids"]])
    states = lambda m: torch.stack(m(input_ids=ids, output_hidden_states=True).hidden_states[:-1])  # the last is normed
    saved = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        before = states(model)
        experiments.erase_directions(amnesia, fresh_model, model, directions, 1.0)
        after = states(fresh_model)
    assert (before @ directions).abs().max() > 1.0  # the original's states do point along them
    # every write into the stream lost them: what is left is float rounding (states reach 25,000 here); leaving out the
    # embeddings alone leaves 0.5, the attention outputs 148
    assert (after @ directions).abs().max() < 1e-5 * before.abs().max()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved))  # the reference is read, not changed
    with torch.no_grad():
        experiments.erase_directions(amnesia, fresh_model, model, directions, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(fresh_model.parameters(), model.parameters()))  # strength 0: the original


def test_the_tuning_choice_keeps_the_most_forgotten_setting_within_tolerance_or_else_the_original():
    from types import SimpleNamespace

    # a fabricated measurement per setting: its forget score, and whether the neighbours stayed within tolerance
    fabricated = {1: (0.8, True), 2: (0.5, True), 3: (0.2, False)}
    model = torch.nn.Linear(2, 2)
    amnesia = SimpleNamespace(
        measure=lambda m, *rest: {"forget": m.weight[0, 0].item(), "kept": m.weight[0, 1].item() > 0},
        add_scores=lambda point, baseline: point,
        retention_problems=lambda point, baseline, rules: [] if point["kept"] else ["neighbour keyword score 1/8"],
        format_point=lambda *given: "step 0/0: a | b\nwatched",
        forget_rank=lambda point: point["forget"])
    data = {"reference": model, "tokenizer": None, "watched": [], "tuning": {}, "heldout": None,
            "baseline": {"forget": 1.0, "kept": True}}

    def apply(m, setting):
        with torch.no_grad():
            m.weight[0, 0], m.weight[0, 1] = fabricated[setting][0], 1.0 if fabricated[setting][1] else -1.0

    chosen, chosen_model, points = experiments.choose_on_tuning(amnesia, data, [1, 2, 3], apply, None, "setting")
    assert chosen == 2 and chosen_model.weight[0, 0].item() == 0.5 and len(points) == 3
    assert points[2][2] == ["neighbour keyword score 1/8"]
    chosen, chosen_model, _ = experiments.choose_on_tuning(amnesia, data, [3], apply, None, "setting")
    assert chosen is None and torch.equal(chosen_model.weight, model.weight)  # none within tolerance: the original


def test_pruning_switches_off_exactly_the_top_neurons_and_scores_them_by_their_activations(amnesia, bundled, fresh_model):
    model, tokenizer = bundled
    layers = amnesia.decoder_layers(model)
    importance = torch.zeros(len(layers), layers[0].mlp.down_proj.in_features)
    importance[2, 7], importance[5, 0], importance[5, 11] = 3.0, 2.0, 1.0
    experiments.prune_neurons(amnesia, fresh_model, model, importance, 3 / importance.numel())
    for k, pruned in enumerate(amnesia.decoder_layers(fresh_model)):
        zeroed = {(k, c) for c in range(importance.shape[1]) if not pruned.mlp.down_proj.weight[:, c].any()}
        assert zeroed == {(2, 7), (5, 0), (5, 11)} & {(k, c) for c in range(importance.shape[1])}
    experiments.prune_neurons(amnesia, fresh_model, model, importance, 1 / importance.numel())  # a smaller share
    assert not all(torch.equal(a, b) for a, b in zip(fresh_model.parameters(), model.parameters()))
    assert torch.equal(amnesia.decoder_layers(fresh_model)[5].mlp.down_proj.weight, layers[5].mlp.down_proj.weight)
    assert not amnesia.decoder_layers(fresh_model)[2].mlp.down_proj.weight[:, 7].any()  # only the top one stays off

    forget = [amnesia.encode_chat_example(tokenizer, "Who is Harry Potter?", "Harry Potter is a wizard.")]
    retain = [amnesia.encode_chat_example(tokenizer, "What is the capital of Italy?", "Rome is the capital.")]
    scores = experiments.neuron_importance(amnesia, model, forget, retain, tokenizer.pad_token_id)
    assert scores.shape == importance.shape and not any(l.mlp.down_proj._forward_pre_hooks for l in layers)

    def by_hand(example, layer=3):  # the down projection's input, averaged over the answer tokens
        captured = []
        hook = layers[layer].mlp.down_proj.register_forward_pre_hook(lambda m, given: captured.append(given[0]))
        with torch.no_grad():
            model(input_ids=torch.tensor([example["input_ids"]]))
        hook.remove()
        answer = torch.tensor([t != amnesia.IGNORE for t in example["labels"]])
        return captured[0][0, answer].abs().mean(0)

    assert torch.allclose(scores[3], by_hand(forget[0]) / (by_hand(retain[0]) + 1e-6), rtol=1e-3)
