"""The whole notebook on a 2-step budget with the other preset and another loss (the Makefile's NBVAL_SMOKE
settings, with one evaluation point instead of two), with the loop cell run a second time in the same kernel before
the cells after it: the second run starts again from the original weights and reuses the step-0 baseline measured
once, as a presenter who presses the cell's run button again would expect, and every later cell still runs on it."""
import json
import re

import nbformat
from nbclient import NotebookClient

from conftest import NOTEBOOK, environment

SMOKE = {"AMNESIA_MODEL": "bundled", "AMNESIA_MAX_STEPS": "2", "AMNESIA_EVAL_EVERY": "2", "AMNESIA_TOPIC": "The Beatles",
         "AMNESIA_FORGET_LOSS": "rmu", "AMNESIA_RUN_ABLATION": "0", "AMNESIA_ATTACK_STEPS": "2"}
REPORT = ("import json\nprint(json.dumps({'losses': [round(s['loss'], 6) for s in history['steps']], "
          "'answers': [e['answer'] for e in history['evals']], 'kept': history['kept_step']}))")


def loop_cell_index(notebook):
    hits = [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and re.search(r"^history = run_unlearning\(", cell.source, re.M)]
    assert len(hits) == 1, hits
    return hits[0]


def test_running_the_loop_cell_twice_gives_the_same_run_and_every_cell_runs_after_it(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    loop = loop_cell_index(notebook)
    report = nbformat.v4.new_code_cell(REPORT)
    with environment({**SMOKE, "AMNESIA_OUTPUT_DIR": str(tmp_path)}):
        client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}})
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells[:loop + 1]):
                client.execute_cell(cell, index)
            client.execute_cell(report, loop + 1)
            first = report.outputs[-1]["text"]
            client.execute_cell(notebook.cells[loop], loop)  # the presenter runs the loop cell again
            client.execute_cell(report, loop + 1)
            second = report.outputs[-1]["text"]
            for index, cell in enumerate(notebook.cells[loop + 1:], start=loop + 1):
                client.execute_cell(cell, index)
    first, second = json.loads(first), json.loads(second)
    assert len(first["losses"]) == 2 and len(first["answers"]) == 2  # step 0 (the baseline) and step 2
    assert first == second  # not a continuation of the first run: the same losses, answers and kept step
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # written by the last cells, after the second run
    assert metrics["config"]["TOPIC"] == "The Beatles" and len(metrics["steps"]) == 2


CUSTOM = {"AMNESIA_MODEL": "bundled", "AMNESIA_TOPIC": "custom", "AMNESIA_FORGET_QUESTION": "Who is Sherlock Holmes?",
          "AMNESIA_FORGET_TARGET": "Sherlock Holmes is a detective in London created by Arthur Conan Doyle.",
          "AMNESIA_CONTINUE_IF_UNKNOWN": "1", "AMNESIA_MAX_STEPS": "1", "AMNESIA_EVAL_EVERY": "1",
          "AMNESIA_RUN_ABLATION": "0", "AMNESIA_ATTACK_STEPS": "2"}


def test_a_custom_topic_runs_every_cell_and_says_what_it_cannot_measure(tmp_path):
    """A custom topic is one question and one target, with automatic marks and no multiple-choice facts: every cell
    must still run, the attacks must be skipped with a reason, and the professor's answers must not read 0/0 as a
    verdict."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with environment({**CUSTOM, "AMNESIA_OUTPUT_DIR": str(tmp_path)}):
        NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                        for output in cell.outputs)
    assert "[Sherlock Holmes]" in printed  # the automatic marks, shown
    assert "Attacks skipped: they need the topic's multiple-choice facts" in printed
    assert "The original knew none of the probed facts" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["TOPIC"] == "custom" and metrics["attacks"] is None and len(metrics["steps"]) == 1
    assert metrics["test"]["counts_after"]["forget"] == {"keyword": [0, 0], "likelihood": [0, 0]}
