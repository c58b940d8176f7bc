#!/usr/bin/env bash
# One entry point for people and CI:
#   ./run.sh demo          the index demo, then the LangChain and LlamaIndex examples, on a real corpus
#   ./run.sh test [ARGS]   run the whole test suite (ARGS go to pytest)
#   ./run.sh bench [ARGS]  run benchmarks/bench_index.py
# Creates .venv/ on first use (installing the CPU build of torch when none is importable);
# later runs reuse it and skip installation unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
STAMP=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "Installing torch==2.13.0 (CPU build)..."
        "$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
    fi
    echo "Installing quant-retriever[all]..."
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[all]"
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
    test) exec "$PY" -m pytest -q "$@" ;;
    bench) exec "$PY" benchmarks/bench_index.py "$@" ;;
    *) echo "usage: ./run.sh demo | test [pytest args] | bench [args]" >&2; exit 2 ;;
esac
