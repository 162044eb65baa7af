# Entry points: `make run` (the notebook headless on the bundled model), `make test`, and `make colab-check`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
OUTPUT_DIR ?= outputs
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED := 0
NBVAL_OUTPUT_DIR := $(shell mktemp -d -u /tmp/amnesia-nbval-XXXXXX)
RUN_DIR := $(shell mktemp -d -u /tmp/amnesia-run-XXXXXX)
COLAB_VENV ?= .venv-colab
NBVAL := -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=3600 -p no:cacheprovider
# every cell of the notebook on a 2-step budget, with the other preset and another loss (tests/test_rerun.py runs
# these settings with one evaluation point, and the loop cell run twice)
NBVAL_SMOKE := AMNESIA_MODEL=bundled AMNESIA_MAX_STEPS=2 AMNESIA_EVAL_EVERY=1 AMNESIA_OUTPUT_DIR=$(NBVAL_OUTPUT_DIR) \
  AMNESIA_TOPIC="The Beatles" AMNESIA_FORGET_LOSS=rmu AMNESIA_RUN_ABLATION=0 AMNESIA_ATTACK_STEPS=2

.PHONY: install run test colab-check clean

install: $(VENV)/installed

$(VENV)/installed: requirements.txt requirements-dev.txt requirements-tools.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: install
	mkdir -p $(OUTPUT_DIR)
	AMNESIA_MODEL=$${AMNESIA_MODEL:-bundled} AMNESIA_OUTPUT_DIR=$(abspath $(OUTPUT_DIR)) \
	  $(PYTHON) -m jupyter nbconvert --to notebook --execute targeted_amnesia.ipynb \
	  --ExecutePreprocessor.timeout=-1 --output-dir $(OUTPUT_DIR)
	@echo "Executed notebook, safety_report.png, metrics.json and model/ are in $(OUTPUT_DIR)/"

# The unit tests, then every cell with nbval on the default settings, recording what each cell showed, then the
# end-to-end assertions on that same run (tests/test_end_to_end.py executes the notebook itself when run alone).
# The unit tests run in two halves side by side, half the cores each: the notebook on a 2-step budget run twice, then
# on a custom topic (test_rerun.py), and all the others. They gain little from a second thread (on 2 cores, the first
# test of test_rerun.py took 287 s with one and 247 s with two), while the default run's training steps gain nearly
# twofold, so nbval keeps all the cores. The bundled model's conversion and retain answers are cached first: the
# halves must not write them at once.
JOB_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n > 1 ? n / 2 : 1 )))

test: install
	$(VENV)/bin/nbstripout --verify targeted_amnesia.ipynb
	mkdir -p $(RUN_DIR)
	PYTHONPATH=tests $(PYTHON) tests/prepare_bundled.py
	@echo "unit tests in two halves side by side, $(JOB_THREADS) thread(s) each; test_rerun.py's log follows the others'"
	OMP_NUM_THREADS=$(JOB_THREADS) $(PYTHON) -m pytest tests/test_rerun.py -v > $(RUN_DIR)/test_rerun.log 2>&1 & rerun=$$!; \
	OMP_NUM_THREADS=$(JOB_THREADS) $(PYTHON) -m pytest tests -v --durations=5 --ignore=tests/test_end_to_end.py \
	  --ignore=tests/test_rerun.py; others=$$?; \
	wait $$rerun; rerun=$$?; cat $(RUN_DIR)/test_rerun.log; \
	echo "unit tests: exit status $$others, test_rerun.py: exit status $$rerun"; test $$others -eq 0 && test $$rerun -eq 0
	AMNESIA_MODEL=bundled AMNESIA_OUTPUT_DIR=$(RUN_DIR) AMNESIA_NBVAL_RECORD=$(RUN_DIR)/nbval_cells.json \
	  PYTHONPATH=tests $(PYTHON) $(NBVAL) -p nbval_record targeted_amnesia.ipynb
	AMNESIA_FINISHED_RUN=$(RUN_DIR) $(PYTHON) -m pytest tests/test_end_to_end.py -v -p no:cacheprovider
	rm -rf $(RUN_DIR)

# The same unit tests and nbval smoke run with the package versions Colab ships (requirements-colab.txt), in a
# separate environment; the end-to-end run and the TinyLlama-shaped check stay with `make test`.
colab-check: $(COLAB_VENV)/installed
	$(COLAB_VENV)/bin/python -c "import torch, transformers, accelerate, ipywidgets, matplotlib; print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| ipywidgets', ipywidgets.__version__, '| matplotlib', matplotlib.__version__)"
	$(COLAB_VENV)/bin/python -m pytest tests -q --ignore=tests/test_end_to_end.py --ignore=tests/test_tinyllama_shape.py
	$(NBVAL_SMOKE) $(COLAB_VENV)/bin/python $(NBVAL) targeted_amnesia.ipynb -q

$(COLAB_VENV)/installed: requirements-colab.txt requirements-tools.txt
	test -x $(COLAB_VENV)/bin/python || python3 -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-colab.txt
	touch $@

clean:
	rm -rf $(VENV) $(COLAB_VENV) $(OUTPUT_DIR)
