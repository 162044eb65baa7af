"""The parts of benchmarks/gpu_check.py that need no GPU: the stand-in tokenizer and the cell timings."""
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_the_stand_in_tokenizer_decodes_every_id_of_tinyllamas_vocabulary():
    tokenizer = gpu_check.standin_tokenizer(32000)
    trained = len(gpu_check.llama_style_tokenizer())  # the small tokenizer's own pieces come first
    assert len(tokenizer) == 32000 and trained < 1000
    assert all(tokenizer.decode([token_id]).strip() for token_id in range(0, 32000, 97))
    assert tokenizer.decode([31999, trained]) == f"zq{31999 - trained}xzq0x"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Who is Harry Potter?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|user|>\nWho is Harry Potter?</s>\n<|assistant|>\n"  # TinyLlama's chat format


def test_cell_seconds_reads_nbclients_timestamps():
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata["execution"] = {"iopub.execute_input": "2026-11-27T06:00:00.000000Z",
                                  "shell.execute_reply": "2026-11-27T06:01:02.500000Z"}
    assert gpu_check.cell_seconds(cell) == 62.5
    assert gpu_check.cell_seconds(nbformat.v4.new_code_cell("1")) is None  # never executed


def test_the_standin_cell_makes_a_forced_float16_take_bfloat16_with_the_loss_scaler_before_the_precision_is_read():
    from notebook_loader import NOTEBOOK, load_notebook_functions

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    at = gpu_check.insert_standin_cell(notebook)
    assert notebook.cells[at].source == gpu_check.STANDIN_CELL and "resolve_precision(DEVICE" in notebook.cells[at + 1].source
    amnesia = load_notebook_functions()  # a fresh copy: the cell rebinds one of its functions
    exec(gpu_check.STANDIN_CELL, amnesia.__dict__)
    chosen = amnesia.resolve_precision("cpu", "float16")
    assert (chosen.name, chosen.scaled) == ("bfloat16", True) and "cannot autocast to float16" in chosen.note
