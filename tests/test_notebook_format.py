"""The committed notebook: stripped of outputs, one parameters cell, prose before every function cell."""
import json
import re

from conftest import NOTEBOOK

CELLS = json.loads(NOTEBOOK.read_text())["cells"]


def test_committed_without_outputs():
    dirty = [i for i, c in enumerate(CELLS) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
    assert not dirty, f"cells with outputs: {dirty}"


def test_one_parameters_cell_with_colab_form_fields():
    tagged = [c for c in CELLS if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    assert len(re.findall(r"#@param", source)) >= 8


def test_every_function_cell_follows_prose():
    for index, cell in enumerate(CELLS):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and re.search(r"^def |^class ", source, re.M):
            assert "lib" in cell["metadata"].get("tags", []), f"function cell {index} is not tagged lib"
            previous = CELLS[index - 1]
            assert previous["cell_type"] == "markdown" or "lib" in previous["metadata"].get("tags", []), index
