"""Compare forgetting methods on the bundled model with the notebook's own functions.

Every row runs the notebook's loop (`run_unlearning`) with the same data, step budget and stop rules; the loop and
its checkpoint choice read only the TUNING half of the probes. The table reports the TEST half, measured once on the
kept weights. Rows are resumable: each finished (row, seed) is stored in the JSON file and skipped next time.

    python benchmarks/unlearning_sweep.py                 # all rows, 3 seeds
    python benchmarks/unlearning_sweep.py --quick         # a first look: 3 rows, 1 seed, 20 steps, no attacks
    python benchmarks/unlearning_sweep.py --rows targeted_npo,npo --seeds 0
    python benchmarks/unlearning_sweep.py --table-only      # the table of what is stored, nothing run
    python benchmarks/unlearning_sweep.py --rows targeted_npo_lr6e-5 --seeds 0 --redo   # again, with the attacks
"""
import argparse
import copy
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from notebook_loader import load_notebook_functions  # noqa: E402

# name -> (forget loss, retain weight, learning rate[, trainable weights]); retain weight None means the notebook's
# default, trainable "all" unless written. The learning rate is always written out, so a stored row keeps its meaning
# when the notebook's default changes.
ROWS = {
    "gradient_ascent": ("gradient_ascent", None, 3e-5),
    "npo": ("npo", None, 3e-5),
    "targeted_ga_harry_marked": ("targeted_ga", None, 3e-5),
    "targeted_npo_harry_marked": ("targeted_npo", None, 3e-5),
    "targeted_npo_lr1e-5_harry_marked": ("targeted_npo", None, 1e-5),
    "targeted_npo_no_kl_harry_marked": ("targeted_npo", 0.0, 3e-5),
    "targeted_npo": ("targeted_npo", None, 3e-5),
    "targeted_npo_lr6e-5": ("targeted_npo", None, 6e-5),
    "targeted_npo_lr1e-4": ("targeted_npo", None, 1e-4),
    # a stronger pull back towards the reference (RETAIN_WEIGHT 10 instead of 5), so that a higher rate may stay within
    # the retention tolerances longer
    "targeted_npo_lr1e-4_rw10": ("targeted_npo", 10.0, 1e-4),
    "targeted_simnpo": ("targeted_simnpo", None, 6e-5),
    "rmu": ("rmu", None, 1e-3),
    "idk": ("idk", None, 3e-5),
    # the subset a 1.1B model trains on a T4 (the MLPs of the middle fifth of the layers), tried on the bundled model:
    # how far must the learning rate go up when only an eighth of the weights may move?
    "targeted_npo_middle_mlp_lr6e-5": ("targeted_npo", None, 6e-5, "middle-mlp"),
    "targeted_npo_middle_mlp_lr1e-4": ("targeted_npo", None, 1e-4, "middle-mlp"),
    "targeted_npo_middle_mlp_lr3e-4": ("targeted_npo", None, 3e-4, "middle-mlp"),
    # the other families of methods: alternative answers, preference, a causal-intervention teacher, adapters
    "relabel": ("relabel", None, 6e-5),
    "idk_dpo": ("idk_dpo", None, 6e-5),
    "name_swap_teacher": ("name_swap_teacher", None, 6e-5),
    "name_swap_teacher_lr2e-5": ("name_swap_teacher", None, 2e-5),
    "targeted_npo_lora_lr3e-4": ("targeted_npo", None, 3e-4, "lora"),
    "targeted_npo_lora_lr1e-3": ("targeted_npo", None, 1e-3, "lora"),
    # the retain set with the questions about other stories' characters and authors (the notebook's OTHER_STORIES_QUESTIONS)
    "targeted_npo_lr1e-4_more_retain": ("targeted_npo", None, 1e-4),
}
# rows trained with the first name "Harry" marked as well, as the preset had it before the sweep showed that pushing
# it hurts Harry Houdini (a neighbour probe); only the targeted losses read the marks
MARKED_WORDS = {name: ("Harry",) for name in ROWS if name.endswith("_harry_marked")}
MORE_RETAIN_ROWS = {name for name in ROWS if name.endswith("_more_retain")}
MEASURES = ("keyword", "likelihood")
DEFAULT_ROW = "targeted_npo_lr1e-4_more_retain"  # the notebook's default settings on the bundled model
QUICK_ROWS = ("gradient_ascent", "npo", DEFAULT_ROW)  # --quick: the two classic baselines and the default


