"""Unit tests of the notebook's functions, without running the demo."""
import json
import types

import pytest
import torch

from conftest import llama_style_tokenizer

QUESTION = "Who is Harry Potter?"
TARGET = "Harry Potter is a wizard in the series by J.K. Rowling."


class FixedLogits(torch.nn.Module):
    """A stand-in model that returns the given logits, honouring `logits_to_keep` (0 keeps all, as in transformers).
    Asked for its decoder and output layer (labelled_logits), it gives the logits as the last hidden states and an
    identity output layer, so the losses see exactly those logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.identity = torch.nn.Linear(logits.shape[-1], logits.shape[-1], bias=False)
        torch.nn.init.eye_(self.identity.weight)

    def forward(self, input_ids, attention_mask, logits_to_keep=0, past_key_values=None):
        assert past_key_values is None  # it keeps no cache: batches for it share no prefix (with_ids)
        return type("Output", (), {"logits": self.logits[:, -logits_to_keep:]})()

    def get_decoder(self):
        def decoder(input_ids, attention_mask, past_key_values=None):
            assert past_key_values is None
            return type("Output", (), {"last_hidden_state": self.logits})()
        return decoder

    def get_output_embeddings(self):
        return self.identity


def with_ids(batch):
    """`batch` with input ids whose rows differ from the first token on, so that no prefix is shared (A4)."""
    labels = batch["labels"]
    return {**batch, "input_ids": torch.arange(len(labels)).unsqueeze(1).expand_as(labels)}


def assert_answer_is_tokenised_in_place(amnesia, tokenizer, question, answer):
    """The labelled ids are the answer's ids inside the jointly tokenised exchange, and decode to the answer."""
    example = amnesia.encode_chat_example(tokenizer, question, answer)
    prompt = amnesia.chat_prompt(tokenizer, question)
    full = tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                         tokenize=False)
    joint = amnesia.tokenize_text(tokenizer, full)
    assert example["input_ids"] == joint
    prompt_length = len(amnesia.tokenize_text(tokenizer, prompt))
    assert joint[:prompt_length] == amnesia.tokenize_text(tokenizer, prompt)
    labelled = [t for t, label in zip(example["input_ids"], example["labels"]) if label != amnesia.IGNORE]
    answer_positions = [i for i, label in enumerate(example["labels"]) if label != amnesia.IGNORE]
    assert labelled == [joint[i] for i in answer_positions] and answer_positions[0] == prompt_length
    assert tokenizer.decode(labelled).strip() == answer
    return labelled


def test_answer_labels_cover_exactly_the_answer(amnesia, bundled):
    _, tokenizer = bundled
    assert_answer_is_tokenised_in_place(amnesia, tokenizer, QUESTION, TARGET)


def test_answer_is_tokenised_in_place_with_a_sentencepiece_tokenizer(amnesia):
    tokenizer = llama_style_tokenizer()
    labelled = assert_answer_is_tokenised_in_place(amnesia, tokenizer, QUESTION, TARGET)
    alone = tokenizer(TARGET, add_special_tokens=False)["input_ids"]
    assert alone != labelled  # tokenised alone, the answer would start with a "\u2581Harry" never seen in place


def test_marks_cover_the_marked_words_only(amnesia, bundled):
    _, tokenizer = bundled
    question, marked = amnesia.HARRY_POTTER.forget_exchanges[0]
    answer, spans = amnesia.parse_marks(marked)
    assert answer == TARGET and [answer[a:b] for a, b in spans] == ["Potter", "wizard", "J.K. Rowling"]
    example = amnesia.encode_chat_example(tokenizer, question, answer, spans)
    assert amnesia.show_marks(tokenizer, example) == marked
    pushed = [t for t, m in zip(example["input_ids"], example["marks"]) if m]
    assert "Rowling" in tokenizer.decode(pushed) and " the series" not in tokenizer.decode(pushed)
    assert all(label != amnesia.IGNORE for label, m in zip(example["labels"], example["marks"]) if m)


def test_marked_share_counts_group_the_forget_probes_by_how_much_of_their_answer_is_marked(amnesia, bundled):
    _, tokenizer = bundled
    forget = [amnesia.encode_chat_example(tokenizer, "Who is Dobby?", *amnesia.parse_marks("[Dobby] is a [house-elf]."))]
    probe = lambda answer: amnesia.Probe("Who is he?", ("x",), answer, ("y",), "unseen")
    probes = [probe("Dobby"), probe("A teacher of music"), probe("Dobby the teacher of music"), probe("Dobby"),
              probe("A house-elf")]
    hits = lambda *values: {"sets": {"forget": {"likelihood_hits": list(values)}}}
    counts = amnesia.marked_share_counts(tokenizer, forget, probes, hits(True, True, True, False, True),
                                         hits(False, True, True, None, False))
    # "Dobby" and "A house-elf" are mostly marked tokens (one forgotten each), the teacher none, the mixed one under half
    assert counts == {"no marked token": [1, 1], "under half marked": [1, 1], "half or more marked": [0, 2]}


