"""Running the loop cell twice in one kernel gives the same run: it starts again from the original weights and reuses
the step-0 baseline measured once, as a presenter who presses the cell's run button again would expect."""
import json
import os
import re

import nbformat
from nbclient import NotebookClient

from conftest import NOTEBOOK

REPORT = ("import json\nprint(json.dumps({'losses': [round(s['loss'], 6) for s in history['steps']], "
          "'answers': [e['answer'] for e in history['evals']], 'kept': history['kept_step']}))")


def loop_cell_index(notebook):
    hits = [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and re.search(r"^history = run_unlearning\(", cell.source, re.M)]
    assert len(hits) == 1, hits
    return hits[0]


def test_running_the_loop_cell_twice_gives_the_same_run(tmp_path):
    environment = {"AMNESIA_MODEL": "bundled", "AMNESIA_OUTPUT_DIR": str(tmp_path), "AMNESIA_TOPIC": "custom",
                   "AMNESIA_MAX_STEPS": "2", "AMNESIA_EVAL_EVERY": "2"}  # the smallest run that trains and evaluates
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        loop = loop_cell_index(notebook)
        notebook.cells = notebook.cells[:loop + 1] + [nbformat.v4.new_code_cell(REPORT)]
        client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}})
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
            first = notebook.cells[-1].outputs[-1]["text"]
            client.execute_cell(notebook.cells[loop], loop)  # the presenter runs the loop cell again
            client.execute_cell(notebook.cells[-1], len(notebook.cells) - 1)
            second = notebook.cells[-1].outputs[-1]["text"]
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    first, second = json.loads(first), json.loads(second)
    assert len(first["losses"]) == 2 and first["answers"]
    assert first == second  # not a continuation of the first run: the same losses, answers and kept step
