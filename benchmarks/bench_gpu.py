"""Speed on a CUDA GPU: the Triton scan kernels against eager torch, faiss-gpu and cuVS, and
the encoder precisions' embedding throughput.

    python benchmarks/bench_gpu.py                              # 1M and 10M x 384, 1 and 32 queries
    python benchmarks/bench_gpu.py --sizes 1000000 --skip-encoders
    python benchmarks/bench_gpu.py --device cpu --sizes 20000 --texts 64 --repeats 2   # dry run

For each codec (int4, binary), corpus size and query count, on random unit vectors (queries:
perturbed corpus vectors), k = 10 and rescore multiplier 4:

==================  ==========================================================================
row                 what is timed
==================  ==========================================================================
kernel              the first-stage scan alone on the device codes: ``int4_topk`` keeping 40
                    rows, ``hamming_topk`` keeping 200 (the binary codec's ``20 k`` pass); on
                    the CPU (``--device cpu``) the codec's ``top`` (the C kernels)
index, 1st stage    ``QuantizedIndex.search`` without rescoring (binary: with its second stage)
index, end to end   ``QuantizedIndex.search`` rescoring from the INT8 copy on disk (memory-mapped,
                    gathered to the device)
... eager           the same with ``QUANT_RETRIEVER_TRITON=0`` (CPU: ``QUANT_RETRIEVER_NATIVE=0``)
faiss-gpu           ``GpuIndexBinaryFlat`` (binary), ``GpuIndexFlatIP`` in FP16 (int4's rows; it
                    reads 768 bytes per vector, not 220), when faiss has GPU support
cuVS                ``brute_force`` over FP32 vectors, when ``cuvs`` is importable
==================  ==========================================================================

GB/s counts the bytes of codes a scan reads (``rows * row_bytes``) per second of the whole
call; % of peak divides that by the device's memory bandwidth (from its name: H100 SXM
3.35 TB/s, H200 4.8 TB/s, ...; ``--peak-tbs`` overrides). Every time is the median of
``--repeats`` calls after a warm-up, with the device synchronised around each. Then 10,000
texts (stdlib docstrings, cycled) are embedded with each encoder precision (texts/s, median of
3 passes; ``evaluate_encoders``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

from quant_retriever import QuantizedIndex, bench
from quant_retriever.codecs import binary
from quant_retriever.kernels import triton as gpu

K, MULTIPLIER = 10, 4
#: Memory bandwidth (TB/s) by device name, most specific first.
PEAK_TBS = [
    ("H200", 4.8),
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),
    ("GH200", 4.0),
    ("A100 80GB PCIe", 1.935),
    ("A100-SXM4-80GB", 2.039),
    ("A100", 1.555),
    ("L40S", 0.864),
    ("L4", 0.3),
]
ENCODER_PRECISIONS = ["fp32", "fp16", "bf16", "int8", "bnb-int8", "bnb-nf4", "bnb-fp4"]


def peak_tbs(name: str) -> float | None:
    return next((tbs for key, tbs in PEAK_TBS if key in name), None)


@contextlib.contextmanager
def eager(device: torch.device):
    """Turn off the device's kernels: Triton on CUDA, the C kernels on the CPU."""
    var = "QUANT_RETRIEVER_TRITON" if device.type == "cuda" else "QUANT_RETRIEVER_NATIVE"
    saved = os.environ.get(var)
    os.environ[var] = "0"
    try:
        yield
    finally:
        os.environ.pop(var) if saved is None else os.environ.__setitem__(var, saved)


def median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: compiles kernels, faults in the memory map
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def corpus_batches(n: int, dim: int, device: torch.device, batch: int):
    """Random unit vectors ``[<= batch, dim]`` on ``device``, the same for every call."""
    g = torch.Generator(device=device).manual_seed(0)
    for start in range(0, n, batch):
        yield unit(torch.randn(min(batch, n - start), dim, generator=g, device=device))


def kernel_call(codec, q: torch.Tensor, codes: torch.Tensor, device: torch.device):
    """The first-stage scan alone (see the module docstring)."""
    keep = 20 * K if codec.name == "binary" else K * MULTIPLIER
    if device.type == "cuda":
        if codec.name == "binary":
            qcodes = binary.encode(q)
            return lambda: gpu.hamming_topk(qcodes, codes, None, keep)
        return lambda: gpu.int4_topk(q, codes, None, keep, codec.dim, codec.block_size)
    return lambda: codec.top(q, codes, None, keep)


def faiss_rows(codec_name: str, n: int, dim: int, q: torch.Tensor, device, repeats: int) -> list[list[str]]:
    try:
        import faiss
    except ImportError:
        return [["faiss-gpu", "not installed", "-", "-"]]
    if device.type != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return [["faiss-gpu", "no GPU support in this faiss", "-", "-"]]
    res = faiss.StandardGpuResources()
    if codec_name == "binary":
        index, label, qx, keep = faiss.GpuIndexBinaryFlat(res, dim), "faiss-gpu BinaryFlat", binary.encode(q), 20 * K
        prepare = binary.encode
    else:
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = True
        index, label, qx, keep = faiss.GpuIndexFlatIP(res, dim, cfg), "faiss-gpu FlatIP fp16", q, K * MULTIPLIER
        prepare = lambda x: x  # noqa: E731
    for xb in corpus_batches(n, dim, device, 1 << 20):
        index.add(prepare(xb).cpu().numpy())
    qx = qx.cpu().numpy()
    ms = median_ms(lambda: index.search(qx, keep), repeats, device)
    return [[label, f"{ms:.3f}", "-", "-"]]


