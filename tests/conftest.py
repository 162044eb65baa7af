"""Shared fixtures: the notebook's function cells as a module, and the bundled model loaded once."""
import contextlib
import copy
import dataclasses
import os

import pytest

# No machine that runs these tests reaches the model hub. huggingface_hub reads this once, when it is first imported, so
# it is set before the notebook's cells import transformers; without it a hub id that does not exist waits on the
# network (46 s) before the error that the tests expect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from notebook_loader import NOTEBOOK, load_notebook_functions  # noqa: F401  (NOTEBOOK is used by other tests)


@contextlib.contextmanager
def environment(values):
    """Set environment variables for the duration of a `with` block (a notebook kernel started in it inherits them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def llama_style_tokenizer():
    """A small SentencePiece-style BPE tokenizer (Metaspace, prepend_scheme='first') with TinyLlama's chat format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    corpus = ["Harry Potter is a wizard in the series by J.K. Rowling.", "Who is Harry Potter?",
              "Harry Potter goes to Hogwarts.", "Who wrote the books? Rowling wrote them."] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    return tokenizer


@pytest.fixture(scope="session")
def amnesia():
    return load_notebook_functions()


@pytest.fixture(scope="session")
def bundled(amnesia):
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct on the CPU; treat as read-only."""
    source, _ = amnesia.resolve_model_source("bundled", has_gpu=False)
    return amnesia.load_model_and_tokenizer(source, "cpu")


@pytest.fixture
def fresh_model(bundled):
    """A private copy of the bundled model that a test may train."""
    return copy.deepcopy(bundled[0])


@pytest.fixture(scope="session")
def tiny_data(amnesia, bundled):
    """The loop's data on small tuning probe sets, one marked forget exchange and a short retain set, with the
    original's step-0 baseline measured once for the whole session (the loop only reads it)."""
    reference, tokenizer = bundled
    pad = tokenizer.pad_token_id
    probe_sets = {name: probes[:2] for name, probes in amnesia.probe_sets_for(amnesia.HARRY_POTTER, "tuning").items()}
    answer, spans = amnesia.parse_marks("[Harry Potter] is a [wizard].")
    forget = [amnesia.encode_chat_example(tokenizer, "Who is Harry Potter?", answer, spans)]
    retain = [amnesia.encode_text_example(tokenizer, t) for t in amnesia.RETAIN_TEXTS[:3]]
    heldout = amnesia.collate([amnesia.encode_text_example(tokenizer, t) for t in amnesia.HELDOUT_TEXTS[:3]], pad, "cpu")
    watched = ["Who is Harry Potter?"]
    baseline = amnesia.measure_step_zero(reference, reference, tokenizer, watched, probe_sets, heldout)
    return amnesia.UnlearningData(tokenizer, watched, forget, retain, heldout, probe_sets, baseline,
                                  amnesia.HARRY_POTTER.keywords)


@pytest.fixture
def tiny_run(amnesia, bundled, tiny_data):
    """run_unlearning on `tiny_data` with small settings; each test passes the model it trains."""
    reference = bundled[0]
    baseline = copy.deepcopy(tiny_data.baseline)  # each test its own copy: no test can change what the next one reads

    def run(model, steps=2, learning_rate=1e-5, rules=amnesia.StopRules(), retain_weight=1.0, eval_every=10,
            forget_loss="targeted_ga", precision="auto", trainable="all", frozen_reference=None, forget_examples=None):
        settings = amnesia.LoopSettings(learning_rate=learning_rate, retain_weight=retain_weight, max_steps=steps,
                                        eval_every=eval_every, forget_loss=forget_loss, retain_batch_size=2,
                                        precision=precision, rules=rules)
        amnesia.select_trainable(model, trainable)
        chosen = dataclasses.replace(run.data, forget_examples=forget_examples or run.data.forget_examples)
        return amnesia.run_unlearning(model, frozen_reference or reference, chosen, settings)
    run.data = dataclasses.replace(tiny_data, baseline=baseline)  # for tests that call the loop's relatives (the ablation)
    return run
