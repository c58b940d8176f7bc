#!/usr/bin/env bash
# One entry point for people and CI:
#   ./run.sh demo          the index demo, then the LangChain and LlamaIndex examples, on a real corpus
#   ./run.sh test [ARGS]   lint (ruff), then the whole test suite in a random order (ARGS go to pytest)
#   ./run.sh bench [ARGS]  run benchmarks/bench_index.py
# Creates .venv/ on first use (installing the CPU build of torch when none is importable);
# installs at the versions CI tested (constraints.txt, from `pip freeze --exclude-editable`);
# later runs reuse it and skip installation unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
STAMP=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    if "$PY" -c "import torch" 2>/dev/null; then
        # a torch brought by the user (a CUDA build, another version) stays as it is
        grep -v '^torch==' constraints.txt > .venv/constraints.txt
    else
        echo "Installing torch==2.13.0 (CPU build)..."
        "$PY" -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
        cp constraints.txt .venv/constraints.txt
    fi
    echo "Installing quant-retriever[all] at the versions in constraints.txt..."
    "$PY" -m pip install --quiet --disable-pip-version-check -c .venv/constraints.txt -e ".[all]"
    rm -f .venv/.installed-*
    touch "$STAMP"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        for example in demo langchain_rag llamaindex_query_engine; do
            echo; echo "===== examples/$example.py"
            "$PY" "examples/$example.py" "$@"
        done ;;
    test)
        .venv/bin/ruff check --quiet . || exit 1  # (a failing "a && b" would not stop the script)
        .venv/bin/ruff format --check --quiet . || exit 1
        order=()
        if [[ " $* " != *" no:randomly "* && " $* " != *"-p no:randomly"* ]]; then
            seed=${RANDOMLY_SEED:-$((RANDOM * 32768 + RANDOM))}
            echo "Tests in a random order, seed $seed (the same order: RANDOMLY_SEED=$seed ./run.sh test)"
            order=(--randomly-seed="$seed")
        fi
        exec "$PY" -m pytest -q "${order[@]}" "$@" ;;
    bench) exec "$PY" benchmarks/bench_index.py "$@" ;;
    *) echo "usage: ./run.sh demo | test [pytest args] | bench [args]" >&2; exit 2 ;;
esac