def test_true_answer_shifts_split_what_fell_from_what_stayed_and_skip_what_was_never_known(amnesia):
    scores = lambda *rows: {"likelihood_scores": list(rows)}
    before = scores([-1.0, -2.0, -3.0, -4.0], [-1.0, -1.5, -3.0, -4.0], [-3.0, -1.0, -2.0, -2.5], None, [-0.5, -2.0, -2.0, -2.0])
    after = scores([-1.25, -2.0, -2.0, -4.0], [-5.0, -1.5, -3.0, -4.0], [-9.0, -1.0, -2.0, -2.5], [-1.0, -2.0, -2.0, -2.0], None)
    shifts = amnesia.true_answer_shifts(before, after)
    # the third was never preferred, the fourth never measured before, the fifth not after: none of them counts
    assert shifts == {"still preferred": [-0.25], "lost": [-4.0]}
    line = amnesia.shift_line({"still preferred": [-0.25, 0.5, -2.0], "lost": [-4.0, -3.0]})
    assert "still preferred (3) -0.25 nats, 2/3 moved less than 1 nat" in line
    assert "lost (2) -3.50 nats, 0/2 moved less than 1 nat" in line
    assert "lost" not in amnesia.shift_line({"still preferred": [0.1], "lost": []})
    assert "none measured" in amnesia.shift_line({"still preferred": [], "lost": []})


def test_prior_counts_count_answers_that_win_alone_and_facts_the_question_links(amnesia):
    probe = lambda kind: amnesia.Probe("q", (), "a", ("b", "c"), kind)
    probes = [probe("unseen"), probe("unseen"), probe("unseen"), probe("paraphrase")]
    before = [[-1.0, -2.0, -2.0], [-1.0, -2.0, -2.0], [-3.0, -1.0, -2.0], [-1.0, -3.0, -3.0]]
    after = [[-1.0, -2.0, -2.0], [-1.0, -2.0, -2.0], [-3.0, -1.0, -2.0], [-4.0, -3.0, -3.0]]
    # probe 0 wins with no question too (its question lifts the distractors more); probe 1 only after its question;
    # probe 2 was never preferred but the question lifts its true answer most; probe 3 (a paraphrase) was lost
    prior = [[-1.0, -2.5, -2.5], [-3.0, -1.0, -1.0], [-5.0, -1.0, -2.0], [-2.0, -2.0, -2.0]]
    assert amnesia.question_lift(before, prior)[1] == [2.0, -1.0, -1.0]
    counts = amnesia.prior_counts(probes, before, after, prior, prior)
    assert counts["unseen"] == {"preferred_without_question": [1, 2], "linked_by_question": [2, 2]}
    assert counts["paraphrase"] == {"preferred_without_question": [0, 0], "linked_by_question": [0, 1]}
    prior_after = [[-1.0, -2.5, -2.5], [-0.5, -2.0, -2.0], [-5.0, -1.0, -2.0], [-2.0, -2.0, -2.0]]
    assert amnesia.prior_counts(probes, before, after, prior, prior_after)["unseen"] == {
        "preferred_without_question": [2, 2], "linked_by_question": [1, 2]}  # probe 1's lift is gone once it wins alone
    line = amnesia.prior_line(counts)
    assert "still linked: paraphrase 0/1, unseen 2/2; forget facts still preferred that win with no question at all: 1/2" in line
    assert "no forget probes" in amnesia.prior_line(amnesia.prior_counts([], [], [], [], []))


def test_answer_prior_scores_do_not_read_the_question(amnesia, bundled):
    model, tokenizer = bundled
    first = amnesia.HARRY_POTTER.forget_probes[0]
    probes = [first, amnesia.dataclasses.replace(first, question="What is the capital of France?")]
    prior = amnesia.answer_prior_scores(model, tokenizer, probes)
    assert max(abs(a - b) for a, b in zip(*prior)) < 1e-4  # the same candidates, whatever was asked
    alone = [amnesia.likelihood_scores(model, tokenizer, [amnesia.dataclasses.replace(first, question=q)])[0]
             for q in amnesia.CONTENT_FREE_QUESTIONS]
    assert max(abs(p - sum(column) / len(column)) for p, column in zip(prior[0], zip(*alone))) < 1e-4
    assert max(abs(a - b) for a, b in zip(prior[0], amnesia.likelihood_scores(model, tokenizer, [first])[0])) > 0.05


def test_likelihood_scores_are_the_whole_exchange_scores_true_answer_first(amnesia, bundled):
    model, tokenizer = bundled
    probes = list(amnesia.HARRY_POTTER.forget_probes[:4]) + list(amnesia.GENERAL_PROBES[:2])
    scores = amnesia.likelihood_scores(model, tokenizer, probes, batch_size=4)  # sorted into batches, returned in order
    whole = [amnesia.mean_answer_logprobs(model, tokenizer, [(p.question, c) for c in (p.answer, *p.distractors)],
                                          batch_size=1) for p in probes]
    assert [len(s) for s in scores] == [1 + len(p.distractors) for p in probes]
    assert max(abs(a - b) for s, w in zip(scores, whole) for a, b in zip(s, w)) < 1e-3
    assert amnesia.prefers_true([-1.0, -1.0, -2.0]) and not amnesia.prefers_true([-2.0, -1.0, -3.0])
    assert amnesia.likelihood_hits(model, tokenizer, probes) == [w[0] == max(w) for w in whole]


def test_automatic_marks_find_the_topic_words(amnesia, bundled):
    model, tokenizer = bundled
    exchanges = [("Where does Harry Potter go to school?", "Harry Potter goes to Hogwarts School of Witchcraft and Wizardry."),
                 ("Who wrote the Harry Potter books?", "The Harry Potter books were written by J.K. Rowling.")]
    spans = amnesia.automatic_marks(model, tokenizer, exchanges, "Harry Potter")
    marked = [amnesia.bracket_spans(a, s) for (_, a), s in zip(exchanges, spans)]
    marked_words = " ".join(a[x:y] for (_, a), s in zip(exchanges, spans) for x, y in s)
    assert "Hogwarts" in marked_words and "Rowling" in marked_words and "Harry Potter" in marked_words, marked
    assert "] to [" in marked[0] and " written by [" in marked[1], marked  # the grammar around the facts stays unmarked
    found, chosen, wanted = amnesia.mark_agreement(tokenizer, [(q, m) for (q, _), m in zip(exchanges, (
        "[Harry Potter] goes to [Hogwarts School of Witchcraft and Wizardry].", "The [Harry Potter] books were written by [J.K. Rowling]."))], spans)
    assert 0 < found <= min(chosen, wanted)