def cuvs_rows(n: int, dim: int, q: torch.Tensor, device, repeats: int) -> list[list[str]]:
    try:
        from cuvs.neighbors import brute_force
    except ImportError:
        return [["cuVS brute_force", "not installed", "-", "-"]]
    if device.type != "cuda":
        return []
    x = torch.cat(list(corpus_batches(n, dim, device, 1 << 20)))
    index = brute_force.build(x, metric="inner_product")
    ms = median_ms(lambda: brute_force.search(index, q, K * MULTIPLIER), repeats, device)

    return [["cuVS brute_force fp32", f"{ms:.3f}", "-", "-"]]


def scan_table(
    codec_name: str,
    n: int,
    dim: int,
    query_counts: list[int],
    device,
    repeats: int,
    peak: float | None,
    baselines: bool,
) -> tuple[list[str], list[list[str]]]:
    first = QuantizedIndex(dim, codec=codec_name, rescore=False, device=device)
    full = QuantizedIndex(dim, codec=codec_name, rescore=True, device=device)
    parts = []
    with tqdm(total=n, desc=f"{codec_name} {n:,} x {dim}: adding", unit="vec", unit_scale=True) as bar:
        for xb in corpus_batches(n, dim, device, 1 << 19):
            first.add(xb)
            full.add(xb)
            parts.append(first.codec.encode(xb))
            bar.update(len(xb))
    codes = torch.cat(parts)
    del parts
    x0 = next(corpus_batches(max(query_counts), dim, device, max(query_counts)))
    rows = []
    for nq in query_counts:
        noise = torch.randn(nq, dim, generator=torch.Generator(device=device).manual_seed(nq), device=device)
        q = unit(x0[:nq] + 0.05 * noise)
        timed = [("kernel", kernel_call(first.codec, q, codes, device), True, False)]
        for label, index in (("index, 1st stage", first), ("index, end to end", full)):
            timed.append((label, lambda index=index: index.search(q, K, MULTIPLIER), False, False))
            timed.append((label + ", eager", lambda index=index: index.search(q, K, MULTIPLIER), False, True))
        for label, fn, is_scan, is_eager in tqdm(timed, desc=f"{codec_name} {n:,}, {nq} queries", leave=False):
            with eager(device) if is_eager else contextlib.nullcontext():
                ms = median_ms(fn, repeats, device)
            gbs = n * first.codec.row_bytes / (ms / 1e3) / 1e9
            rows.append(
                [
                    codec_name,
                    f"{n:,}",
                    str(nq),
                    label,
                    f"{ms:.3f}",
                    f"{gbs:.1f}" if is_scan else "-",
                    f"{100 * gbs / (peak * 1e3):.0f}%" if is_scan and peak else "-",
                ]
            )
        if baselines:
            for cells in faiss_rows(codec_name, n, dim, q, device, repeats) + cuvs_rows(n, dim, q, device, repeats):
                rows.append([codec_name, f"{n:,}", str(nq), *cells])
    first.close()
    full.close()
    headers = ["codec", "rows", "queries", "method", "ms", "codes GB/s", "% peak"]
    return headers, rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--codecs", nargs="+", default=["int4", "binary"], choices=["int4", "binary"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run of the script")
    parser.add_argument("--peak-tbs", type=float, default=None, help="the device's memory bandwidth, TB/s")
    parser.add_argument("--no-baselines", action="store_true", help="skip faiss-gpu and cuVS")
    parser.add_argument("--texts", type=int, default=10_000, help="texts embedded per encoder precision")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--skip-encoders", action="store_true")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "bench_gpu.py measures a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False);\n"
            "nothing was measured. Run it on a machine with a CUDA GPU and a CUDA build of torch, "
            "or pass --device cpu for a dry run of the script.",
            file=sys.stderr,
        )
        sys.exit(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tbs or peak_tbs(name)
        kernels = "Triton" if gpu.available(device) else "eager torch (Triton unavailable or off)"
        print(f"{name}: peak {peak or 'unknown'} TB/s; first-stage kernels: {kernels}")
    else:
        name, peak = "CPU", args.peak_tbs
        print(f"CPU dry run: {torch.get_num_threads()} threads; the kernel rows are the C kernels")
    print(f"torch {torch.__version__}, k={K}, rescore multiplier {MULTIPLIER}, medians of {args.repeats} calls")

    for n in args.sizes:
        for codec_name in args.codecs:
            headers, rows = scan_table(
                codec_name, n, args.dim, args.queries, device, args.repeats, peak, not args.no_baselines
            )
            print()
            print(bench.format_table(headers, rows, title=f"{codec_name}: {n:,} x {args.dim} on {name}"))
            torch.cuda.empty_cache() if device.type == "cuda" else None

    if not args.skip_encoders:
        from quant_retriever._demo_corpus import stdlib_docstrings
        from quant_retriever.embeddings import evaluate_encoders
        from quant_retriever.models.settings import minilm_path

        docs = [d.text for d in stdlib_docstrings()]
        texts = [docs[i % len(docs)] for i in range(args.texts)]
        print(f"\nembedding {len(texts):,} texts (stdlib docstrings), batch {args.batch_size}, on {name}")
        reports = evaluate_encoders(minilm_path(), ENCODER_PRECISIONS, texts, args.batch_size, str(device), repeats=3)
        print(bench.format_table(*bench.encoder_table(reports), title=f"all-MiniLM-L6-v2 on {name}"))


if __name__ == "__main__":
    main()
