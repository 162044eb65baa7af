# Two entry points: `make run` (the notebook headless on the bundled model) and `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
OUTPUT_DIR ?= outputs
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED := 0
NBVAL_OUTPUT_DIR := $(shell mktemp -d -u /tmp/amnesia-nbval-XXXXXX)

.PHONY: install run test clean

install: $(VENV)/installed

$(VENV)/installed: requirements.txt requirements-dev.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: install
	mkdir -p $(OUTPUT_DIR)
	AMNESIA_MODEL=$${AMNESIA_MODEL:-bundled} AMNESIA_OUTPUT_DIR=$(abspath $(OUTPUT_DIR)) \
	  $(PYTHON) -m jupyter nbconvert --to notebook --execute targeted_amnesia.ipynb \
	  --ExecutePreprocessor.timeout=-1 --output-dir $(OUTPUT_DIR)
	@echo "Executed notebook, safety_report.png, metrics.json and model/ are in $(OUTPUT_DIR)/"

test: install
	$(VENV)/bin/nbstripout --verify targeted_amnesia.ipynb
	$(PYTHON) -m pytest tests -v --durations=5
	AMNESIA_MODEL=bundled AMNESIA_MAX_STEPS=2 AMNESIA_EVAL_EVERY=1 AMNESIA_OUTPUT_DIR=$(NBVAL_OUTPUT_DIR) \
	  AMNESIA_TOPIC="The Beatles" AMNESIA_FORGET_LOSS=rmu AMNESIA_LEARNING_RATE=1e-3 AMNESIA_RUN_ABLATION=0 \
	  $(PYTHON) -m pytest --nbval-lax --nbval-current-env targeted_amnesia.ipynb -p no:cacheprovider

clean:
	rm -rf $(VENV) $(OUTPUT_DIR)
