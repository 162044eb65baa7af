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
