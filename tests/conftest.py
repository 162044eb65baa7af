"""Shared fixtures: the notebook's function cells as a module, and the bundled model loaded once."""
import copy
import json
import sys
import types
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "targeted_amnesia.ipynb"
LIBRARY_TAG = "lib"  # cells with this tag hold imports, constants and functions, never the demo


def load_notebook_functions(path=NOTEBOOK):
    """Execute the notebook's `lib`-tagged cells, in order, into a fresh module."""
    module = types.ModuleType("targeted_amnesia")
    sys.modules[module.__name__] = module  # dataclasses look their module up here
    for cell in json.loads(path.read_text())["cells"]:
        if LIBRARY_TAG in cell["metadata"].get("tags", []):
            exec(compile("".join(cell["source"]), f"{path.name}:{cell.get('id')}", "exec"), module.__dict__)
    return module


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
