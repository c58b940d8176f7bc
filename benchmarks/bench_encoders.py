"""Memory, speed and fidelity of every embedding precision against FP32, in one run.

    python benchmarks/bench_encoders.py                      # all-MiniLM-L6-v2, 256 texts, batch 64
    python benchmarks/bench_encoders.py --model BAAI/bge-small-en-v1.5 --precisions fp32 int8 --compile

The texts are the first 256 docstrings of at least 40 characters of the Python standard
library (``quant_retriever._demo_corpus.stdlib_docstrings``: read with ``ast`` from the installed
sources in sorted file order, so the set is the same on every machine with the same Python).
Every precision embeds the same texts with the same batch size. Speed is the median of
``--repeats`` timed passes after one warm-up, interleaved across precisions so that a change
in machine load hits all of them alike. Fidelity is measured against the FP32 embeddings of
the same texts: mean and minimum cosine, and top-10 overlap (the mean share of each text's
ten nearest other texts under FP32 that it keeps under the precision). The precisions after
``--compile`` (default: fp32 and int8) are measured once more under ``torch.compile``, so that
the compiled int8 can be compared with compiled and eager FP32; their compile time is not
timed. torch runs with the machine's default thread count.

``--large-heap`` raises glibc's mmap threshold for this process (what
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` does for any
process), the allocator tuning recommended for PyTorch CPU inference: activations of tens of
MB are then reused from the heap instead of being mapped, page-faulted and unmapped at every
allocation. It speeds up every precision, the INT8 ones most.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import platform
from typing import get_args

import torch

from quant_retriever._demo_corpus import stdlib_docstrings
from quant_retriever.bench import encoder_table, evaluate_encoders, format_table
from quant_retriever.models import PRECISION_NAMES, Precision
from quant_retriever.models.settings import minilm_path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    wanted = {"avx512_vnni": "AVX512-VNNI", "avx512_bf16": "AVX512-BF16", "amx_int8": "AMX-INT8"}
    return ", ".join(f"{label} {'yes' if flag in flags else 'no'}" for flag, label in wanted.items())


def _large_heap() -> str:
    """glibc's ``mallopt``: serve allocations up to 1 GiB from the heap and keep it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, (1 << 31) - 1) == 1  # M_MMAP_ / M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    return "glibc mmap threshold 1 GiB" if ok else "--large-heap: not glibc, allocator unchanged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="name or path (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISION_NAMES), choices=get_args(Precision))
    parser.add_argument(
        "--compile",
        nargs="*",
        default=["fp32", "int8"],
        choices=get_args(Precision),
        help="precisions to measure again under torch.compile (none: --compile)",
    )
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--large-heap", action="store_true", help="raise glibc's mmap threshold (see above)")
    args = parser.parse_args()
    heap = _large_heap() if args.large_heap else "default allocator"

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model = args.model or minilm_path()
    texts = [d.text for d in stdlib_docstrings(args.texts)]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"{_cpu_name()}; {_cpu_features()}"
    print(
        f"{args.model or 'all-MiniLM-L6-v2'}: {len(texts)} stdlib docstrings "
        f"(mean {sum(map(len, texts)) / len(texts):.0f} chars), batch {args.batch_size}, "
        f"{device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads, {heap}"
    )

    reports = evaluate_encoders(
        model, args.precisions, texts, args.batch_size, args.device, repeats=args.repeats, compiled=args.compile
    )

    print(format_table(*encoder_table(reports)))
    for r in reports:
        if r.skipped is not None:
            print(f"skipped {r.label}: {r.skipped}")


if __name__ == "__main__":
    main()
