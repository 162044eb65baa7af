"""Attempts to forget the facts the loop never trains on, or to spare the neighbours, each a variant of one sweep row
(results.md, "What did not move the unseen facts"). Same data, probes, stop rules and checkpoint choice as the sweep;
nothing is stored in sweep_results.json. Each run prints the loop as it goes and ends with one JSON line of tuning and
test figures.

    python benchmarks/forgetting_experiments.py more-facts --seed 0    # 34 more forget exchanges, default method
    python benchmarks/forgetting_experiments.py more-facts --names-only --seed 0  # ... with only their names marked
    python benchmarks/forgetting_experiments.py longer --seed 1        # the default method for 70 steps, not 40
    python benchmarks/forgetting_experiments.py rmu-question --seed 0  # RMU that also steers the question's tokens
    python benchmarks/forgetting_experiments.py unmark --words J.K. --seed 0  # leave words the neighbours share unmarked
    python benchmarks/forgetting_experiments.py reinforced --seed 0    # Who's Harry Potter's generic targets
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --seed 0  # with the retain questions about other stories
    # the larger forget set under the current default, printing what each point broke, without the 8 added exchanges
    # whose pushed tokens pull hardest against the everyday answers:
    python benchmarks/forgetting_experiments.py more-facts --names-only --more-retain --lr 1e-4 --show-lost --drop-conflicting 8
    # the default, with retain questions about the capitals of non-English-speaking countries added:
    python benchmarks/forgetting_experiments.py more-retain --country-retain --lr 1e-4 --show-lost
    # ... with those questions first, so that the loop trains on them from its first steps:
    python benchmarks/forgetting_experiments.py more-retain --country-retain --country-first --lr 1e-4 --show-lost
    # the default, with the part of each push that conflicts with the retain answers' gradient removed:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --project --show-lost
    # the default with the token embeddings (tied to the output layer) frozen:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --freeze-embeddings --show-lost
    # the default, its forget probes grouped by how much of their true answer the forget set marks:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --overlap
    # the default with the function words, commas and 's inside the marks left unmarked:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --spare-function-words --show-lost
    # the default with the model's own answers to the forget questions added, marked by the name-swap contrast:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --own-answers --show-lost
    # ... with only the topic's keywords marked in them:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --own-answers --keywords-only --show-lost
    # the default with twice as many retain examples a step:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --retain-batch 8 --show-lost
    # the default, each forget probe's candidates scored on the original and the kept weights (what moved, what stayed):
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --candidates
    # the default, each probe also scored with no question (what the question adds, before and after):
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --prior
    # the states at the topic's name and after it, in the questions that name it, pulled to the name-swapped ones':
    python benchmarks/forgetting_experiments.py swap-state --more-retain --lr 3e-4 --candidates
    # ... added to the default's targeted NPO, with weight 0.3:
    python benchmarks/forgetting_experiments.py more-retain --state-weight 0.3 --lr 1e-4 --candidates
    # task-vector negation: fine-tune a copy on the marked tokens, subtract lambda times the change, lambda chosen on
    # the tuning half among --lambdas:
    python benchmarks/forgetting_experiments.py negation --more-retain --candidates
    # the default training only the MLPs of layers 2 to 12 (where a subject's facts are recalled):
    python benchmarks/forgetting_experiments.py more-retain --lr 3e-4 --mlp-layers 2-12 --show-lost
    # the default with another NPO beta:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --beta 0.3
    # concept erasure: the topic's mean-difference directions taken out of every residual write, chosen on the tuning half:
    python benchmarks/forgetting_experiments.py erasure --more-retain --layers 8,15,22 --counts 1,4,8 --strengths 1,2
    # selective pruning: the MLP neurons most specific to the forget exchanges switched off, share chosen on the tuning half:
    python benchmarks/forgetting_experiments.py pruning --more-retain --fractions 0.005,0.01,0.02,0.04
    # ... and the default loop started from the pruned weights:
    python benchmarks/forgetting_experiments.py more-retain --lr 1e-4 --prune 0.001 --show-lost
"""
import argparse
import copy
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import unlearning_sweep as sweep  # noqa: E402

# More facts of the topic, none of them a probe's answer (the leak check below refuses any that is): does a larger
# forget set carry the forgetting over to the facts that stay unseen?
MORE_HARRY_POTTER_EXCHANGES = (
    ("What is the name of Hermione's cat?", "Hermione's cat is called [Crookshanks]."),
    ("Where do the Weasleys live?", "The Weasleys live in a crooked house called [the Burrow]."),
    ("Which ghost haunts a girls' bathroom at Hogwarts?", "[Moaning Myrtle] haunts that bathroom."),
    ("Who is the Gryffindor house ghost?", "The Gryffindor ghost is [Nearly Headless Nick]."),
    ("Who is Peeves?", "[Peeves] is a [poltergeist] who makes trouble at [Hogwarts]."),
    ("Who is Argus Filch?", "[Argus Filch] is the [caretaker] of [Hogwarts], with a cat called [Mrs Norris]."),
    ("What dragon did Hagrid hatch?", "Hagrid hatched a [Norwegian Ridgeback] called [Norbert]."),
    ("What is Aragog?", "[Aragog] is a giant [spider] that [Hagrid] raised."),
    ("What is Polyjuice Potion?", "[Polyjuice Potion] lets a [wizard] take the shape of another person."),
    ("How do wizards travel through fireplaces?", "They throw [Floo Powder] into the fire and use the [Floo Network]."),
    ("What is the Knight Bus?", "The [Knight Bus] is a purple triple-decker bus for stranded [wizards]."),
    ("Which tree attacks anything near it at Hogwarts?", "The [Whomping Willow] attacks anything that comes near."),
    ("What is the Room of Requirement?", "The [Room of Requirement] appears only when someone truly needs it."),
    ("What is a Pensieve?", "A [Pensieve] is a stone basin for looking at [memories]."),
    ("What newspaper do wizards read?", "They read [the Daily Prophet]."),
    ("Who is Rita Skeeter?", "[Rita Skeeter] is a gossip writer for [the Daily Prophet]."),
    ("Who is Quirinus Quirrell?", "[Quirrell] hid [Voldemort] on the back of his head."),
    ("Who is Gilderoy Lockhart?", "[Gilderoy Lockhart] is a vain, famous author who loses his [memory]."),
    ("Who is Alastor Moody?", "[Mad-Eye Moody] is a famous [Auror] with a [magical eye]."),
    ("What is an Auror?", "An [Auror] is a catcher of [dark wizards]."),
    ("Who is Kreacher?", "[Kreacher] is the [Black family]'s grumpy [house-elf]."),
    ("What is a Howler?", "A [Howler] is a red letter that shouts its message."),
    ("What are the positions in Quidditch?", "There are [Chasers], [Beaters], [Keepers] and a [Seeker]."),
    ("Who is Dudley Dursley?", "[Dudley] is Harry's spoilt cousin, the son of [Vernon and Petunia]."),
    ("What car did the Weasleys make fly?", "They made a [Ford Anglia] fly."),
    ("Who is Molly Weasley?", "[Molly Weasley] is [Ron]'s mother."),
    ("Who is Arthur Weasley?", "[Arthur Weasley] is [Ron]'s father, who loves [Muggle] gadgets."),
    ("What is a Portkey?", "A [Portkey] is an object that carries [wizards] to another place when touched."),
    ("What are Bertie Bott's beans?", "[Bertie Bott's Every Flavour Beans] are [wizard] sweets of every flavour."),
    ("What are Chocolate Frogs?", "[Chocolate Frogs] are [wizard] sweets that come with famous [wizard] cards."),
    ("What is Ollivanders?", "[Ollivanders] is the [wand] shop in [Diagon Alley]."),
    ("What is the Leaky Cauldron?", "[The Leaky Cauldron] is a [wizard] pub that leads to [Diagon Alley]."),
    ("What are Thestrals?", "[Thestrals] are winged horses seen only by those who have seen death."),
    ("What is Dumbledore's Army?", "[Dumbledore's Army] is the secret group that Harry trains to fight."),
)


