"""Measuring cores of ``quant-retriever bench-index`` / ``bench-models`` / ``bench-rerank`` and
the scripts in ``benchmarks/``:

- :mod:`~quant_retriever.bench.methods`: the methods an index benchmark compares (ours and
  the installed baselines);
- :mod:`~quant_retriever.bench.metrics`: held-out queries, qrels, recall, MRR, NDCG, MAP and
  score correlations;
- :mod:`~quant_retriever.bench.run`: running an index benchmark, and :func:`median_ms` and :func:`interleaved_ms`;
- :mod:`~quant_retriever.bench.sweep`: loading, warming up and timing the precisions of one
  model side by side (shared by the two below);
- :mod:`~quant_retriever.bench.encoders`: :func:`evaluate_encoders`, embedding precisions
  side by side with FP32;
- :mod:`~quant_retriever.bench.rerankers`: :func:`evaluate_rerankers`, reranker precisions
  side by side with FP32;
- :mod:`~quant_retriever.bench.report`: tables, CSV and JSON files;
- :mod:`~quant_retriever.bench.plots`: PNG plots (matplotlib, imported late).
"""

from quant_retriever.bench.encoders import EncoderReport, evaluate_encoders, read_texts
from quant_retriever.bench.methods import DEFAULT_MULTIPLIERS, Method, index_methods
from quant_retriever.bench.metrics import load_vectors, qrels_from_sources, read_qrels, split_queries
from quant_retriever.bench.plots import plot_encoders, plot_index, plot_rerankers
from quant_retriever.bench.report import encoder_table, format_table, index_table, reranker_table, write_results
from quant_retriever.bench.rerankers import RerankerReport, demo_cross_encoder, evaluate_rerankers, read_rerank_pairs
from quant_retriever.bench.run import IndexBenchmark, IndexRow, interleaved_ms, median_ms, run_index_benchmark

__all__ = [
    "Method",
    "IndexRow",
    "IndexBenchmark",
    "DEFAULT_MULTIPLIERS",
    "EncoderReport",
    "RerankerReport",
    "index_methods",
    "split_queries",
    "read_qrels",
    "load_vectors",
    "read_texts",
    "read_rerank_pairs",
    "demo_cross_encoder",
    "qrels_from_sources",
    "run_index_benchmark",
    "evaluate_encoders",
    "evaluate_rerankers",
    "index_table",
    "encoder_table",
    "reranker_table",
    "format_table",
    "interleaved_ms",
    "median_ms",
    "write_results",
    "plot_index",
    "plot_encoders",
    "plot_rerankers",
]