def notebook_defaults(amnesia):
    """MAX_STEPS, EVAL_EVERY, NPO_BETA as written in the notebook's form; LEARNING_RATE and RETAIN_WEIGHT from its
    defaults for small models (the form says 'auto' for them)."""
    source = "".join(next(c for c in json.loads((HERE.parent / "targeted_amnesia.ipynb").read_text())["cells"]
                          if "parameters" in c["metadata"].get("tags", []))["source"])
    values = {}
    for line in source.splitlines():
        name, _, rest = line.partition("=")
        if name.strip() in ("MAX_STEPS", "EVAL_EVERY", "NPO_BETA"):
            values[name.strip()] = float(rest.split("#")[0])
    small = amnesia.defaults_for(135e6)
    return {**values, "LEARNING_RATE": small.learning_rate, "RETAIN_WEIGHT": small.retain_weight}


def mark_words(answer, words):
    """The answer with every unmarked `word` marked, joined to a mark that follows it:
    "Harry [Potter]" -> "[Harry Potter]", "Harry's" -> "[Harry]'s"."""
    for word in words:
        answer = re.sub(rf"\b{re.escape(word)} \[", f"[{word} ", answer)
        answer = re.sub(rf"(?<!\[)\b{re.escape(word)}\b", f"[{word}]", answer)
    return answer


def retain_questions_for(amnesia, more):
    """The retain questions a row trains on: with `more`, the notebook's with its OTHER_STORIES_QUESTIONS (added after
    the first rows ran); without, the notebook's less those, the set every other row ran with."""
    later = amnesia.OTHER_STORIES_QUESTIONS
    if more:
        return list(amnesia.RETAIN_QUESTIONS) + [q for q in later if q not in amnesia.RETAIN_QUESTIONS]
    return [q for q in amnesia.RETAIN_QUESTIONS if q not in later]


def prepare(amnesia, topic_name, retain_questions=None):
    """Model, reference, data and step-0 measurements, shared by every row of the same retain questions (the
    notebook's unless given)."""
    topic = amnesia.TOPIC_PRESETS[topic_name]
    source, _ = amnesia.resolve_model_source("bundled", has_gpu=False)
    model, tokenizer = amnesia.load_model_and_tokenizer(source, "cpu")
    reference = amnesia.make_frozen_reference(model)
    forget = [amnesia.encode_chat_example(tokenizer, q, *amnesia.parse_marks(a)) for q, a in topic.forget_exchanges]
    probes = amnesia.probe_sets_for(topic)
    generic = topic.keywords + tuple(amnesia.topic_name(topic.question).lower().split())
    generated = amnesia.on_policy_answers(reference, tokenizer, retain_questions or amnesia.RETAIN_QUESTIONS,
                                          amnesia.retain_cache_file(source))
    retain_chats, _ = amnesia.drop_leaking_retain(generated, probes, generic)
    retain = amnesia.encode_texts_and_chats(tokenizer, amnesia.RETAIN_TEXTS, retain_chats)
    heldout = amnesia.collate(amnesia.encode_texts_and_chats(tokenizer, amnesia.HELDOUT_TEXTS, amnesia.HELDOUT_CHATS),
                              tokenizer.pad_token_id, "cpu")
    watched = [topic.question, topic.heldout_question]
    tuning, test = amnesia.probe_sets_for(topic, "tuning"), amnesia.probe_sets_for(topic, "test")
    baseline = amnesia.measure_step_zero(model, reference, tokenizer, watched, tuning, heldout)
    test_before = amnesia.measure_step_zero(model, reference, tokenizer, watched, test, heldout)
    return dict(topic=topic, topic_name=topic_name, cache_file=amnesia.retain_cache_file(source), probes=probes, model=model, reference=reference, tokenizer=tokenizer, forget=forget, retain=retain,
                heldout=heldout, watched=watched, tuning=tuning, test=test, baseline=baseline, test_before=test_before)