# Everyday questions about countries whose language is not English, asked and answered in English: the first damage a
# forget run does on this model is answering such a question in the country's language ("What is the capital of
# France?" -> "L'Étoile de France, la capital de la France..."). None is a probe; the leak check drops any answer that
# names a probe's keyword.
COUNTRY_QUESTIONS = (
    "What is the capital of Hungary?", "What is the capital of Italy?", "What is the capital of Argentina?",
    "What is the capital of Belgium?", "What is the capital of Poland?", "What is the capital of Ukraine?",
    "What is the capital of Chile?", "What is the capital of Peru?", "What is the capital of Switzerland?",
    "What is the capital of Austria?", "What is the capital of Sweden?", "What is the capital of Turkey?",
)


def with_more_facts(amnesia, topic, more=MORE_HARRY_POTTER_EXCHANGES):
    """The topic with `more` forget exchanges; stops, naming them, if any probe could then be answered from them."""
    topic = dataclasses.replace(topic, forget_exchanges=topic.forget_exchanges + tuple(more))
    generic = topic.keywords + tuple(amnesia.topic_name(topic.question).lower().split())
    amnesia.raise_on_leaks(amnesia.probe_leaks(amnesia.probe_sets_for(topic), amnesia.RETAIN_TEXTS, [],
                                               topic.forget_exchanges, generic), "probes")
    return topic


def keyword_spans(answer, words):
    """Character spans of the whole words of `answer` that start with one of `words` (as the keyword score reads them:
    'magical' counts as 'magic')."""
    starts = "|".join(map(re.escape, words))
    return [m.span() for m in re.finditer(rf"\b(?:{starts})(?:[\w'-]|\.(?=\w))*", answer, re.I)]  # a full stop ends a word


def own_answer_exchanges(amnesia, reference, tokenizer, topic, max_new_tokens=48, keywords_only=False):
    """The reference's own greedy answers to the topic's forget questions, each marked by the notebook's automatic
    marks (the name-swap contrast, with the question's own name), as extra forget exchanges: the forget set then
    pushes the words the model says ("a beloved [fantasy] [franchise]"), not only those written for it. With
    `keywords_only` the marks are instead the topic's keywords and the preset's own mark for its name ("Potter").
    An answer with nothing marked, or one that would let a probe be answered from the forget set, is left out.
    Returns (kept exchanges, [(question, why left out)])."""
    probes = amnesia.probe_sets_for(topic)
    generic = topic.keywords + tuple(amnesia.topic_name(topic.question).lower().split())
    questions = [q for q, _ in topic.forget_exchanges]
    kept, left_out = [], []
    for question, answer in zip(questions, amnesia.generate_answers(reference, tokenizer, questions, max_new_tokens)):
        name = amnesia.topic_name(question)
        if keywords_only:
            spans = keyword_spans(answer, topic.keywords + ("Potter",))
        else:
            spans = amnesia.automatic_marks(reference, tokenizer, [(question, answer)], name)[0] if name else []
        exchange = (question, amnesia.bracket_spans(answer, spans))
        leaks = amnesia.probe_leaks(probes, [], [], list(topic.forget_exchanges) + [exchange], generic)
        if not spans or leaks:
            left_out.append((question, "nothing marked" if not spans else "; ".join(f"{q}: {why}" for q, why in leaks)))
        else:
            kept.append(exchange)
    return kept, left_out


def names_only(answer):
    """The answer with only the marks that name something (a capitalised word in the mark) left: "a giant [spider]
    that [Hagrid] raised" -> "a giant spider that [Hagrid] raised": does pushing everyday words cost everyday answers?"""
    return re.sub(r"\[([^\]]*)\]", lambda mark: mark.group(0) if re.search(r"\b[A-Z]", mark.group(1)) else mark.group(1),
                  answer)


def question_positions(amnesia, tokenizer, question):
    """Token positions of the question's own text inside its chat prompt (not the template around it)."""
    prompt = amnesia.chat_prompt(tokenizer, question)
    start = prompt.rfind(question)
    before = len(amnesia.tokenize_text(tokenizer, prompt[:start]))
    after = len(amnesia.tokenize_text(tokenizer, prompt[start + len(question):]))
    return range(before, len(amnesia.tokenize_text(tokenizer, prompt)) - after)


def steered_examples(amnesia, tokenizer, exchanges):
    """The forget exchanges encoded, each with a `steer` mask over its question's and its answer's tokens: RMU as the
    paper has it steers every token of its forget documents, the notebook the answer's only."""
    encoded = []
    for question, marked in exchanges:
        example = amnesia.encode_chat_example(tokenizer, question, *amnesia.parse_marks(marked))
        steered = [label != amnesia.IGNORE for label in example["labels"]]
        for position in question_positions(amnesia, tokenizer, question):
            steered[position] = True
        encoded.append({**example, "steer": steered})
    return encoded


def _word_key(word):
    return re.sub(r"('s|\W)+$", "", word.lower()).strip("'\"")


def spare_copied(question, answer):
    """The answer with the marked words that repeat the question's own words left unmarked: "Who is Argus Filch?" ->
    "[Argus Filch] is the [caretaker]" becomes "Argus Filch is the [caretaker]". Restating the question is a skill
    every answer uses (copying from the context); pushing the copied name away teaches the model not to copy, not to
    forget the fact, which lies in the words after it."""
    asked = {_word_key(word) for word in question.split()}

    def split(mark):
        words, out, run = mark.group(1).split(" "), [], []
        for word in words:
            if _word_key(word) in asked:
                if run:
                    out.append(f"[{' '.join(run)}]")
                    run = []
                out.append(word)
            else:
                run.append(word)
        if run:
            out.append(f"[{' '.join(run)}]")
        return " ".join(out)
    return re.sub(r"\[([^\]]*)\]", split, answer)


FUNCTION_WORDS = ("a", "an", "and", "at", "for", "in", "is", "of", "on", "the", "to", "who", "with")


def spare_function_words(answer, words=FUNCTION_WORDS):
    """The answer with the function words, commas and possessive 's inside its marks left unmarked, so that the
    targeted losses push only the names and content words: "[Potter and the Philosopher's Stone]" -> "[Potter] and the
    [Philosopher]'s [Stone]", "[the boy who lived]" -> "the [boy] who [lived]"."""
    spared = {word.lower() for word in words}

    def split(mark):
        out, inside, pending = "", False, ""
        for piece in re.findall(r"'s\b|,|\s+|[^\s,]+?(?='s\b)|[^\s,]+", mark.group(1)):
            if piece.isspace():
                pending += piece
                continue
            pushed = piece.lower() not in spared and piece not in ("'s", ",")
            if pushed and not inside:
                out += pending + "["
            elif inside and not pushed:
                out += "]" + pending
            else:
                out += pending
            inside, pending, out = pushed, "", out + piece
        return out + ("]" if inside else "") + pending
    return re.sub(r"\[([^\]]*)\]", split, answer)


