"""The committed notebook: stripped of outputs, one parameters cell, prose before every function cell."""
import json
import re
import tokenize

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


def presenter_and_machinery():
    """(cells outside the machinery section, cells inside it), split at the section's own level-2 headings."""
    start = next(i for i, c in enumerate(CELLS) if c["cell_type"] == "markdown"
                 and "".join(c["source"]).startswith("## Appendix: machinery"))
    end = next(i for i in range(start + 1, len(CELLS)) if CELLS[i]["cell_type"] == "markdown"
               and re.match(r"#{1,2} ", "".join(CELLS[i]["source"])))
    return CELLS[:start] + CELLS[end:], CELLS[start:end]


def test_presenter_path_is_short_and_the_machinery_is_collapsed():
    outside, machinery = presenter_and_machinery()
    assert len(outside) <= 25, len(outside)
    code = ["".join(c["source"]) for c in outside if c["cell_type"] == "code"]
    assert all(source.count("\n") < 25 for source in code), [s.split("\n")[0] for s in code if s.count("\n") >= 25]
    loop = next(i for i, c in enumerate(outside) if "history = run_unlearning(" in "".join(c["source"]))
    assert loop < 15, loop
    words = sum(len("".join(c["source"]).split()) for c in outside if c["cell_type"] == "markdown")
    assert words <= 1500, words  # about 7 minutes of reading
    # every function and constant lives in the machinery, which Colab opens collapsed, one title per cell
    assert not any("lib" in c["metadata"].get("tags", []) for c in outside)
    assert all(c["metadata"].get("cellView") == "form" and "".join(c["source"]).startswith("#@title")
               for c in machinery if c["cell_type"] == "code")
    heading_id = machinery[0]["metadata"].get("id")
    notebook = json.loads(NOTEBOOK.read_text())
    assert heading_id and heading_id in notebook["metadata"]["colab"]["collapsed_sections"]


def names_used(source):
    """The identifiers a cell's code uses (not the words inside its strings or comments)."""
    lines = iter(line + "\n" for line in source.splitlines())
    return {token.string for token in tokenize.generate_tokens(lambda: next(lines, "")) if token.type == tokenize.NAME}


def test_no_cell_spreads_the_configuration_into_globals():
    sources = ["".join(c["source"]) for c in CELLS if c["cell_type"] == "code"]
    assert not any("globals()" in s for s in sources)
    reads = [s for s in sources if "CONFIG = validate_config(" in s]
    assert len(reads) == 1
    form = next("".join(c["source"]) for c in CELLS if "parameters" in c["metadata"].get("tags", []))
    names = set(re.findall(r"^([A-Z_]+) = .*#@param", form, re.M))
    assert len(names) >= 8
    story = [s for s in sources if s is not reads[0] and s != form]
    offenders = {n for s in story for n in names_used(s) & names}
    assert not offenders, f"cells read the form's globals instead of CONFIG: {sorted(offenders)}"
