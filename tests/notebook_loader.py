"""Loads the notebook's `lib`-tagged cells (imports, constants, functions; never the demo) as a module."""
import json
import sys
import types
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "targeted_amnesia.ipynb"
LIBRARY_TAG = "lib"


def load_notebook_functions(path=NOTEBOOK):
    """Execute the notebook's `lib`-tagged cells, in order, into a fresh module."""
    module = types.ModuleType("targeted_amnesia")
    sys.modules[module.__name__] = module  # dataclasses look their module up here
    for cell in json.loads(Path(path).read_text())["cells"]:
        if LIBRARY_TAG in cell["metadata"].get("tags", []):
            exec(compile("".join(cell["source"]), f"{Path(path).name}:{cell.get('id')}", "exec"), module.__dict__)
    return module