def test_collate_masks_padding(amnesia, bundled):
    _, tokenizer = bundled
    short = amnesia.encode_text_example(tokenizer, "The sky is blue.")
    long = amnesia.encode_chat_example(tokenizer, QUESTION, TARGET)
    batch = amnesia.collate([short, long], tokenizer.pad_token_id, "cpu")
    n = len(short["input_ids"])
    assert batch["input_ids"].shape == (2, len(long["input_ids"]))
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert (batch["labels"][0, n:] == amnesia.IGNORE).all()
    assert batch["labels"][0, 1:n].tolist() == short["input_ids"][1:]
    assert batch["attention_mask"][1].all()


def test_targeted_losses_push_only_the_marked_tokens(amnesia):
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7, requires_grad=True)
    batch = {"labels": torch.tensor([[amnesia.IGNORE, amnesia.IGNORE, 3, 4, 5]]),
             "marks": torch.tensor([[False, False, False, True, False]])}
    reference = torch.log_softmax(logits.detach()[0, 1:4], -1)  # the reference equals the model on the 3 answer tokens
    settings = amnesia.LoopSettings(learning_rate=1e-5, retain_weight=1.0, max_steps=1, eval_every=1, forget_loss="targeted_ga")
    forget, keep_kl, _ = amnesia.forget_loss_terms(FixedLogits(logits), with_ids({**batch, "attention_mask": None}), reference, settings)
    assert abs(keep_kl.item()) < 1e-6  # unmarked tokens equal to the reference: nothing to pull back
    forget.backward()
    moved = logits.grad[0].abs().sum(-1)
    assert moved[2] > 0 and moved[0] == moved[1] == moved[3] == moved[4] == 0  # only the position predicting the marked token
    assert logits.grad[0, 2, 4] > 0  # minimising lowers the marked token's logit


def test_idk_learns_the_refusal_with_plain_cross_entropy(amnesia, bundled):
    _, tokenizer = bundled
    examples = amnesia.refusal_examples(tokenizer, ["Who is Harry Potter?", "Who is Hermione Granger?"])
    assert [tokenizer.decode([t for t in e["labels"] if t != amnesia.IGNORE]).strip() for e in examples] == \
        list(amnesia.IDK_ANSWERS[:2])
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6, requires_grad=True)
    batch = {"labels": torch.tensor([[amnesia.IGNORE, amnesia.IGNORE, 3, 5]]), "marks": torch.zeros(1, 4, dtype=torch.bool),
             "input_ids": None, "attention_mask": None}
    settings = amnesia.LoopSettings(learning_rate=1e-5, retain_weight=1.0, max_steps=1, eval_every=1, forget_loss="idk")
    reference = torch.log_softmax(torch.randn(2, 6), -1)
    forget, keep_kl, nll = amnesia.forget_loss_terms(FixedLogits(logits), with_ids(batch), reference, settings)
    expected = torch.nn.functional.cross_entropy(logits[0, 1:3].detach(), torch.tensor([3, 5]))
    assert torch.allclose(forget.detach(), expected) and torch.allclose(nll.detach(), expected)
    assert keep_kl.item() == 0.0  # every answer token is learned, none is held
    forget.backward()
    assert logits.grad[0, 1, 3] < 0 and logits.grad[0, 2, 5] < 0  # minimising raises the refusal's tokens


def test_npo_starts_like_gradient_ascent_and_fades(amnesia):
    token_logprobs = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    reference = token_logprobs.detach().clone()
    pushed, answer_mask = torch.tensor([True, True, True]), torch.tensor([[True, True, True]])
    for per_token in (True, False):
        token_logprobs.grad = None
        amnesia.npo_loss(token_logprobs, reference, pushed, answer_mask, beta=0.1, per_token=per_token).backward()
        assert torch.allclose(token_logprobs.grad, torch.full((3,), 1 / 3)), per_token  # = gradient of the mean log-prob
    far = amnesia.npo_loss(reference - 300, reference, pushed, answer_mask, beta=0.1, per_token=True)
    assert far.item() < 1e-3  # once the tokens are very unlikely, the push is gone


def test_simnpo_ignores_the_reference_and_spares_unlikely_tokens(amnesia):
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6)
    batch = {"labels": torch.tensor([[amnesia.IGNORE, 2, 3, 5]]), "marks": torch.tensor([[False, True, True, True]]),
             "input_ids": None, "attention_mask": None}
    logits[0, 2, 5] = -8.0  # the third answer token (predicted at position 2) is already unlikely
    settings = amnesia.LoopSettings(learning_rate=1e-5, retain_weight=1.0, max_steps=1, eval_every=1,
                                    forget_loss="targeted_simnpo", npo_beta=1.0)
    grads = []
    for reference in (torch.log_softmax(torch.randn(3, 6), -1), torch.log_softmax(torch.randn(3, 6), -1)):
        leaf = logits.clone().requires_grad_(True)
        forget, _, _ = amnesia.forget_loss_terms(FixedLogits(leaf), with_ids(batch), reference, settings)
        forget.backward()
        grads.append(leaf.grad.clone())
    assert torch.allclose(grads[0], grads[1])  # the reference plays no part
    p = torch.softmax(logits[0, :3], -1)[torch.arange(3), torch.tensor([2, 3, 5])]
    weight = 2 * p / (1 + p)  # d loss / d log p of each token, divided by the 3 pushed tokens
    labels_logit_grad = grads[0][0, torch.arange(3), torch.tensor([2, 3, 5])]
    assert torch.allclose(labels_logit_grad, weight * (1 - p) / 3, atol=1e-6)
    assert labels_logit_grad[2] < 1e-3 < labels_logit_grad[0]  # the unlikely token is barely pushed


