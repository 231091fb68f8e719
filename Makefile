# Two commands, each sets itself up on a fresh machine (see README.md):
#   make book   execute every chapter and write the website to _build/html
#   make test   unit tests + every notebook executed with nbmake + the book built with warnings as errors
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first so that the package's "torch>=2.1" is already satisfied; 2.13.0 is the
# CPU build the development and CI machines carry. Override e.g. with TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
BOOK_FLAGS := book --config $(CURDIR)/_config.yml --toc $(CURDIR)/_toc.yml --path-output $(CURDIR)

.PHONY: book test unit notebooks site clean sync assignments student-site colab
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[book,test]"
	touch $@

book: $(VENV)/.installed
	$(VENV)/bin/jupyter-book build $(BOOK_FLAGS)
	@echo "website: _build/html/index.html"

test: $(VENV)/.installed
	$(MAKE) unit notebooks site student-site

unit: $(VENV)/.installed
	TQDM_DISABLE=1 $(PY) -m pytest -q tests -m "not site and not assignments and not notebooks"

notebooks: $(VENV)/.installed
	TQDM_DISABLE=1 COMPANION_PROFILE=quick $(PY) -m pytest -q --durations=0 --nbmake --nbmake-timeout=300 book/*.ipynb
	TQDM_DISABLE=1 COMPANION_PROFILE=quick $(PY) -m pytest -q --durations=0 tests -m assignments
	TQDM_DISABLE=1 $(PY) -m pytest -q --durations=0 tests/test_notebooks.py -m notebooks

# regenerate the Colab flavour (colab/*.ipynb) from the MyST sources; after a build, refresh the
# glued values first: make colab GLUE_FROM=_build/jupyter_execute
colab: $(VENV)/.installed
	$(PY) -m companion.colab $(if $(GLUE_FROM),--glue-from $(GLUE_FROM))

site: $(VENV)/.installed
	rm -rf _build
	TQDM_DISABLE=1 COMPANION_PROFILE=quick $(VENV)/bin/jupyter-book build $(BOOK_FLAGS) -W --keep-going
	@command -v chromedriver >/dev/null || printf "\n*** BROWSER TEST SKIPPED: no chromium-driver (apt-get install chromium chromium-driver) ***\n\n"
	$(PY) -m pytest -q -rs tests -m site

# regenerate every paired notebook from its .md source
sync: $(VENV)/.installed
	$(VENV)/bin/jupytext --to ipynb --update book/[0-9]*.md

# one folder per chapter in assignments/: student notebook, autograder (public + hidden tests), answer key
assignments: $(VENV)/.installed
	$(PY) -m companion.student book/[0-9]*.md --out assignments

# the website without solutions, in _build_student/_build/html (no Colab button: it opens instructor notebooks)
student-site: $(VENV)/.installed
	rm -rf _build_student
	$(PY) -m companion.student --site book --out _build_student/book --config _config.yml --toc _toc.yml
	TQDM_DISABLE=1 COMPANION_PROFILE=quick $(VENV)/bin/jupyter-book build _build_student/book \
	  --config $(CURDIR)/_build_student/_config.yml --toc $(CURDIR)/_build_student/_toc.yml \
	  --path-output $(CURDIR)/_build_student
	$(PY) -m pytest -q tests -m site -k student_site

clean:
	rm -rf _build _build_student assignments .pytest_cache
