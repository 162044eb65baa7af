"""Converts the bundled model and caches the reference's answers to the retain questions, once, before `make test`
runs the two halves of its unit tests side by side (two processes must not write one cache at once)."""
import time

from notebook_loader import load_notebook_functions

if __name__ == "__main__":
    started = time.time()
    nb = load_notebook_functions()
    source, _ = nb.resolve_model_source("bundled", has_gpu=False)
    model, tokenizer = nb.load_model_and_tokenizer(source, "cpu")
    answers = nb.on_policy_answers(model, tokenizer, nb.RETAIN_QUESTIONS, nb.retain_cache_file(source))
    print(f"bundled model in {source}; {len(answers)} retain answers cached in {nb.retain_cache_file(source)} "
          f"({time.time() - started:.0f} s)")
