#!/usr/bin/env bash
# The first GPU run in one command (docs/benchmarks.md, "First GPU run"): on a CUDA machine with
# CUDA torch and no network, install the carried wheels, run the GPU tests, `bench frame` and
# `bench engine` at full size, and write JSON, a markdown report and the docs section.
#
#   scripts/gpu_report.sh                          # the run (wheels from ./wheels)
#   scripts/gpu_report.sh --dry-run                # check every step here; no install, docs untouched
#   scripts/gpu_report.sh --download-wheels        # on a networked machine: build ./wheels first
#
# Options: --wheels DIR (./wheels), --out DIR (bench-results/gpu-report), --docs FILE
# (docs/benchmarks.md), --python PY (python3), --skip-install. PYTHON in the environment also
# names the interpreter.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="wheels"
OUT="bench-results/gpu-report"
DOCS="docs/benchmarks.md"
MOSHI_SPEC="moshi==0.2.13"
DRY_RUN=0
DOWNLOAD=0
SKIP_INSTALL=0
FAILED=()

while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --docs) DOCS="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --download-wheels) DOWNLOAD=1; shift ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
cd "$ROOT" || exit 2

step() { printf '\n== %s\n' "$*"; }
skip() { printf 'SKIP: %s\n' "$*"; }
run() {  # run a command; a failure is recorded and the report goes on
    printf '+ %s\n' "$*"
    "$@" || { echo "FAILED (exit $?): $*"; FAILED+=("$*"); }
}

# The packages the GPU run needs beyond CUDA torch: the project's own dependencies and its
# [engine] extra, plus pytest and transformers (the frame benchmark's peer). With "no-torch"
# torch is left out (a wheelhouse never carries it: the machine has its CUDA build).
requirements() {
    "$PY" - "$1" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
name = lambda req: re.split(r"[<>=!~;\[ ]", req)[0]
reqs = list(project["dependencies"]) + list(extras["engine"])
reqs += [r for r in extras["test"] if name(r) in ("pytest", "pytest-asyncio", "transformers")]
print("\n".join(r for r in reqs if not (sys.argv[1] == "no-torch" and name(r) == "torch")))
EOF
}

if [ "$DOWNLOAD" = 1 ]; then
    step "building the wheelhouse in $WHEELS (networked machine, same Python and platform as the GPU box)"
    mkdir -p "$WHEELS"
    reqs="$(mktemp)"
    requirements no-torch >"$reqs"
    # pip wheel, not pip download: docopt (via num2words) ships only an sdist, which an offline
    # install could not build; pip wheel builds it into a wheel here.
    "$PY" -m pip wheel --wheel-dir "$WHEELS" -r "$reqs" || exit 1
    "$PY" -m pip download --no-deps --dest "$WHEELS" "$MOSHI_SPEC" || exit 1
    rm -f "$reqs"
    echo "done: copy $WHEELS to the GPU machine beside this repository, then run scripts/gpu_report.sh"
    exit 0
fi

mkdir -p "$OUT"
step "interpreter and torch"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "$PY cannot import torch: install the CUDA build of torch first (docs/benchmarks.md)" >&2
    exit 1
fi
"$PY" - <<'EOF' || exit 1
import torch
major, minor = (int(v) for v in torch.__version__.split(".")[:2])
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, device: "
      + (torch.cuda.get_device_name(0) if cuda else "none"))
if (major, minor) < (2, 5):
    raise SystemExit("torch >= 2.5 is needed (SDPA enable_gqa)")
EOF
HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')"
if [ "$HAS_CUDA" != 1 ] && [ "$DRY_RUN" = 0 ]; then
    echo "no CUDA device: nothing to report (use --dry-run to check the steps here)" >&2
    exit 1
fi

step "install carried wheels from $WHEELS (no network)"
if [ "$SKIP_INSTALL" = 1 ]; then
    skip "--skip-install"
else
    [ -d "$WHEELS" ] || echo "note: no $WHEELS directory: only packages already installed can satisfy the requirements"
    reqs="$OUT/requirements.txt"
    requirements with-torch >"$reqs"
    dry=()
    [ "$DRY_RUN" = 1 ] && dry=(--dry-run)  # resolves against the wheelhouse and what is installed; installs nothing
    run "$PY" -m pip install ${dry[@]+"${dry[@]}"} --no-index --find-links "$WHEELS" --no-deps "$MOSHI_SPEC"
    run "$PY" -m pip install ${dry[@]+"${dry[@]}"} --no-index --find-links "$WHEELS" -r "$reqs"
fi

step "GPU tests (pytest -m gpu tests/gpu)"
if [ "$HAS_CUDA" = 1 ]; then
    run "$PY" -m pytest -q -rs -m gpu tests/gpu --junitxml "$OUT/gpu-tests.xml"
else
    skip "no CUDA device: the GPU tests are only collected"
    run "$PY" -m pytest -q --collect-only -m gpu tests/gpu
fi

step "bench frame and bench engine"
if [ "$HAS_CUDA" = 1 ]; then
    run "$PY" -m csm_service.cli bench frame --config csm-1b --dtypes bfloat16,float32 --frames 64 \
        --json "$OUT/frame.json"
    run "$PY" -m csm_service.cli bench engine --config csm-1b --concurrency 1,8,32,64,128 \
        --json "$OUT/engine.json"
else
    skip "no CUDA device: a tiny CPU run of both benchmarks instead, to check the pipeline (its numbers mean nothing)"
    run "$PY" -m csm_service.cli bench frame --config tiny --device cpu --dtypes float32 --frames 4 --no-peer \
        --json "$OUT/frame.json"
    run "$PY" -m csm_service.cli bench engine --config tiny --device cpu --concurrency 1,2 --audio-ms 400 \
        --repeats 1 --json "$OUT/engine.json"
fi

step "report: JSON, markdown and the docs section"
target_docs="$DOCS"
if [ "$HAS_CUDA" != 1 ] || [ "$DRY_RUN" = 1 ]; then
    target_docs="$OUT/benchmarks-preview.md"
    cp "$DOCS" "$target_docs"
    skip "dry run or no CUDA device: $DOCS is untouched; the section goes into $target_docs"
fi
run "$PY" scripts/bench_table.py --frame "$OUT/frame.json" --engine "$OUT/engine.json" \
    --tests "$OUT/gpu-tests.xml" --command "scripts/gpu_report.sh" \
    --report-json "$OUT/gpu-report.json" --markdown "$OUT/gpu-report.md" --docs "$target_docs"

step "summary"
echo "outputs in $OUT: gpu-report.json, gpu-report.md, frame.json, engine.json$([ "$HAS_CUDA" = 1 ] && echo ', gpu-tests.xml')"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'failed steps:\n'
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all steps passed"
