# facesite: `make run` starts the whole local stack, `make test` runs every test.
# Both create .venv and install everything the project needs from a fresh clone.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint bench clean

$(STAMP): requirements/*.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	# These two declare old torch/numpy/Pillow pins that would pull CUDA builds: no deps.
	$(PY) -m pip install --quiet --no-deps -r requirements/nodeps.txt
	touch $(STAMP)

# The course's labelled photos are the default gallery when ../shared is beside the clone;
# GALLERY=dir (one sub-folder per identity) enrolls another, GALLERY= none.
COURSE := ../shared/datasets/course
ifeq ($(origin GALLERY),undefined)
ifneq ($(wildcard $(COURSE)/labels_100.csv),)
GALLERY := $(COURSE)/face_images_100
GALLERY_LABELS ?= $(COURSE)/labels_100.csv
endif
endif

run: $(STAMP)
	$(PY) manage.py runstack $(if $(GALLERY),--gallery $(GALLERY)) $(if $(GALLERY_LABELS),--gallery-labels $(GALLERY_LABELS))

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The long scenarios under load that `make test` leaves out (marked slow).
test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.engine
	$(PY) -m bench.pipeline
	$(PY) -m bench.scaling
	$(PY) -m bench.emulator

clean:
	rm -rf $(VENV) var