def run_row(amnesia, data, loss, retain_weight, learning_rate, seed, defaults, max_steps, marked=(), trainable="all",
            attack_steps=12):
    """One row and seed: unlearn a fresh copy of the original, return tuning and test figures."""
    import transformers

    transformers.set_seed(seed)
    model = copy.deepcopy(data["reference"]).requires_grad_(True)
    settings = amnesia.LoopSettings(learning_rate=defaults["LEARNING_RATE"] if learning_rate is None else learning_rate,
                                    retain_weight=defaults["RETAIN_WEIGHT"] if retain_weight is None else retain_weight,
                                    max_steps=max_steps, eval_every=int(defaults["EVAL_EVERY"]), forget_loss=loss,
                                    npo_beta=defaults["NPO_BETA"], seed=seed)
    started = time.time()
    exchanges = [(q, mark_words(a, marked)) for q, a in data["topic"].forget_exchanges]
    forget = ([amnesia.encode_chat_example(data["tokenizer"], q, *amnesia.parse_marks(a)) for q, a in exchanges]
              if marked else data["forget"])
    forget, _ = amnesia.forget_training_set(loss, data["reference"], data["tokenizer"], exchanges, forget,
                                            data["topic"].keywords, data["cache_file"], data["probes"])  # as the notebook
    trainable_params = amnesia.select_trainable(model, "rmu" if loss == "rmu" else trainable)
    original_weights = amnesia.snapshot(trainable_params)
    loop_data = amnesia.UnlearningData(data["tokenizer"], data["watched"], forget, data["retain"], data["heldout"],
                                       data["tuning"], data["baseline"], data["topic"].keywords)
    history = amnesia.run_unlearning(model, data["reference"], loop_data, settings)
    loop_seconds = time.time() - started
    kept = next(e for e in history["evals"] if e["step"] == history["kept_step"])
    tested = test_figures(amnesia, data, model)
    attacks = None
    if attack_steps:  # section 8 of the notebook, on the kept weights (a LoRA row merged, as the notebook does)
        attacks = amnesia.run_attacks(model, data["reference"], data["tokenizer"], trainable_params, original_weights,
                                      data["topic"], amnesia.EXTRACTION_PROMPTS.get(data["topic_name"], ()), attack_steps)
    return {"attacks": attacks and {"attacked": attacks["attacked"], "extraction_keyword": attacks["extraction"]["keyword"],
                                    "extraction_likelihood": attacks["extraction"]["likelihood"],
                                    "recovered_fraction": attacks["relearning"]["recovered_fraction"],
                                    "control_fraction": attacks["relearning"]["control_fraction"],
                                    "latent_refitted": attacks["latent"]["refitted"], "steps": attack_steps},
            "kept_step": history["kept_step"], "learning_rate": settings.learning_rate, "stop_reason": history["stop_reason"], "loop_seconds": loop_seconds,
            "eval_seconds": history["eval_seconds"],
            "tuning": {name: kept["scores"][name] for name in kept["scores"]},
            "tuning_last": {"step": history["evals"][-1]["step"], **history["evals"][-1]["counts"]}, **tested}


def test_figures(amnesia, data, model):
    """The TEST half measured once on `model` (reported only): k/n per set and measure, forget probes by kind, fluency
    and held-out accuracy against the original, and the watched answers."""
    after = amnesia.add_scores(amnesia.measure(model, data["reference"], data["tokenizer"], data["watched"], data["test"],
                                               data["heldout"], data["test_before"]), data["test_before"])
    by_kind = {kind: amnesia.kind_counts(after, data["test"]["forget"], data["test_before"], kind)
               for kind in ("paraphrase", "unseen")}
    return {"test": {name: {m: list(after["counts"][name][m]) for m in MEASURES} for name in after["counts"]},
            "test_forget_by_kind": {k: {m: list(v[m]) for m in MEASURES} for k, v in by_kind.items()},
            "fluency_ratio": after["fluency"] / data["test_before"]["fluency"],
            "accuracy_change": after["retain_accuracy"] - data["test_before"]["retain_accuracy"],
            "watched_after": after["watched_answers"],
            "watched_names_topic": [bool(amnesia.topic_keywords_in(a, data["topic"].keywords))
                                    for a in after["watched_answers"]]}


def share(counts):
    k, n = counts
    return k / n if n else float("nan")


def mean_spread(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.0f} ± {100 * spread:.0f}"


def named(run):
    """How many of the watched answers (trained question, held-out question) still name a topic keyword, as k/n."""
    flags = run.get("watched_names_topic")
    return "-" if flags is None else f"{sum(flags)}/{len(flags)}"


def attack_cells(runs):
    """The attack columns: extraction k/n, recovered (control) fraction and refitted latent probe k/n, per seed."""
    done = [r["attacks"] for r in runs if r.get("attacks")]
    if not done:
        return "- | - | -"
    fraction = lambda f: "-" if f is None else f"{100 * f:.0f} %"
    return (", ".join(f"{a['extraction_keyword'][0]}/{a['extraction_keyword'][1]}" for a in done) + " | "
            + ", ".join(f"{fraction(a['recovered_fraction'])} ({fraction(a['control_fraction'])})" for a in done) + " | "
            + ", ".join(f"{a['latent_refitted'][0]}/{a['latent_refitted'][1]}" for a in done))