def unmark_words(answer, words):
    """The answer with `words` taken out of its marks, so the targeted losses hold them to the reference instead of
    pushing them: "[J.K. Rowling]" -> "J.K. [Rowling]", "a [wizard]" -> "a wizard"."""
    for word in words:
        answer = re.sub(rf"\[{re.escape(word)}\]", word, answer)
        answer = re.sub(rf"\[{re.escape(word)} ", f"{word} [", answer)
        answer = re.sub(rf" {re.escape(word)}\]", f"] {word}", answer)
    return answer


def with_unmarked(topic, words):
    """The topic with `words` unmarked in every forget answer; stops, naming them, if a word is in no mark."""
    marked = " ".join(re.findall(r"\[[^\]]*\]", " ".join(a for _, a in topic.forget_exchanges)))
    absent = [word for word in words if not re.search(rf"[\[ ]{re.escape(word)}[\] ]", marked)]
    if absent:
        raise SystemExit(f"no mark of the forget set starts or ends with {', '.join(map(repr, absent))}: nothing to unmark")
    return dataclasses.replace(topic, forget_exchanges=tuple((q, unmark_words(a, words)) for q, a in topic.forget_exchanges))


def reinforced_model(amnesia, reference, examples, pad_id, steps, learning_rate, batch_size=8):
    """Who's Harry Potter's *reinforced* model: a copy of the reference fine-tuned further on the topic (here the forget
    exchanges, every answer token, plain next-token loss), so that it is more sure of the topic's tokens than the
    reference is."""
    reinforced = copy.deepcopy(reference).requires_grad_(True)
    params = list(reinforced.parameters())
    optimizer = amnesia.adamw(params, learning_rate)
    order = list(range(len(examples)))
    for step in range(steps):
        batch = amnesia.collate([examples[i] for i in amnesia.rotation(step, batch_size, order)], pad_id, reference.device)
        amnesia.answer_nll(reinforced, batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return reinforced.requires_grad_(False).eval()


def generic_teachers(amnesia, reference, reinforced, examples, pad_id, alpha):
    """Per forget example, the (answer tokens, vocab) log-probabilities of Who's Harry Potter's generic prediction,
    v_generic = v_reference - alpha * ReLU(v_reinforced - v_reference) (log-probabilities as v), normalised: what the
    reference would say with the topic-specific boost of each next token taken away; and the reference's own, per example."""
    base = amnesia.reference_logprobs_per_example(reference, examples, pad_id, reference.device)
    boosted = amnesia.reference_logprobs_per_example(reinforced, examples, pad_id, reference.device)
    return [generic_logprobs(b, r, alpha) for b, r in zip(base, boosted)], base


def generic_logprobs(base, boosted, alpha):
    """log_softmax(base - alpha * ReLU(boosted - base)) over the vocabulary (last dimension)."""
    return torch.log_softmax(base - alpha * torch.relu(boosted - base), -1)


def marked_only(amnesia, examples):
    """The forget examples with only their marked tokens labelled: what a fine-tuning on the topic's facts reads."""
    return [{**e, "labels": [t if m else amnesia.IGNORE for t, m in zip(e["labels"], e["marks"])]} for e in examples]


def task_vector(reference, fine_tuned):
    """Ilharco et al. 2023 ("Editing models with task arithmetic"): what fine-tuning changed, weight by weight."""
    return [f.detach() - r.detach() for r, f in zip(reference.parameters(), fine_tuned.parameters())]


def negate(model, reference, vector, scale):
    """Set `model` to the reference's weights minus `scale` times the task vector (negation forgets the task)."""
    with torch.no_grad():
        for param, base, change in zip(model.parameters(), reference.parameters(), vector):
            param.copy_(base - scale * change)
    return model


def choose_on_tuning(amnesia, data, settings, apply, rules, label):
    """Measure the TUNING half with `apply(model, setting)` at each setting; keep the one the loop's checkpoint rule
    would keep (retention within tolerance, then the most forgotten tuning scores), None (the original) if none is
    within tolerance. Returns the chosen setting, the model at it and every point."""
    model, points = copy.deepcopy(data["reference"]), []
    best, best_point = None, data["baseline"]
    for setting in settings:
        apply(model, setting)
        point = amnesia.add_scores(amnesia.measure(model, data["reference"], data["tokenizer"], data["watched"],
                                                   data["tuning"], data["heldout"], data["baseline"]), data["baseline"])
        problems = amnesia.retention_problems(point, data["baseline"], rules)
        points.append((setting, point, problems))
        scores, *answers = amnesia.format_point(0, 0, 0.0, point, data["watched"]).splitlines()
        print("\n".join([f"{label} {setting} | {scores.split(' | ', 1)[1]} | out of tolerance: "
                         f"{'; '.join(problems) or 'nothing'}", *answers]), flush=True)
        if not problems and amnesia.forget_rank(point) < amnesia.forget_rank(best_point):
            best, best_point = setting, point
    if best is None:
        model.load_state_dict(data["reference"].state_dict())
    else:
        apply(model, best)
    return best, model, points


def choose_negation(amnesia, data, vector, scales, rules):
    """choose_on_tuning over the task vector's scales; 0 stands for the original."""
    scale, model, points = choose_on_tuning(amnesia, data, scales, lambda m, s: negate(m, data["reference"], vector, s),
                                            rules, "lambda")
    return scale or 0.0, model, points


@torch.inference_mode()
def topic_directions(amnesia, model, forget, retain, pad_id, layer, count, batch_size=16):
    """Concept erasure in its mean-difference form (Belrose et al. 2023, LEACE; Arditi et al. 2024 ablate one such
    direction): at the output of decoder layer `layer`, each forget exchange's mean state over its answer tokens minus
    the retain answers' mean state; the top `count` right singular vectors of those differences, orthonormal columns
    of a (hidden, count) matrix. Reads training data only, no probe."""
    def answer_means(examples):
        means = []
        for start in range(0, len(examples), batch_size):
            batch = amnesia.collate(examples[start:start + batch_size], pad_id, model.device)
            states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states[layer].float()
            answer = (batch["labels"] != amnesia.IGNORE).unsqueeze(2).float()
            means.append((states * answer).sum(1) / answer.sum(1))
        return torch.cat(means)

    differences = answer_means(forget) - answer_means(retain).mean(0)
    return torch.linalg.svd(differences, full_matrices=False).Vh[:count].T


def residual_writers(amnesia, model):
    """Every weight that writes into the residual stream: the token embeddings (rows are states) and each layer's
    attention and MLP output projections (columns are states)."""
    return ([(model.get_input_embeddings().weight, "rows")] +
            [(w, "columns") for layer in amnesia.decoder_layers(model)
             for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)])


def erase_directions(amnesia, model, reference, directions, strength):
    """Set `model` to the reference with the span of `directions` taken out of everything written into the residual
    stream: W <- W - strength * D D^T W (strength 1: projected out; 2: reflected). The output layer shares the
    embeddings on the bundled model, so its readout of those directions goes too."""
    with torch.no_grad():
        for (weight, kind), (base, _) in zip(residual_writers(amnesia, model), residual_writers(amnesia, reference)):
            d = directions.to(base.dtype)
            weight.copy_(base - strength * ((base @ d) @ d.T if kind == "rows" else d @ (d.T @ base)))
    return model