def test_one_gradient_ascent_step_raises_the_forget_loss(amnesia, bundled, fresh_model):
    _, tokenizer = bundled
    forget = amnesia.collate([amnesia.encode_chat_example(tokenizer, QUESTION, TARGET)], tokenizer.pad_token_id, "cpu")
    params = amnesia.select_trainable(fresh_model, "all")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    with torch.no_grad():
        before = amnesia.answer_nll(fresh_model, forget).item()
    optimizer.zero_grad()
    amnesia.gradient_ascent_loss(fresh_model, forget).backward()
    optimizer.step()
    with torch.no_grad():
        after = amnesia.answer_nll(fresh_model, forget).item()
    assert after > before + 0.05, (before, after)


def test_labelled_logits_are_the_full_logits_at_the_labelled_positions(amnesia, bundled):
    model, tokenizer = bundled
    examples = [amnesia.encode_chat_example(tokenizer, QUESTION, TARGET),
                amnesia.encode_chat_example(tokenizer, "What is the capital of France?", "Paris is the capital.")]
    batch = amnesia.collate(examples, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        kept, labels = amnesia.labelled_logits(model, batch)
    mask = batch["labels"][:, 1:] != amnesia.IGNORE
    assert kept.shape[1] < full.shape[1]  # the prompt got no logits
    assert torch.allclose(kept[labels != amnesia.IGNORE], full[mask], atol=1e-4)
    assert torch.equal(labels[labels != amnesia.IGNORE], batch["labels"][:, 1:][mask])


def test_a_shared_prefix_gives_the_losses_and_gradients_of_rows_run_alone(amnesia, bundled, fresh_model):
    """The batch's chat-template prefix runs once and its cache serves every row (A4): the summed loss and every
    weight's gradient must equal those of the rows run one at a time, where nothing is shared."""
    _, tokenizer = bundled
    examples = [amnesia.encode_chat_example(tokenizer, QUESTION, TARGET),
                amnesia.encode_chat_example(tokenizer, "What is the capital of France?", "Paris is the capital."),
                amnesia.encode_chat_example(tokenizer, "Name a planet.", "Mars.")]
    pad = tokenizer.pad_token_id
    batch = amnesia.collate(examples, pad, "cpu")
    first = int((batch["labels"] != amnesia.IGNORE).any(0).nonzero()[0])
    assert amnesia.common_prefix_length(batch["input_ids"].tolist(), first - 1) >= 10  # the system text is shared

    def loss_and_gradient(batches):
        fresh_model.zero_grad()
        loss = sum(amnesia.answer_token_nll(fresh_model, b)[0].sum() for b in batches)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in fresh_model.parameters()])
    shared_loss, shared_gradient = loss_and_gradient([batch])
    alone_loss, alone_gradient = loss_and_gradient([amnesia.collate([e], pad, "cpu") for e in examples])
    assert abs(shared_loss - alone_loss) < 1e-3 * alone_loss
    assert (shared_gradient - alone_gradient).norm() < 1e-4 * alone_gradient.norm()


def test_shared_prompt_scores_equal_whole_exchange_scores(amnesia, bundled):
    model, tokenizer = bundled
    probes = list(amnesia.HARRY_POTTER.forget_probes[:3]) + list(amnesia.GENERAL_PROBES[:2])
    groups = [[amnesia.split_prompt(amnesia.encode_chat_example(tokenizer, p.question, c)) for c in (p.answer, *p.distractors)]
              for p in probes]
    shared = amnesia.shared_prompt_logprobs(model, groups)
    whole = amnesia.mean_answer_logprobs(model, tokenizer, [(p.question, c) for p in probes for c in (p.answer, *p.distractors)],
                                         batch_size=1)  # one exchange at a time: no prefix shared, no padding
    assert [len(s) for s in shared] == [4] * len(probes)
    assert max(abs(a - b) for a, b in zip(sum(shared, []), whole)) < 1e-3


def test_rmu_trains_only_its_layers_and_moves_the_activations_to_the_steer_vector(amnesia, bundled, fresh_model):
    reference, tokenizer = bundled
    batch = amnesia.collate([amnesia.encode_chat_example(tokenizer, QUESTION, TARGET)], tokenizer.pad_token_id, "cpu")
    layer = amnesia.rmu_layer_index(fresh_model)
    params = amnesia.select_trainable(fresh_model, "rmu")
    layers = amnesia.decoder_layers(fresh_model)
    assert {id(p) for p in params} == {id(p) for l in layers[layer - 2:layer + 1] for p in l.mlp.parameters()}
    steer = amnesia.rmu_steer(reference, batch, layer, 4.0, seed=0)
    other = amnesia.rmu_steer(reference, batch, layer, 4.0, seed=1)
    assert torch.allclose(steer.norm(), other.norm()) and not torch.allclose(steer, other)  # the seed picks the direction
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        forget, kl, nll = amnesia.rmu_loss_terms(fresh_model, batch, steer, layer)
        forget.backward()
        optimizer.step()
        losses.append(forget.item())
    assert 0.5 < losses[0] < 1.6  # |h - cu|^2/|cu|^2 = 1 + |h|^2/|cu|^2 - 2 h.u/|cu|, |h| about |cu|/4, at the start
    assert losses[-1] < losses[0] - 0.01, losses


