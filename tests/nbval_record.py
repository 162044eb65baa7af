"""A pytest plugin for the nbval run of `make test`: keeps what every executed cell showed, so the end-to-end
assertions (tests/test_end_to_end.py) read that same run instead of executing the whole notebook a second time.

    AMNESIA_NBVAL_RECORD=cells.json python -m pytest -p nbval_record --nbval-lax targeted_amnesia.ipynb

Writes [{"id": cell id, "outputs": [...]}, ...] in execution order when the session ends."""
import json
import os
from pathlib import Path

RECORDED = []


def pytest_runtest_teardown(item):
    outputs = getattr(item, "test_outputs", None)  # set by nbval's cell item once the cell has run
    if outputs is not None and hasattr(item, "cell"):
        RECORDED.append({"id": item.cell.get("id"), "outputs": [dict(output) for output in outputs]})


def pytest_sessionfinish(session):
    path = os.environ.get("AMNESIA_NBVAL_RECORD")
    if path and RECORDED:
        Path(path).write_text(json.dumps(RECORDED, default=str))