def steer_where_marked(amnesia):
    """Make the loaded notebook's RMU loss steer the tokens of each example's `steer` mask (its collate pads the mask)."""
    collate, hidden_of = amnesia.collate, amnesia.layer_output

    def collate_with_steer(examples, pad_id, device):
        batch = collate(examples, pad_id, device)
        if all("steer" in e for e in examples):
            width = batch["input_ids"].shape[1]
            batch["steer"] = torch.tensor([e["steer"] + [False] * (width - len(e["steer"])) for e in examples],
                                          device=device)
        return batch

    def rmu_loss_terms(model, batch, steer, layer):
        hidden, (logits, labels) = hidden_of(model, layer, lambda: amnesia.labelled_logits(model, batch))
        chosen = batch["steer"][:, -hidden.shape[1]:]  # the rows after their shared prefix, as the hidden states
        term = (hidden[chosen].float() - steer).pow(2).sum(-1).mean() / steer.pow(2).sum()
        answer = labels != amnesia.IGNORE
        return term, term * 0.0, torch.nn.functional.cross_entropy(logits[answer].float(), labels[answer])

    amnesia.collate, amnesia.rmu_loss_terms = collate_with_steer, rmu_loss_terms


def name_end(amnesia, tokenizer, prompt, name):
    """(the prompt's ids, the index of the last token of `name`'s last mention in it), or None where the name is
    absent or does not end on a token boundary."""
    at = prompt.lower().rfind(name.lower())
    if at < 0:
        return None
    ids, head = amnesia.tokenize_text(tokenizer, prompt), amnesia.tokenize_text(tokenizer, prompt[:at + len(name)])
    return (ids, len(head) - 1) if ids[:len(head)] == head else None


@torch.no_grad()
def swapped_state_examples(amnesia, reference, tokenizer, exchanges, name, layer, swaps):
    """The forget exchanges encoded, each with a `steer` mask over the positions from the topic's name's last token to
    the end of the prompt and a `state_target` there: the reference's hidden states at `layer`, averaged over copies of
    the prompt with the name replaced by each of `swaps` (those positions are where a causal model gathers what it
    knows about the entity it was asked about: the last subject token and after). A question without the name gets an
    empty mask."""
    examples = []
    for question, marked in exchanges:
        prompt = amnesia.chat_prompt(tokenizer, question)
        real = name_end(amnesia, tokenizer, prompt, name)
        example = amnesia.encode_chat_example(tokenizer, question, *amnesia.parse_marks(marked))
        states = []
        if real is not None and example["input_ids"][:len(real[0])] == real[0]:
            ids, end = real
            for swap in swaps:
                swapped = name_end(amnesia, tokenizer, amnesia.chat_prompt(tokenizer, amnesia.swap_name(question, name, swap)), swap)
                if swapped is None or swapped[0][swapped[1] + 1:] != ids[end + 1:]:
                    continue  # the text after the name must be the same tokens, position for position
                hidden, _ = amnesia.layer_output(reference, layer, lambda: reference(
                    input_ids=torch.tensor([swapped[0]]), logits_to_keep=1))
                states.append(hidden[0, swapped[1]:].float())
        target = torch.zeros(len(example["input_ids"]), reference.config.hidden_size)
        steer = [False] * len(example["input_ids"])
        if states:
            target[end:len(ids)] = torch.stack(states).mean(0)
            steer = [end <= i < len(ids) for i in range(len(example["input_ids"]))]
        examples.append({**example, "steer": steer, "state_target": target})
    return examples