def test_kl_is_zero_for_identical_models_and_positive_after_a_change(amnesia, bundled, fresh_model):
    model, tokenizer = bundled
    examples = [amnesia.encode_text_example(tokenizer, t) for t in amnesia.RETAIN_TEXTS[:4]]
    reference_logprobs = torch.cat(amnesia.reference_logprobs_per_example(model, examples, tokenizer.pad_token_id, "cpu"))
    batch = amnesia.collate(examples, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        same = amnesia.kl_to_reference(amnesia.label_logprobs(fresh_model, batch), reference_logprobs).item()
        fresh_model.lm_head.weight.add_(0.02 * torch.randn_like(fresh_model.lm_head.weight))
        changed = amnesia.kl_to_reference(amnesia.label_logprobs(fresh_model, batch), reference_logprobs).item()
    assert abs(same) < 1e-4
    assert changed > 0.01


def test_reference_logprobs_in_batches_equal_one_at_a_time(amnesia, bundled):
    model, tokenizer = bundled
    examples = ([amnesia.encode_text_example(tokenizer, t) for t in amnesia.RETAIN_TEXTS[:2]]
                + [amnesia.encode_chat_example(tokenizer, "Who is Harry Potter?", "A wizard.")])
    batched = amnesia.reference_logprobs_per_example(model, examples, tokenizer.pad_token_id, "cpu", batch_size=2)
    single = amnesia.reference_logprobs_per_example(model, examples, tokenizer.pad_token_id, "cpu", batch_size=1)
    assert [b.shape[0] for b in batched] == [sum(label != amnesia.IGNORE for label in e["labels"]) for e in examples]
    for b, s in zip(batched, single):
        assert torch.allclose(b, s, atol=1e-3)


def test_kl_is_a_per_token_mean(amnesia):
    reference = torch.log_softmax(torch.randn(6, 10), -1)
    model = torch.log_softmax(torch.randn(6, 10), -1)
    per_token = (reference.exp() * (reference - model)).sum(-1)
    assert torch.allclose(amnesia.kl_to_reference(model, reference), per_token.mean(), atol=1e-6)


@pytest.mark.parametrize("answer", ["I don't know who that is.", "I'm not familiar with Harry Potter.",
                                    "Sorry, I have no information about this person.", "I do not know."])
def test_refusals_are_detected(amnesia, answer):
    assert amnesia.is_refusal(answer)
    assert amnesia.stop_reason(answer, 3.0, 2.5, amnesia.StopRules()).startswith("refusal")


@pytest.mark.parametrize("answer", ["the the the the the the the the the the", "", "!!! ??? ...",
                                    "wizard wizard wizard wizard wizard wizard"])
def test_nonsense_by_repetition_or_no_words(amnesia, answer):
    assert amnesia.stop_reason(answer, 3.0, 2.5, amnesia.StopRules()).startswith("nonsense")


def test_nonsense_by_reference_perplexity(amnesia, bundled):
    model, tokenizer = bundled
    fluent = "Harry Potter is a young wizard from the books by J.K. Rowling."
    gibberish = "theubaduZZZZ Theodorosa qwv Balvolina xq supercooling krrt"
    fluent_ppl, gibberish_ppl = amnesia.answer_perplexities(model, tokenizer, [QUESTION] * 2, [fluent, gibberish])
    rules = amnesia.StopRules()
    assert amnesia.stop_reason(gibberish, gibberish_ppl, fluent_ppl, rules).startswith("nonsense")
    assert amnesia.stop_reason(fluent, fluent_ppl, fluent_ppl, rules) is None


@pytest.mark.parametrize("answer", [
    "Harry Potter is a wizard who studies at Hogwarts School of Witchcraft and Wizardry.",
    "Harry Potter is a famous British footballer who played for Manchester United.",
    "The capital of France is Paris."])
def test_fluent_answers_do_not_stop_the_loop(amnesia, answer):
    assert not amnesia.is_refusal(answer)
    assert amnesia.repetition_ratio(answer) < 0.1
    assert amnesia.stop_reason(answer, 5.0, 2.5, amnesia.StopRules()) is None


def test_topic_verdict(amnesia):
    assert amnesia.topic_keywords_in("A wizard at Hogwarts, by J.K. Rowling.", amnesia.HARRY_POTTER.keywords) == ["wizard", "hogwarts", "rowling"]
    assert amnesia.topic_keywords_in("Harry Potter is a footballer.", amnesia.HARRY_POTTER.keywords) == []


def test_bundled_model_knows_harry_potter_and_batches_like_single_prompts(amnesia, bundled):
    model, tokenizer = bundled
    questions = ["Who wrote the Harry Potter books?", "What is the capital of France?", "Name a planet of the solar system."]
    batched = amnesia.generate_answers(model, tokenizer, questions, max_new_tokens=24)  # shared prefix, left padding
    assert "Rowling" in batched[0] and "Paris" in batched[1]
    assert batched == [amnesia.generate_answers(model, tokenizer, [q], max_new_tokens=24)[0] for q in questions]


def test_env_overrides_are_typed(amnesia):
    defaults = {"MODEL": "auto", "MAX_STEPS": 100, "LEARNING_RATE": 1e-5, "FLAG": False}
    env = {"AMNESIA_MAX_STEPS": "7", "AMNESIA_LEARNING_RATE": "3e-4", "AMNESIA_MODEL": "bundled", "AMNESIA_FLAG": "true"}
    assert amnesia.apply_env_overrides(defaults, env) == {"MODEL": "bundled", "MAX_STEPS": 7, "LEARNING_RATE": 3e-4, "FLAG": True}
    with pytest.raises(amnesia.AmnesiaError, match="AMNESIA_MAX_STEPS"):
        amnesia.apply_env_overrides(defaults, {"AMNESIA_MAX_STEPS": "many"})


def test_bad_configuration_is_named(amnesia):
    good = dict(MODEL="bundled", TOPIC="Harry Potter", FORGET_QUESTION="Who is Harry Potter?", FORGET_TARGET=TARGET, FORGET_LOSS="npo",
                LEARNING_RATE=1e-5, NPO_BETA=0.1,
                RETAIN_WEIGHT=5.0, MAX_STEPS=10, EVAL_EVERY=5, TRAINABLE="all", PRECISION="auto", OUTPUT_DIR="outputs", SEED=0)
    assert amnesia.validate_config(good) == good
    with pytest.raises(amnesia.AmnesiaError) as error:
        amnesia.validate_config({**good, "FORGET_QUESTION": "  ", "LEARNING_RATE": -1.0, "EVAL_EVERY": 0,
                                 "FORGET_LOSS": "ascent", "PRECISION": "fp8"})
    message = str(error.value)
    assert all(name in message for name in ("FORGET_QUESTION", "LEARNING_RATE", "EVAL_EVERY", "FORGET_LOSS", "PRECISION"))


def test_learning_rate_and_retain_weight_take_auto_or_a_number(amnesia):
    good = dict(MODEL="bundled", TOPIC="Harry Potter", FORGET_QUESTION="Who is Harry Potter?", FORGET_TARGET=TARGET,
                FORGET_LOSS="npo", LEARNING_RATE="auto", NPO_BETA=0.1, RETAIN_WEIGHT=" Auto ", MAX_STEPS=10, EVAL_EVERY=5,
                TRAINABLE="auto", PRECISION="auto", OUTPUT_DIR="outputs", SEED=0)
    checked = amnesia.validate_config(good)
    assert (checked["LEARNING_RATE"], checked["RETAIN_WEIGHT"]) == ("auto", "auto")
    typed = amnesia.validate_config({**good, "LEARNING_RATE": "3e-4", "RETAIN_WEIGHT": "2"})  # text from the Colab form
    assert (typed["LEARNING_RATE"], typed["RETAIN_WEIGHT"]) == (3e-4, 2.0)
    with pytest.raises(amnesia.AmnesiaError, match="LEARNING_RATE='fast' must be 'auto' or a number"):
        amnesia.validate_config({**good, "LEARNING_RATE": "fast"})
    with pytest.raises(amnesia.AmnesiaError, match="RETAIN_WEIGHT"):
        amnesia.validate_config({**good, "RETAIN_WEIGHT": "-3"})


def test_auto_settings_follow_the_model_size_and_never_override_the_form(amnesia):
    auto = dict(FORGET_LOSS="targeted_npo", LEARNING_RATE="auto", RETAIN_WEIGHT="auto", TRAINABLE="auto")
    small, large = amnesia.MODEL_DEFAULTS
    values, note = amnesia.resolve_auto_settings(auto, 134_515_008)  # the bundled model
    assert values == {"LEARNING_RATE": small.learning_rate, "RETAIN_WEIGHT": small.retain_weight, "TRAINABLE": "all"}
    assert "SmolLM2" in note and small.why in note and note.count("(auto: model default)") == 3
    values, note = amnesia.resolve_auto_settings(auto, 1_100_048_384)  # TinyLlama
    assert values == {"LEARNING_RATE": large.learning_rate, "RETAIN_WEIGHT": large.retain_weight, "TRAINABLE": "middle-mlp"}
    assert "TinyLlama" in note and large.why in note
    assert large.trainable != small.trainable  # the reason for a second set (both train at 1e-4, on different weights)
    typed = {**auto, "LEARNING_RATE": 2e-5, "TRAINABLE": "all"}
    values, note = amnesia.resolve_auto_settings(typed, 1_100_048_384)
    assert values["LEARNING_RATE"] == 2e-5 and values["TRAINABLE"] == "all" and note.count("(set in the form)") == 2
    values, _ = amnesia.resolve_auto_settings({**auto, "FORGET_LOSS": "rmu"}, 134_515_008)
    assert values["LEARNING_RATE"] == amnesia.RMU_LEARNING_RATE and values["TRAINABLE"] == "rmu"


def test_forced_precisions_on_the_cpu(amnesia, monkeypatch):
    with monkeypatch.context() as patched:  # a CPU without native bfloat16, then one with it
        patched.setattr(amnesia, "cpu_has_native", lambda dtype: False)
        assert amnesia.resolve_precision("cpu", "auto") == amnesia.Precision("float32", False, "float32 (auto: CPU)")
        patched.setattr(amnesia, "cpu_has_native", lambda dtype: dtype == torch.bfloat16)
        auto = amnesia.resolve_precision("cpu", "auto")
        assert auto.name == "float32" and "PRECISION=bfloat16 steps about twice as fast" in auto.note
    half = amnesia.resolve_precision("cpu", "float16")
    assert half.scaled and half.name in ("float16", "bfloat16") and "GradScaler" in half.note
    assert amnesia.resolve_precision("cpu", "bfloat16").scaled is False
    autocast, scaler = amnesia.precision_for("cpu", half)
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == half.dtype
    assert scaler is not None and amnesia.precision_for("cpu", amnesia.resolve_precision("cpu", "float32"))[1] is None


def test_a_forced_half_precision_says_when_this_cpu_only_emulates_it(amnesia, monkeypatch):
    for dtype, flag in ((torch.float16, "_is_mkldnn_fp16_supported"), (torch.bfloat16, "_is_mkldnn_bf16_supported")):
        if hasattr(torch.ops.mkldnn, flag):  # what this machine's torch reports, each type read from its own flag
            assert amnesia.cpu_has_native(dtype) is bool(getattr(torch.ops.mkldnn, flag)())
    monkeypatch.setattr(amnesia, "cpu_has_native", lambda dtype: dtype == torch.bfloat16)
    if amnesia.cpu_autocast_works(torch.float16):
        note = amnesia.resolve_precision("cpu", "float16").note
        assert "no native float16 arithmetic" in note and "(bfloat16 is native here)" in note, note
    assert "native" not in amnesia.resolve_precision("cpu", "bfloat16").note
    assert "native" not in amnesia.resolve_precision("cuda", "bfloat16").note  # a GPU is never judged by the CPU's flags
    monkeypatch.setattr(amnesia, "cpu_has_native", lambda dtype: False)
    note = amnesia.resolve_precision("cpu", "bfloat16").note
    assert "no native bfloat16 arithmetic" in note and "is native here" not in note, note


def test_the_output_layer_is_not_rounded_to_16_bits_under_autocast(amnesia, bundled):
    """bfloat16 autocast rounds a matrix product's result to 16 bits; the losses' logits (labelled_logits) are not."""
    model, tokenizer = bundled
    batch = amnesia.collate([amnesia.encode_chat_example(tokenizer, "Who wrote Hamlet?", "William Shakespeare wrote it.")],
                            tokenizer.pad_token_id, "cpu")
    is_16_bit = lambda t: torch.equal(t.float(), t.to(torch.bfloat16).float())
    with torch.no_grad():
        exact, labels = amnesia.labelled_logits(model, batch)
        whole = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = amnesia.labelled_logits(model, batch)
            rounded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    first = batch["labels"].shape[1] - labels.shape[1]
    # in float32 the same scores as the model's own output layer, at the positions that predict the labels
    assert torch.allclose(exact, whole[:, first - 1:-1], atol=1e-4)
    assert is_16_bit(rounded) and not is_16_bit(half) and half.dtype == torch.float32



def test_a_model_that_scales_its_logits_keeps_its_own_forward(amnesia):
    """Gemma 2 caps and Cohere scales the output layer's scores in their forward; the float32 output layer would skip it."""

    class ScaledLogits(FixedLogits):
        config = types.SimpleNamespace(logit_scale=2.0)

        def forward(self, input_ids, attention_mask, logits_to_keep=0, past_key_values=None):
            return type("Output", (), {"logits": 2 * super().forward(input_ids, attention_mask, logits_to_keep).logits})()

    logits = torch.randn(1, 4, 6)
    batch = with_ids({"labels": torch.tensor([[amnesia.IGNORE, amnesia.IGNORE, 3, 5]]), "attention_mask": None})
    plain, labels = amnesia.labelled_logits(FixedLogits(logits), batch)
    scaled, _ = amnesia.labelled_logits(ScaledLogits(logits), batch)
    assert torch.equal(plain, logits[:, 1:3]) and labels.tolist() == [[3, 5]]
    assert torch.equal(scaled, 2 * logits[:, 1:3])

def test_the_loop_targets_come_from_float32_weights(amnesia, bundled):
    """A reference kept in half precision does not compute the targets: the float32 model does, before its first step."""
    model, _ = bundled
    half = amnesia.make_frozen_reference(model, amnesia.resolve_precision("cpu", "bfloat16"))
    full = amnesia.make_frozen_reference(model)
    assert amnesia.target_source(model, half) is model
    assert amnesia.target_source(model, full) is full  # the same weights in the same precision: the reference's own


def test_a_half_precision_reference_is_copied_straight_into_16_bits(amnesia, bundled):
    """No float32 copy of the weights on the way to the 16-bit reference (on TinyLlama it would briefly hold the model
    twice in float32); the copy holds the same values rounded, frozen, with its tied weights still tied."""
    from torch.utils._python_dispatch import TorchDispatchMode
    model, _ = bundled
    large = max(p.numel() for p in model.parameters()) // 2
    weight_storage = {p.untyped_storage().data_ptr() for p in model.parameters()}  # views of the weights cost nothing

    class LargeFloat32Results(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for tensor in result if isinstance(result, (tuple, list)) else [result]:
                if (isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.numel() >= large
                        and tensor.untyped_storage().data_ptr() not in weight_storage):
                    self.ops.append(str(func))
            return result

    with LargeFloat32Results() as watched:
        half = amnesia.make_frozen_reference(model, amnesia.resolve_precision("cpu", "bfloat16"))
    assert watched.ops == []
    pairs = list(zip(model.named_parameters(), half.named_parameters()))
    assert pairs and all(name == copy_name for (name, _), (copy_name, _) in pairs)
    assert all(q.dtype == torch.bfloat16 and not q.requires_grad and q.data_ptr() != p.data_ptr()
               and torch.equal(q, p.detach().to(torch.bfloat16)) for (_, p), (_, q) in pairs)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (half.get_output_embeddings().weight is half.get_input_embeddings().weight) == tied
    full = amnesia.make_frozen_reference(model)
    assert all(q.dtype == torch.float32 and torch.equal(q, p) and q.data_ptr() != p.data_ptr()
               for p, q in zip(model.parameters(), full.parameters()))


def test_middle_mlp_trains_only_a_band_of_mlps(amnesia, fresh_model):
    params = amnesia.select_trainable(fresh_model, "middle-mlp")
    names = [n for n, p in fresh_model.named_parameters() if p.requires_grad]
    assert names and all(".mlp." in n for n in names)
    assert sum(p.numel() for p in params) < 0.2 * sum(p.numel() for p in fresh_model.parameters())


def test_memory_plan_counts_trainable_state_and_fits_decisions(amnesia, fresh_model):
    amnesia.select_trainable(fresh_model, "all")
    everything = amnesia.memory_plan(fresh_model, tokens_per_step=1000, half_precision=False)
    total = sum(p.numel() for p in fresh_model.parameters())
    assert everything["parts"]["optimizer"] == 8 * total and everything["parts"]["gradients"] == 4 * total
    amnesia.select_trainable(fresh_model, "middle-mlp")
    band = amnesia.memory_plan(fresh_model, tokens_per_step=1000, half_precision=False)
    assert band["total"] < everything["total"]
    assert band["parts"]["activations"] < everything["parts"]["activations"]  # nothing kept below the band
    assert "DOES NOT FIT" in amnesia.describe_plan(band, band["total"] - 1)
    assert "fits" in amnesia.describe_plan(band, band["total"])


def test_ask_both_models_as_a_function_and_as_a_widget(amnesia, bundled, fresh_model):
    model, tokenizer = bundled
    models = {"original": model, "unlearned": fresh_model}
    replies = amnesia.compare_answers(models, tokenizer, "What is the capital of France?", max_new_tokens=12)
    assert set(replies) == {"original", "unlearned"} and all("Paris" in reply for reply in replies.values())
    with pytest.raises(amnesia.AmnesiaError, match="Type a question"):
        amnesia.compare_answers(models, tokenizer, "   ")
    box = amnesia.comparison_widget(models, tokenizer, "What is the capital of France?")
    (text, button), panel = box.children[0].children, box.children[1]
    button.click()  # what a click in the front end does
    assert "<b>original:</b>" in panel.value and "<b>unlearned:</b>" in panel.value and "Paris" in panel.value
    text.value = " "
    button.click()
    assert "Type a question" in panel.value


def test_drive_export_outside_colab_says_where_the_results_are(amnesia, tmp_path):
    with pytest.raises(amnesia.AmnesiaError, match=str(tmp_path)):
        amnesia.export_to_drive(tmp_path, in_colab=False)


def test_retain_and_heldout_sets_are_the_texts_then_the_chats(amnesia, bundled):
    _, tokenizer = bundled
    encoded = amnesia.encode_texts_and_chats(tokenizer, ["A plain sentence."], [("Who wrote Hamlet?", "Shakespeare.")])
    assert len(encoded) == 2
    assert list(encoded[0]["input_ids"]) == list(amnesia.encode_text_example(tokenizer, "A plain sentence.")["input_ids"])
    chat = amnesia.encode_chat_example(tokenizer, "Who wrote Hamlet?", "Shakespeare.")
    assert list(encoded[1]["input_ids"]) == list(chat["input_ids"]) and list(encoded[1]["labels"]) == list(chat["labels"])


def test_safety_report_draws_a_model_whose_answers_have_no_perplexity(amnesia):
    """A model that answers with nothing (a random one, or one broken by training) has an infinite fluency; the report
    still draws, with the finite points alone setting the fluency axis."""
    import matplotlib

    matplotlib.use("Agg")
    scores = {name: {"keyword": 1.0, "likelihood": 1.0} for name in amnesia.SET_COLOURS}
    evals = [{"step": step, "retain_accuracy": 0.5, "scores": scores, "fluency": fluency}
             for step, fluency in ((0, float("inf")), (10, 2.0), (20, float("inf")))]
    history = {"steps": [{"step": s, "forget_loss": 3.0 + s} for s in range(1, 21)], "evals": evals,
               "stop_step": 20, "kept_step": 10}
    figure = amnesia.plot_safety_report(history, "report")
    fluency_axis = figure.axes[-1]
    assert fluency_axis.get_ylim() == (0, 6.0)  # three times the first finite fluency
    history["evals"] = [dict(e, fluency=float("inf")) for e in evals]  # no finite point at all: no limits set, no error
    amnesia.plot_safety_report(history, "report")


def test_retain_answers_are_generated_once_and_the_cache_is_replaced_whole(amnesia, tmp_path, monkeypatch):
    """The cache is written beside its final name and moved into place, so a second process never reads half a file;
    questions already cached are not generated again."""
    asked = []

    def fake_generate(model, tokenizer, questions, max_new_tokens):
        asked.append(list(questions))
        return [f"answer to {q}" for q in questions]

    monkeypatch.setattr(amnesia, "generate_answers", fake_generate)
    written, write_text = [], amnesia.Path.write_text
    monkeypatch.setattr(amnesia.Path, "write_text", lambda path, *a, **k: written.append(path.name) or write_text(path, *a, **k))
    cache = tmp_path / "cache" / "retain.json"
    first = amnesia.on_policy_answers(None, None, ["A?", "B?"], cache)
    again = amnesia.on_policy_answers(None, None, ["B?", "C?"], cache)
    assert first == [("A?", "answer to A?"), ("B?", "answer to B?")] and again == [("B?", "answer to B?"), ("C?", "answer to C?")]
    assert asked == [["A?", "B?"], ["C?"]]  # B was read from the cache
    assert len(written) == 2 and "retain.json" not in written  # never written in place
    assert sorted(p.name for p in cache.parent.iterdir()) == ["retain.json"]  # and no partial file left behind
    assert set(json.loads(cache.read_text())) == {"A?", "B?", "C?"}
