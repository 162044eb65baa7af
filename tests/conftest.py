"""Shared fixtures: the notebook's function cells as a module, and the bundled model loaded once."""
import copy

import pytest

from notebook_loader import NOTEBOOK, load_notebook_functions  # noqa: F401  (NOTEBOOK is used by other tests)


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


@pytest.fixture
def tiny_run(amnesia, bundled):
    """Everything run_unlearning needs, on small tuning probe sets, one marked forget exchange and a short retain set."""
    reference, tokenizer = bundled
    pad = tokenizer.pad_token_id
    probe_sets = {name: probes[:2] for name, probes in amnesia.probe_sets_for(amnesia.HARRY_POTTER, "tuning").items()}
    answer, spans = amnesia.parse_marks("[Harry Potter] is a [wizard].")
    forget = [amnesia.encode_chat_example(tokenizer, "Who is Harry Potter?", answer, spans)]
    retain = [amnesia.encode_text_example(tokenizer, t) for t in amnesia.RETAIN_TEXTS[:3]]
    heldout = amnesia.collate([amnesia.encode_text_example(tokenizer, t) for t in amnesia.HELDOUT_TEXTS[:3]], pad, "cpu")
    watched = ["Who is Harry Potter?"]
    baseline = amnesia.measure(reference, reference, tokenizer, watched, probe_sets, heldout)
    baseline = {**amnesia.add_scores(baseline, baseline), "step": 0, "stop": None, "retention_ok": True}

    def run(model, steps=2, learning_rate=1e-5, rules=amnesia.StopRules(), retain_weight=1.0, eval_every=10,
            forget_loss="targeted_ga"):
        settings = amnesia.LoopSettings(learning_rate=learning_rate, retain_weight=retain_weight, max_steps=steps,
                                        eval_every=eval_every, forget_loss=forget_loss, retain_batch_size=2)
        return amnesia.run_unlearning(model, reference, tokenizer, watched, forget, retain, heldout, probe_sets,
                                      amnesia.select_trainable(model, "all"), settings, rules, baseline,
                                      amnesia.HARRY_POTTER.keywords)
    return run