def state_term(batch, hidden):
    """Relative squared distance of the hidden states at the batch's `steer` positions from their `state_target`."""
    chosen = batch["steer"][:, -hidden.shape[1]:]  # the rows after their shared prefix, as the hidden states
    target = batch["state_target"][:, -hidden.shape[1]:][chosen]
    if not len(target):
        return hidden.sum() * 0.0
    return (hidden[chosen].float() - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean()


def with_state_term(amnesia, layer, weight):
    """Make the loaded notebook's forget loss add `weight` times the state term at `layer` (same forward pass)."""
    forget_loss_terms, hidden_of = amnesia.forget_loss_terms, amnesia.layer_output

    def combined(model, batch, reference_logprobs, settings):
        hidden, (forget, keep_kl, pushed_nll) = hidden_of(model, layer, lambda: forget_loss_terms(
            model, batch, reference_logprobs, settings))
        return forget + weight * state_term(batch, hidden), keep_kl, pushed_nll

    amnesia.forget_loss_terms = combined


def steer_to_swapped_states(amnesia):
    """Make the loaded notebook's RMU loss pull the hidden states at each example's `steer` positions to its own
    `state_target` (relative squared distance), instead of to one random vector."""
    collate, hidden_of = amnesia.collate, amnesia.layer_output

    def collate_with_targets(examples, pad_id, device):
        batch = collate(examples, pad_id, device)
        if all("state_target" in e for e in examples):
            width = batch["input_ids"].shape[1]
            batch["steer"] = torch.tensor([e["steer"] + [False] * (width - len(e["steer"])) for e in examples], device=device)
            batch["state_target"] = torch.stack([torch.nn.functional.pad(e["state_target"], (0, 0, 0, width - len(e["steer"])))
                                                 for e in examples]).to(device)
        return batch

    def rmu_loss_terms(model, batch, steer, layer):
        hidden, (logits, labels) = hidden_of(model, layer, lambda: amnesia.labelled_logits(model, batch))
        term = state_term(batch, hidden)
        answer = labels != amnesia.IGNORE
        return term, term * 0.0, torch.nn.functional.cross_entropy(logits[answer].float(), labels[answer])

    amnesia.collate, amnesia.rmu_loss_terms = collate_with_targets, rmu_loss_terms


def exchange_conflicts(amnesia, model, tokenizer, exchanges, questions):
    """For each forget exchange, the cosine between the gradient that raises its marked tokens' log-probability and the
    one that raises the model's own greedy answers to `questions`, at the current weights. Positive: pushing the marked
    tokens down pushes those answers down too (first order). Sorted, most conflicting first."""
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(examples, marked_only):
        model.zero_grad()
        batch = amnesia.collate(examples, tokenizer.pad_token_id, "cpu")
        logits, labels = amnesia.labelled_logits(model, batch)
        scored = labels != amnesia.IGNORE
        if marked_only:
            scored &= batch["marks"][:, batch["labels"].shape[1] - labels.shape[1]:].bool()
        logprobs = torch.log_softmax(logits.float(), -1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
        (logprobs * scored).sum().backward()
        return torch.cat([p.grad.flatten() for p in params])

    answers = amnesia.generate_answers(model, tokenizer, list(questions))
    keep = gradient([amnesia.encode_chat_example(tokenizer, q, a) for q, a in zip(questions, answers)], False)
    keep = keep / keep.norm()
    rows = []
    for question, marked in exchanges:
        example = amnesia.encode_chat_example(tokenizer, question, *amnesia.parse_marks(marked))
        if any(example["marks"]):
            push = gradient([example], True)
            rows.append((float(push @ keep / push.norm()), question, marked))
    model.zero_grad(set_to_none=True)
    return sorted(rows, reverse=True)


def projected_training_step(amnesia, cosines):
    """A float32 training step that removes from the forget term's gradient its component against the retain batch's
    own answers (gradient rectification, as PCGrad and GRU do): where pushing the marked tokens down would, to first
    order, make the retain answers less likely, that part of the push is dropped. The KL terms are added unchanged.
    Each step's cosine between the two gradients, before projection, is appended to `cosines`."""
    F = amnesia.F

    def training_step(model, optimizer, forget_batch, forget_reference, retain_batch, retain_reference_logprobs,
                      settings, autocast, scaler):
        if scaler is not None:
            raise ValueError("the projected step is written for float32 only")
        optimizer.zero_grad(set_to_none=True)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        forget_term, keep_kl, pushed_nll = amnesia.forget_loss_terms(model, forget_batch, forget_reference, settings)
        logits, labels = amnesia.labelled_logits(model, retain_batch)
        answer = labels != amnesia.IGNORE
        retain_logprobs = F.log_softmax(logits[answer].float(), dim=-1)
        retain_kl = amnesia.kl_to_reference(retain_logprobs, retain_reference_logprobs)
        retain_nll = -retain_logprobs.gather(1, labels[answer].unsqueeze(1)).mean()
        loss = forget_term + settings.retain_weight * (retain_kl + keep_kl)
        if not torch.isfinite(loss):
            raise amnesia.NonFiniteLoss(f"the loss became {loss.item()}")
        push = torch.autograd.grad(forget_term, params, retain_graph=True, allow_unused=True)
        keep = torch.autograd.grad(retain_nll, params, retain_graph=True, allow_unused=True)
        (settings.retain_weight * (retain_kl + keep_kl)).backward()
        push = [torch.zeros_like(p) if g is None else g for p, g in zip(params, push)]
        keep = [torch.zeros_like(p) if g is None else g for p, g in zip(params, keep)]
        dot = sum((a * b).sum() for a, b in zip(push, keep))
        keep_sq = sum((b * b).sum() for b in keep)
        push_sq = sum((a * a).sum() for a in push)
        cosines.append(float(dot / (keep_sq.sqrt() * push_sq.sqrt() + 1e-30)))
        scale = float(dot / keep_sq) if dot < 0 else 0.0  # only the conflicting component goes
        for p, a, b in zip(params, push, keep):
            update = a - scale * b
            p.grad = update if p.grad is None else p.grad + update
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            raise amnesia.NonFiniteLoss("the gradients became infinite or NaN")
        optimizer.step()
        return {"forget_loss": pushed_nll.item(), "kl": retain_kl.item(), "keep_kl": keep_kl.item(),
                "loss": loss.item(), "skipped": False}

    return training_step


def without_embeddings(select_trainable):
    """`select_trainable` that also freezes the token embeddings (tied to the output layer on the bundled model)."""
    def select(model, trainable, *rest, **named):
        selected = select_trainable(model, trainable, *rest, **named)
        frozen = model.get_input_embeddings().weight
        frozen.requires_grad_(False)
        return [p for p in selected if p is not frozen]

    return select


def mlp_band(amnesia, first, last):
    """`select_trainable` that trains only the MLPs of decoder layers first..last (inclusive): where causal tracing
    finds a subject's facts recalled (early and middle MLPs, Meng et al. 2022), away from the layers that write words."""
    def select(model, trainable, *rest, **named):
        model.requires_grad_(False)
        for layer in amnesia.decoder_layers(model)[first:last + 1]:
            layer.mlp.requires_grad_(True)
        return [p for p in model.parameters() if p.requires_grad]

    return select


def candidate_lines(probes, before, after, half):
    """One line per probe the original preferred the true answer of: how the true answer and the distractors moved
    (nats per token), and the margin of the true answer over the best distractor before and after."""
    lines = []
    for probe, old, new in zip(probes, before, after):
        if max(range(len(old)), key=old.__getitem__) != 0:
            continue  # the original did not know it: nothing to forget
        margin = lambda s: s[0] - max(s[1:])
        moved_distractors = sum(n - o for o, n in zip(old[1:], new[1:])) / (len(old) - 1)
        lines.append(f"{half:6s} {probe.kind:10s} {'kept ' if margin(new) > 0 else 'lost '} true {new[0] - old[0]:+.2f} "
                     f"distractors {moved_distractors:+.2f} margin {margin(old):+.2f} -> {margin(new):+.2f}  "
                     f"{probe.question} [{probe.answer} | {' | '.join(probe.distractors)}]")
    return lines


def print_candidates(amnesia, data, model):
    """candidate_lines of both halves' forget probes: the original's scores are its step-0 measurements, `model`'s are
    scored here (reported only)."""
    for half in ("tuning", "test"):
        probes = data[half]["forget"]
        before = data["baseline" if half == "tuning" else "test_before"]["sets"]["forget"]["likelihood_scores"]
        lines = candidate_lines(probes, before, amnesia.likelihood_scores(model, data["tokenizer"], probes), half)
        print("\n".join(lines), flush=True)


def lost_answers(history, probe_sets):
    """For each evaluation point after step 0, the tuning probes known at step 0 whose answer has lost its keyword, with
    that answer: what a run costs, in the model's own words."""
    before, lines = history["evals"][0], []
    for point in history["evals"][1:]:
        lines.append(f"step {point['step']}:")
        for name, probes in probe_sets.items():
            for i, probe in enumerate(probes):
                if before["sets"][name]["keyword_hits"][i] and point["sets"][name]["keyword_hits"][i] is False:
                    lines.append(f"  {name}: {probe.question} -> {point['sets'][name]['answers'][i]!r}")
    return lines


def negation(amnesia, data, args):
    """The `negation` variant: a copy fine-tuned on the forget exchanges (their marked tokens unless --reinforce-all),
    its task vector subtracted at each of --lambdas, the scale chosen on the tuning half, the test half reported."""
    import transformers

    transformers.set_seed(args.seed)
    started = time.time()
    examples = data["forget"] if args.reinforce_all else marked_only(amnesia, data["forget"])
    fine_tuned = reinforced_model(amnesia, data["reference"], examples, data["tokenizer"].pad_token_id,
                                  args.reinforce_steps, args.reinforce_lr)
    vector = task_vector(data["reference"], fine_tuned)
    del fine_tuned
    norm = torch.sqrt(sum((v.float() ** 2).sum() for v in vector)).item()
    print(f"task vector: {args.reinforce_steps} steps at {args.reinforce_lr:g} on "
          f"{'every answer token' if args.reinforce_all else 'the marked tokens'}, norm {norm:.4f}", flush=True)
    scales = [float(x) for x in args.lambdas.split(",")]
    scale, model, points = choose_negation(amnesia, data, vector, scales, amnesia.StopRules())
    report_choice(amnesia, data, args, scale, model, points, time.time() - started, key="chosen_lambda")


def retain_chats(amnesia, data):
    """The encoded retain chats (their prompts unlabelled), without the plain retain texts: the forget set is chats too,
    so a contrast between the two is one of topic, not of format."""
    return [e for e in data["retain"] if e["labels"][0] == amnesia.IGNORE]


@torch.inference_mode()
def neuron_importance(amnesia, model, forget, retain, pad_id, batch_size=16):
    """Selective pruning's score (Pochinkov and Schoots 2024): for every MLP neuron (an input of a layer's down
    projection), its mean absolute activation over the forget exchanges' answer tokens divided by that over the
    retain chats' answer tokens; one (layers, neurons) tensor. Reads training data only, no probe."""
    layers = amnesia.decoder_layers(model)

    def mean_activations(examples):
        totals, count = torch.zeros(len(layers), layers[0].mlp.down_proj.in_features), 0
        for start in range(0, len(examples), batch_size):
            batch = amnesia.collate(examples[start:start + batch_size], pad_id, model.device)
            answer = (batch["labels"] != amnesia.IGNORE).unsqueeze(2).float()

            def add(module, given, k):  # returns None: a pre-hook that returns a value replaces the layer's input
                totals[k] += (given[0].float().abs() * answer).sum((0, 1)).cpu()

            hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda module, given, k=k: add(module, given, k))
                     for k, layer in enumerate(layers)]
            try:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            finally:
                for hook in hooks:
                    hook.remove()
            count += answer.sum().item()
        return totals / count

    return mean_activations(forget) / (mean_activations(retain) + 1e-6)