def table(results, rows):
    """Markdown table of the test-half figures, mean ± spread over seeds (k/n of the first seed in brackets)."""
    header = ("| row | seeds | forget kw kept: paraphrase / unseen | forget lik kept: paraphrase / unseen | "
              "neighbour kw / lik | general kw / lik | fluency × | held-out acc Δ (pts) | watched answers naming a topic keyword | "
              "kept step | loop min (evaluation %) | extraction kw still given away | relearning: recovered (control) | "
              "latent probe, refitted |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for row in rows:
        runs = [r for key, r in results.items() if key.split("@")[0] == row]
        if not runs:
            continue
        first = runs[0]
        kinds = lambda m: " / ".join(f"{mean_spread([share(r['test_forget_by_kind'][k][m]) for r in runs])} "
                                     f"({first['test_forget_by_kind'][k][m][0]}/{first['test_forget_by_kind'][k][m][1]})"
                                     for k in ("paraphrase", "unseen"))
        sets = lambda name: " / ".join(f"{mean_spread([share(r['test'][name][m]) for r in runs])} "
                                       f"({first['test'][name][m][0]}/{first['test'][name][m][1]})" for m in MEASURES)
        retain_weight = ROWS[row][1] if row in ROWS else None  # written only where it is not the notebook's
        settings = f"lr {first['learning_rate']:g}" + ("" if retain_weight is None else f", retain weight {retain_weight:g}")
        lines.append(f"| {row} ({settings}) | {len(runs)} | {kinds('keyword')} | {kinds('likelihood')} | {sets('neighbour')} | "
                     f"{sets('general')} | {statistics.mean(r['fluency_ratio'] for r in runs):.2f} | "
                     f"{100 * statistics.mean(r['accuracy_change'] for r in runs):+.1f} | "
                     f"{', '.join(named(r) for r in runs)} | "
                     f"{', '.join(str(r['kept_step']) for r in runs)} | "
                     f"{statistics.mean(r['loop_seconds'] for r in runs) / 60:.1f} "
                     f"({100 * statistics.mean(r['eval_seconds'] / r['loop_seconds'] for r in runs):.0f} %) | "
                     f"{attack_cells(runs)} |")
    return "\n".join(lines)


def best_on_tuning(results, rows):
    """The row whose kept checkpoints forgot most on the TUNING probes, mean over the seeds that every row has run:
    likelihood first (what the model still knows), keyword (what it still says) to break ties. A refusal that hides
    the facts cannot win on words alone, and a row is not favoured by having fewer (luckier) seeds."""
    present = [row for row in rows if any(key.split("@")[0] == row for key in results)]
    seeds_of = lambda row: {key.split("@")[1] for key in results if key.split("@")[0] == row}
    shared = set.intersection(*map(seeds_of, present)) if present else set()

    def rank(row):
        runs = [r for key, r in results.items() if key.split("@")[0] == row and (not shared or key.split("@")[1] in shared)]
        return (round(statistics.mean(r["tuning"]["forget"]["likelihood"] for r in runs), 3),
                statistics.mean(r["tuning"]["forget"]["keyword"] for r in runs))
    return min(present, key=rank) if present else None


def write_section(path, text, marker="<!-- results of other scripts below; benchmark.py keeps them -->"):
    """Put the sweep's section into results.md below the marker, replacing an earlier one."""
    before, _, after = path.read_text().partition(marker) if path.exists() else ("", "", "")
    start = after.find("## Forgetting methods side by side")
    if start >= 0:
        end = after.find("\n## ", start + 1)
        after = after[:start] + (after[end + 1:] if end >= 0 else "")
    path.write_text(before.rstrip("\n") + f"\n\n{marker}\n\n" + text.rstrip("\n") + "\n\n" + after.strip("\n") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=None, help="comma-separated rows (default: all): " + ", ".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="a first look (13 min 45 s measured on 2 cores): the rows "
                        f"{', '.join(QUICK_ROWS)} (unless --rows), seed 0, 20 steps, no attacks (unless --attack-steps); "
                        "the table is printed, results.md and the figure are left alone (unless --write, --figure)")
    parser.add_argument("--topic", default="Harry Potter")
    parser.add_argument("--results", default=str(HERE / "sweep_results.json"))
    parser.add_argument("--table-only", action="store_true", help="run nothing: tabulate the stored results")
    parser.add_argument("--redo", action="store_true", help="run the chosen rows and seeds again even if stored "
                        "(for example to add the attack columns to a row run before them)")
    parser.add_argument("--attack-steps", type=int, default=None, help="relearning steps of the attacks on each kept "
                        "model (default 12, the notebook's ATTACK_STEPS; 0 with --quick); 0 skips the attacks")
    parser.add_argument("--write", default=None, help="results file to put the table into ('' for none; default "
                        "benchmarks/results.md, none with --quick)")
    parser.add_argument("--figure", default=None, help="where to draw the notebook's trade-off figure of the chosen rows "
                        "('' for none; default docs/tradeoff.png, none with --quick)")
    args = parser.parse_args()
    quick_or = lambda value, quick, full: value if value is not None else (quick if args.quick else full)
    args.attack_steps = quick_or(args.attack_steps, 0, 12)
    args.write = quick_or(args.write, "", str(HERE / "results.md"))
    args.figure = quick_or(args.figure, "", str(HERE.parent / "docs" / "tradeoff.png"))
    rows = [r for r in quick_or(args.rows, ",".join(QUICK_ROWS), ",".join(ROWS)).split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    amnesia = load_notebook_functions()
    defaults = notebook_defaults(amnesia)
    max_steps = 20 if args.quick else int(defaults["MAX_STEPS"])
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    todo = [] if args.table_only else [(row, seed) for row in rows for seed in seeds
                                       if args.redo or f"{row}@{seed}@{max_steps}" not in results]
    print(f"{len(todo)} runs to do, {max_steps} steps each; defaults {defaults}", flush=True)
    if todo:
        prepared = {}  # by retain set: the notebook's, or with more questions
        from tqdm.auto import tqdm
        for row, seed in tqdm(todo, desc="sweep"):
            more = row in MORE_RETAIN_ROWS
            if more not in prepared:
                prepared[more] = prepare(amnesia, args.topic, retain_questions_for(amnesia, more))
            data = prepared[more]
            loss, retain_weight, learning_rate, *trainable = ROWS[row]
            results[f"{row}@{seed}@{max_steps}"] = run_row(amnesia, data, loss, retain_weight, learning_rate, seed,
                                                           defaults, max_steps, MARKED_WORDS.get(row, ()),
                                                           *(trainable or ["all"]), attack_steps=args.attack_steps)
            path.write_text(json.dumps(results, indent=1))  # resumable: a finished run is never redone
    if not args.quick:  # the table and the figure show every stored row and seed, not only the ones run now
        rows = list(ROWS)
    seeds = sorted({int(key.split("@")[1]) for key in results if key.endswith(f"@{max_steps}")})
    chosen = {key: value for key, value in results.items() if key.endswith(f"@{max_steps}")}
    text = (f"## Forgetting methods side by side (`benchmarks/unlearning_sweep.py`)\n\n"
            f"Bundled SmolLM2-135M-Instruct, topic {args.topic}, {max_steps} steps at most, seeds {seeds}, the notebook's "
            f"defaults otherwise ({', '.join(f'{k}={v:g}' for k, v in defaults.items())}). TEST half of the probes, "
            f"kept share of what the original knew, mean ± spread over seeds in %, k/n of the first seed in brackets. "
            f"Each run kept the checkpoint its tuning probes chose.\n\n{table(chosen, rows)}\n\n"
            f"Best on the TUNING half, over the seeds every row has run (each kept checkpoint already has retention "
            f"within tolerance; likelihood kept first, keyword kept to break ties): "
            f"**{best_on_tuning(chosen, rows)}**.\n")
    unattacked = {row: sorted((key.split("@")[1] for key, value in chosen.items()
                               if key.split("@")[0] == row and not value.get("attacks")), key=int)
                  for row in rows}
    unattacked = {row: seeds for row, seeds in unattacked.items() if seeds}
    if unattacked:
        text += (f"\nThe attack columns (notebook section 8: extraction prompts, relearning with {args.attack_steps} steps and its "
                 f"control, the refitted latent probe, one figure per seed) leave out the seeds run before the attacks "
                 f"existed: " + "; ".join(f"{row} (seed{'s' * (len(seeds) > 1)} {', '.join(seeds)})" for row, seeds in unattacked.items())
                 + ". `--redo` with those seeds runs them again with the attacks.\n")
    missing = [row for row in rows if not any(key.split("@")[0] == row for key in chosen)]
    if missing:
        text += f"\nNot run yet with these settings: {', '.join(missing)}.\n"
    print(text)
    if args.write:
        write_section(Path(args.write), text)
    if args.figure:  # the notebook's own figure (section 10), of the rows and seeds chosen here
        shown = {key: value for key, value in chosen.items() if key.split("@")[0] in rows}
        amnesia.plot_tradeoff(amnesia.tradeoff_points(shown, max_steps), DEFAULT_ROW).savefig(args.figure, dpi=120)
        print("trade-off figure:", args.figure)


if __name__ == "__main__":
    main()
