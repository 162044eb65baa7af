"""Runs the whole notebook headless on the bundled model with its default settings, as a user would."""
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import NOTEBOOK


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Execute the notebook once with MODEL=bundled; return (executed notebook, output folder)."""
    output_dir = tmp_path_factory.mktemp("outputs")
    environment = {"AMNESIA_MODEL": "bundled", "AMNESIA_OUTPUT_DIR": str(output_dir)}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(notebook, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(output_dir)}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return notebook, output_dir


def test_writes_the_report_the_metrics_and_the_model(run):
    _, output_dir = run
    assert (output_dir / "safety_report.png").stat().st_size > 10_000
    assert (output_dir / "model" / "config.json").exists()
    assert any((output_dir / "model").glob("*.safetensors"))
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["config"]["MODEL"] == "bundled" and metrics["steps"] and metrics["evals"]


def test_unlearning_worked_without_collateral_damage(run):
    _, output_dir = run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    losses = [s["forget_loss"] for s in metrics["steps"]]
    assert losses[-1] > losses[0] + 1, "forget loss did not rise"
    assert metrics["kept_step"] > 0, f"no evaluation point beat the original: {metrics['stop_reason']}"
    assert metrics["final_answer"] != metrics["baseline_answer"]
    before, after = metrics["retain_accuracy_before"], metrics["retain_accuracy_after"]
    assert abs(after - before) <= 0.05, f"held-out retain accuracy moved from {before:.3f} to {after:.3f}"


def test_held_out_probes_show_forgetting_and_retention(run):
    """Measured on the bundled model: forget keyword score 29 %, neighbour and general 87-100 %, fluency 1.0x."""
    _, output_dir = run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    after = metrics["scores_after"]
    assert metrics["originally_known"]["forget"]["keyword"] >= 5
    assert after["forget"]["keyword"] <= 0.5, after
    assert after["forget"]["likelihood"] < 1.0, after
    for name in ("neighbour", "general"):
        for measure in ("keyword", "likelihood"):
            assert after[name][measure] >= 0.85, (name, measure, after)
    assert metrics["fluency_after"] <= 1.5 * metrics["fluency_before"]
    assert metrics["seconds_total"] < 600


def test_baseline_verdict_and_live_log_are_shown(run):
    notebook, _ = run
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    assert "VERDICT: the model KNOWS the topic" in text
    assert "step   10/" in text and "retain acc" in text and "answer:" in text
    assert "stopped at step" in text and "kept the weights of step" in text
    assert "--- neighbour probes" in text  # the before/after table


def test_ablation_without_kl_damages_what_the_main_run_keeps(run):
    """Measured on the bundled model, same 30 steps: without KL general keyword 33 % and held-out accuracy 38.7 %,
    with KL 100 % and 43.8 %."""
    _, output_dir = run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert (output_dir / "ablation.png").stat().st_size > 10_000
    ablation, main = metrics["ablation"]["after"], metrics["scores_after"]
    assert metrics["ablation"]["steps"] == metrics["steps"][-1]["step"]
    damage = sum(main[name]["keyword"] - ablation["scores"][name]["keyword"] for name in ("neighbour", "general"))
    assert damage >= 0.4, (main, ablation["scores"])
    assert ablation["retain_accuracy"] < metrics["retain_accuracy_after"] - 0.02