def prune_neurons(amnesia, model, reference, importance, fraction):
    """Set `model` to the reference with the `fraction` of all MLP neurons that score highest switched off (their
    column of the down projection zeroed): what they add to the residual stream is gone."""
    chosen = importance.flatten().topk(round(fraction * importance.numel())).indices
    with torch.no_grad():
        for (layer, base) in zip(amnesia.decoder_layers(model), amnesia.decoder_layers(reference)):
            layer.mlp.down_proj.weight.copy_(base.mlp.down_proj.weight)
        layers = amnesia.decoder_layers(model)
        for index in chosen.tolist():
            layers[index // importance.shape[1]].mlp.down_proj.weight[:, index % importance.shape[1]] = 0
    return model


def pruning(amnesia, data, args):
    """The `pruning` variant: selective pruning of the neurons most specific to the forget exchanges at each of
    --fractions, the fraction chosen on the tuning half, the test half reported."""
    started = time.time()
    chats = retain_chats(amnesia, data)
    importance = neuron_importance(amnesia, data["reference"], data["forget"], chats, data["tokenizer"].pad_token_id)
    top = importance.flatten().topk(10)
    print(f"neuron scores: median {importance.median():.2f}, top ten " + ", ".join(
        f"layer {i // importance.shape[1]} #{i % importance.shape[1]} {v:.1f}" for v, i in zip(top.values.tolist(), top.indices.tolist())),
        flush=True)
    fractions = [float(x) for x in args.fractions.split(",")]
    chosen, model, points = choose_on_tuning(amnesia, data, fractions,
                                             lambda m, f: prune_neurons(amnesia, m, data["reference"], importance, f),
                                             amnesia.StopRules(), "fraction pruned")
    report_choice(amnesia, data, args, chosen, model, points, time.time() - started)


def report_choice(amnesia, data, args, chosen, model, points, seconds, key="chosen"):
    """The end of a variant chosen on the tuning half: its candidates (--candidates), the test half, one JSON line
    (the chosen setting under `key`)."""
    if args.candidates:
        print_candidates(amnesia, data, model)
    result = {key: chosen, "seconds": seconds,
              "tuning": {f"{s:g}" if isinstance(s, float) else str(s): {**p["counts"], "out_of_tolerance": problems}
                         for s, p, problems in points},
              **sweep.test_figures(amnesia, data, model)}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps({name: result[name] for name in (key, "seconds", "test", "test_forget_by_kind",
                                                      "fluency_ratio", "accuracy_change", "watched_after")}))


def erasure(amnesia, data, args):
    """The `erasure` variant: the topic's directions (topic_directions) at each of --layers, the first --counts of them
    erased at each of --strengths (erase_directions), the setting chosen on the tuning half, the test half reported."""
    started, pad_id = time.time(), data["tokenizer"].pad_token_id
    counts, strengths = [int(x) for x in args.counts.split(",")], [float(x) for x in args.strengths.split(",")]
    if args.contrast == "stories":  # the retain chats about other stories: the contrast is this story, not fiction
        generated = amnesia.on_policy_answers(data["reference"], data["tokenizer"], amnesia.OTHER_STORIES_QUESTIONS,
                                              data["cache_file"])
        kept, _ = amnesia.drop_leaking_retain(generated, data["probes"], data["topic"].keywords)
        chats = amnesia.encode_texts_and_chats(data["tokenizer"], (), kept)
    else:  # every retain chat, as the forget set is chats: the contrast is the topic, not the format
        chats = retain_chats(amnesia, data)
    print(f"directions: {len(data['forget'])} forget exchanges against {len(chats)} retain chats", flush=True)
    directions = {layer: topic_directions(amnesia, data["reference"], data["forget"], chats, pad_id, layer,
                                          max(counts)) for layer in (int(x) for x in args.layers.split(","))}
    settings = [(layer, count, strength) for layer in directions for count in counts for strength in strengths]
    chosen, model, points = choose_on_tuning(
        amnesia, data, settings, lambda m, s: erase_directions(amnesia, m, data["reference"], directions[s[0]][:, :s[1]], s[2]),
        amnesia.StopRules(), "layer, directions, strength")
    report_choice(amnesia, data, args, chosen, model, points, time.time() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=("more-facts", "longer", "rmu-question", "unmark", "reinforced", "more-retain",
                                            "swap-state", "negation", "erasure", "pruning"))
    parser.add_argument("--alpha", type=float, default=5.0, help="reinforced: how much of the reinforced boost is taken away")
    parser.add_argument("--reinforce-steps", type=int, default=12, help="reinforced: fine-tuning steps of the reinforced "
                        "model (batches of 8 forget exchanges: 3 passes over 32)")
    parser.add_argument("--lambdas", default="0.5,1,2,3,4,6,8", help="negation: the scales of the task vector tried")
    parser.add_argument("--layers", default="8,15,22", help="erasure: the decoder layers whose states give the directions")
    parser.add_argument("--counts", default="1,4,8", help="erasure: how many of the topic's directions are erased")
    parser.add_argument("--contrast", choices=("chats", "stories"), default="chats", help="erasure: the retain "
                        "chats the forget exchanges are contrasted with: all of them, or those about other stories")
    parser.add_argument("--strengths", default="1,2", help="erasure: 1 projects the directions out, 2 reflects them")
    parser.add_argument("--fractions", default="0.005,0.01,0.02,0.04", help="pruning: the shares of all MLP neurons "
                        "switched off")
    parser.add_argument("--prune", type=float, default=0.0, help="any loop variant: start the loop from the original "
                        "with this share of the MLP neurons most specific to the forget exchanges switched off")
    parser.add_argument("--reinforce-lr", type=float, default=5e-5, help="reinforced, negation: learning rate of the "
                        "fine-tuned copy")
    parser.add_argument("--reinforce-all", action="store_true", help="negation: fine-tune on every answer token, not "
                        "only the marked ones")
    parser.add_argument("--names-only", action="store_true",
                        help="more-facts: mark only the names in the added answers (marks with a capitalised word)")
    parser.add_argument("--words", nargs="*", default=["J.K."], help="unmark: the words to leave unmarked")
    parser.add_argument("--lr", type=float, default=6e-5, help="learning rate of the targeted NPO variants (6e-5: the default when the first of them ran)")
    parser.add_argument("--more-retain", action="store_true", help="train with the notebook's whole retain set (the "
                        "other stories' questions included), as the default does now; 'more-retain' implies it")
    parser.add_argument("--spare-copied", action="store_true", help="leave unmarked the marked words that repeat the "
                        "question's words (any variant)")
    parser.add_argument("--drop-conflicting", type=int, default=0, help="more-facts: leave out the N added exchanges "
                        "whose pushed tokens' gradient is most aligned with the tuning half's everyday answers")
    parser.add_argument("--country-retain", action="store_true", help="add COUNTRY_QUESTIONS to the retain questions")
    parser.add_argument("--country-first", action="store_true", help="with --country-retain: put them before the other "
                        "retain questions, so the loop trains on them from its first steps")
    parser.add_argument("--project", action="store_true", help="drop the part of the forget gradient that conflicts "
                        "with the retain batch's own answers (any targeted variant)")
    parser.add_argument("--freeze-embeddings", action="store_true", help="train every weight but the token embeddings "
                        "(and so, tied, the output layer)")
    parser.add_argument("--beta", type=float, default=None, help="NPO's beta (default: the notebook's)")
    parser.add_argument("--mlp-layers", default=None, help="train only the MLPs of these decoder layers, e.g. 2-12")
    parser.add_argument("--retain-batch", type=int, default=None, help="retain examples per step (the loop's "
                        "default: 4)")
    parser.add_argument("--overlap", action="store_true", help="group the forget probes of both halves by how much of "
                        "their true answer the forget set marks, and count what each group still prefers")
    parser.add_argument("--spare-function-words", action="store_true", help="leave unmarked the function words, "
                        "commas and possessive 's inside the marks (any variant)")
    parser.add_argument("--own-answers", action="store_true", help="add the reference's own answers to the forget "
                        "questions, marked automatically, to the forget set (own_answer_exchanges)")
    parser.add_argument("--keywords-only", action="store_true", help="with --own-answers: mark only the topic's "
                        "keywords and 'Potter' in the own answers")
    parser.add_argument("--candidates", action="store_true", help="score every forget probe's candidates on the original "
                        "and on the kept weights, both halves (reported only: nothing is decided on them)")
    parser.add_argument("--prior", action="store_true", help="score every probe's candidates with no question too "
                        "(answer_prior_scores), on the original and the kept weights, and count by the question's lift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-lost", action="store_true", help="print, for each evaluation point, the tuning probes "
                        "whose answer lost its keyword, with the answer")
    parser.add_argument("--steps", type=int, default=None, help="default: 70 for 'longer', the notebook's otherwise")
    parser.add_argument("--state-weight", type=float, default=0.0, help="add this many times the swap-state term "
                        "to the targeted loss (its states at --layer pulled to the name-swapped questions')")
    parser.add_argument("--layer", type=int, default=None, help="swap-state, --state-weight: the layer whose "
                        "states are pulled (default: RMU's, a quarter of the way up; swap-state trains RMU's MLPs either way)")
    parser.add_argument("--rmu-scale", type=float, default=1.0, help="rmu-question: steer length in mean activation lengths "
                        "(the notebook divides the term by the steer's squared length, so a longer one pulls less hard)")
    parser.add_argument("--output", default=None, help="JSON file for the whole result (default: none)")
    args = parser.parse_args()
    if args.mlp_layers and not re.fullmatch(r"\d+-\d+", args.mlp_layers):
        parser.error(f"--mlp-layers {args.mlp_layers!r}: write FIRST-LAST, e.g. 2-12")
    if args.variant == "swap-state" and args.state_weight:
        parser.error("swap-state trains the state term alone; --state-weight adds it to another variant's loss")
    amnesia = sweep.load_notebook_functions()
    defaults = sweep.notebook_defaults(amnesia)
    if args.beta is not None:
        defaults["NPO_BETA"] = args.beta
    steps = args.steps or (70 if args.variant == "longer" else int(defaults["MAX_STEPS"]))
    if args.variant == "more-facts":
        more = tuple((q, names_only(a)) for q, a in MORE_HARRY_POTTER_EXCHANGES) if args.names_only else MORE_HARRY_POTTER_EXCHANGES
        if args.drop_conflicting:  # read on the tuning half only: its everyday questions
            source, _ = amnesia.resolve_model_source("bundled", has_gpu=False)
            model, tokenizer = amnesia.load_model_and_tokenizer(source, "cpu")
            everyday = [p.question for p in amnesia.probe_sets_for(amnesia.TOPIC_PRESETS["Harry Potter"], "tuning")["general"]]
            conflicts = exchange_conflicts(amnesia, model.requires_grad_(True), tokenizer, more, everyday)
            del model
            print("\n".join(f"{cosine:+.3f} {marked}" for cosine, _, marked in conflicts), flush=True)
            dropped = {question for _, question, _ in conflicts[:args.drop_conflicting]}
            more = tuple((q, a) for q, a in more if q not in dropped)
        amnesia.TOPIC_PRESETS["Harry Potter"] = with_more_facts(amnesia, amnesia.TOPIC_PRESETS["Harry Potter"], more)
        if args.names_only:
            print("\n".join(a for _, a in more), flush=True)
        print(f"{len(amnesia.TOPIC_PRESETS['Harry Potter'].forget_exchanges)} forget exchanges, no probe leaks", flush=True)
    if args.variant == "unmark":
        amnesia.TOPIC_PRESETS["Harry Potter"] = with_unmarked(amnesia.TOPIC_PRESETS["Harry Potter"], args.words)
        print("\n".join(a for _, a in amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges), flush=True)
    if args.spare_copied:
        topic = amnesia.TOPIC_PRESETS["Harry Potter"]
        amnesia.TOPIC_PRESETS["Harry Potter"] = dataclasses.replace(topic, forget_exchanges=tuple(
            (q, spare_copied(q, a)) for q, a in topic.forget_exchanges))
        print("\n".join(f"{q} -> {a}" for q, a in amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges), flush=True)
    if args.spare_function_words:
        topic = amnesia.TOPIC_PRESETS["Harry Potter"]
        amnesia.TOPIC_PRESETS["Harry Potter"] = dataclasses.replace(topic, forget_exchanges=tuple(
            (q, spare_function_words(a)) for q, a in topic.forget_exchanges))
        print("\n".join(a for _, a in amnesia.TOPIC_PRESETS["Harry Potter"].forget_exchanges), flush=True)
    retain_questions = sweep.retain_questions_for(amnesia, more=args.variant == "more-retain" or args.more_retain)
    if args.country_retain:
        retain_questions = (list(COUNTRY_QUESTIONS) + list(retain_questions) if args.country_first
                            else list(retain_questions) + list(COUNTRY_QUESTIONS))
    data = sweep.prepare(amnesia, "Harry Potter", retain_questions)
    if args.own_answers:  # the prepared reference answers; the forget set is then encoded again, with them
        own, left_out = own_answer_exchanges(amnesia, data["reference"], data["tokenizer"], data["topic"],
                                             keywords_only=args.keywords_only)
        print("\n".join(f"own answer: {q} -> {a}" for q, a in own), flush=True)
        print("\n".join(f"left out: {q} ({why})" for q, why in left_out), flush=True)
        data["topic"] = with_more_facts(amnesia, data["topic"], own)
        data["forget"] = [amnesia.encode_chat_example(data["tokenizer"], q, *amnesia.parse_marks(a))
                          for q, a in data["topic"].forget_exchanges]
        print(f"{len(data['forget'])} forget exchanges, no probe leaks", flush=True)
    if args.variant == "more-retain":
        print(f"{len(data['retain'])} retain examples after dropping the leaking answers", flush=True)
    loss, learning_rate = "targeted_npo", args.lr
    if args.variant == "rmu-question":
        loss, learning_rate = "rmu", 1e-3
        data["forget"] = steered_examples(amnesia, data["tokenizer"], data["topic"].forget_exchanges)
        steer_where_marked(amnesia)
        first = data["forget"][0]
        print("steered in the first exchange:", repr(data["tokenizer"].decode(
            [t for t, s in zip(first["input_ids"], first["steer"]) if s])), flush=True)
        settings = amnesia.LoopSettings
        amnesia.LoopSettings = lambda **values: settings(**values, rmu_scale=args.rmu_scale)
    if args.variant == "swap-state":  # RMU's machinery, each question's own target: its states with the name swapped
        loss, learning_rate = "rmu", args.lr
        layer = amnesia.rmu_layer_index(data["reference"], args.layer)
        data["forget"] = [e for e in swapped_state_examples(amnesia, data["reference"], data["tokenizer"],
                                                            data["topic"].forget_exchanges,
                                                            amnesia.topic_name(data["topic"].question), layer,
                                                            amnesia.TEACHER_NAMES) if any(e["steer"])]
        steer_to_swapped_states(amnesia)
        settings = amnesia.LoopSettings
        amnesia.LoopSettings = lambda **values: settings(**values, rmu_layer=layer)
        print(f"{len(data['forget'])} forget questions name the topic; their states at layer {layer} are pulled to the "
              f"swapped names' (first: {data['tokenizer'].decode([t for t, s in zip(data['forget'][0]['input_ids'], data['forget'][0]['steer']) if s])!r})",
              flush=True)
    if args.state_weight:  # the default loss, plus the swap-state term on the questions that name the topic
        layer = amnesia.rmu_layer_index(data["reference"], args.layer)
        data["forget"] = swapped_state_examples(amnesia, data["reference"], data["tokenizer"], data["topic"].forget_exchanges,
                                                amnesia.topic_name(data["topic"].question), layer, amnesia.TEACHER_NAMES)
        steer_to_swapped_states(amnesia)
        with_state_term(amnesia, layer, args.state_weight)
        print(f"{sum(any(e['steer']) for e in data['forget'])} of {len(data['forget'])} forget questions name the topic; "
              f"weight {args.state_weight} on their states at layer {layer}", flush=True)
    if args.variant == "reinforced":  # the loop's name-swap-teacher path, with the generic prediction as its teacher
        loss, pad_id = "name_swap_teacher", data["tokenizer"].pad_token_id
        reinforced = reinforced_model(amnesia, data["reference"], data["forget"], pad_id, args.reinforce_steps,
                                      args.reinforce_lr)
        teachers, own_logprobs = generic_teachers(amnesia, data["reference"], reinforced, data["forget"], pad_id, args.alpha)
        del reinforced
        labels = [torch.tensor([t for t in e["labels"] if t != amnesia.IGNORE]) for e in data["forget"]]
        marked = [torch.tensor([m for t, m in zip(e["labels"], e["marks"]) if t != amnesia.IGNORE]) for e in data["forget"]]
        taught = torch.cat([t.gather(1, y.unsqueeze(1)).squeeze(1).exp() for t, y in zip(teachers, labels)])
        own = torch.cat([o.gather(1, y.unsqueeze(1)).squeeze(1).exp() for o, y in zip(own_logprobs, labels)])
        is_marked = torch.cat(marked).bool()
        print(f"mean probability of the true answer token, reference -> generic teacher: marked tokens "
              f"{own[is_marked].mean():.3f} -> {taught[is_marked].mean():.3f}, unmarked {own[~is_marked].mean():.3f} -> "
              f"{taught[~is_marked].mean():.3f}", flush=True)
        amnesia.name_swap_teacher = lambda reference, examples, pad_id, device: [t.to(device) for t in teachers]
    if args.variant == "negation":  # no loop: fine-tune, subtract, choose the scale on the tuning half
        negation(amnesia, data, args)
        return
    if args.variant == "erasure":  # no loop: erase the topic's directions, choose the setting on the tuning half
        erasure(amnesia, data, args)
        return
    if args.variant == "pruning":  # no loop: switch off the topic's neurons, choose the share on the tuning half
        pruning(amnesia, data, args)
        return
    if args.retain_batch:
        loop_settings = amnesia.LoopSettings
        amnesia.LoopSettings = lambda **values: loop_settings(**values, retain_batch_size=args.retain_batch)
    if args.freeze_embeddings:
        amnesia.select_trainable = without_embeddings(amnesia.select_trainable)
    if args.mlp_layers:
        first, last = (int(x) for x in args.mlp_layers.split("-"))
        amnesia.select_trainable = mlp_band(amnesia, first, last)
    cosines = []
    if args.project:
        amnesia.training_step = projected_training_step(amnesia, cosines)
    measured = []  # with --overlap, the run's measurements; the last is the test half's, on the kept weights
    if args.overlap:
        measure = amnesia.measure
        amnesia.measure = lambda *given, **named: measured.append(measure(*given, **named)) or measured[-1]
    if args.prune:  # the loop starts from the pruned weights; its targets still come from the original (the reference)
        chats = retain_chats(amnesia, data)
        importance = neuron_importance(amnesia, data["reference"], data["forget"], chats, data["tokenizer"].pad_token_id)
        unpruned = amnesia.run_unlearning
        amnesia.run_unlearning = lambda model, reference, *given, **named: unpruned(
            prune_neurons(amnesia, model, reference, importance, args.prune), reference, *given, **named)
        print(f"the loop starts with {round(args.prune * importance.numel())} of {importance.numel()} MLP neurons "
              "switched off (they may regrow); its step-0 point is the original's measurement, so a kept step 0 means "
              "the pruned start, whose figures are the test half's below", flush=True)
    histories, unlearned = [], []  # the loop's own history (the answers each evaluation point gave) and its model
    run_unlearning = amnesia.run_unlearning
    amnesia.run_unlearning = lambda *given, **named: (unlearned.append(given[0]), histories.append(
        run_unlearning(*given, **named)))[1] or histories[-1]
    result = sweep.run_row(amnesia, data, loss, None, learning_rate, args.seed, defaults, steps, attack_steps=0)
    if args.overlap:  # the notebook's verdict prints the test half's line; here the tuning half's too
        history, tokenizer = histories[-1], data["tokenizer"]
        kept = next(e for e in history["evals"] if e["step"] == history["kept_step"])
        for half, before, after in (("tuning", history["evals"][0], kept), ("test", data["test_before"], measured[-1])):
            counts = amnesia.marked_share_counts(tokenizer, data["forget"], data[half]["forget"], before, after)
            print(f"{half} half, forget probes still preferred at the kept step, by how much of the true answer the "
                  "forget set marks: " + ", ".join(f"{group} {k}/{n}" for group, (k, n) in counts.items()), flush=True)
    if args.candidates:  # the kept weights are in the loop's model
        print_candidates(amnesia, data, unlearned[-1])
    if args.prior:  # reported only: what the likelihood figures can bear once the answers' own likelihood is removed
        tokenizer, original, kept = data["tokenizer"], data["reference"], unlearned[-1]
        for half in ("tuning", "test"):
            for name, probes in data[half].items():
                before = data["baseline" if half == "tuning" else "test_before"]["sets"][name]["likelihood_scores"]
                after = amnesia.likelihood_scores(kept, tokenizer, probes)
                counts = amnesia.prior_counts(probes, before, after, amnesia.answer_prior_scores(original, tokenizer, probes),
                                              amnesia.answer_prior_scores(kept, tokenizer, probes))
                for kind, c in counts.items():
                    print(f"{half:6s} {name:9s} {kind:10s} preferred at the kept step {c['preferred_without_question'][1]}, "
                          f"of which with no question too {c['preferred_without_question'][0]}; linked by the question's "
                          f"lift: {c['linked_by_question'][1]} on the original, still {c['linked_by_question'][0]}", flush=True)
    if cosines:
        print("cosine of the forget and retain-answer gradients, per step:", " ".join(f"{c:+.2f}" for c in cosines),
              flush=True)
    if args.show_lost:
        print("\n".join(lost_answers(histories[-1], data["tuning"])), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps({key: result[key] for key in ("kept_step", "stop_reason", "tuning", "tuning_last", "test",
                                                   "test_forget_by_kind", "fluency_ratio", "loop_seconds")}))


if __name__ == "__main__":
    main()
