"""What can be checked of the Triton kernels without a GPU.

1. They compile for NVIDIA GPUs: Triton IR to PTX to a cubin for sm_90 (H100/H200) and sm_80
   (A100), using the ptxas bundled with triton. Default launch parameters only, each
   specialisation the scans use. No register spills: a spilled register costs memory traffic
   the scans need for the codes. The interpreter cannot check any of this (it runs the Python
   code on numpy), and a compile error would otherwise first show on a user's GPU.
2. They compute the right results: ``test_triton_kernels.py`` runs in a child process in
   Triton's interpreter. The interpreter must be on (``TRITON_INTERPRET=1``) before triton is
   first imported, and libraries the rest of the suite imports (sentence-transformers,
   bitsandbytes) import it early, so a child process keeps the variable away from everything
   else. With CUDA, ``test_triton_kernels.py`` runs compiled in this process instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need triton (pip install 'quant-retriever[gpu]')")

import quant_retriever  # noqa: E402
from quant_retriever.kernels.triton import _common, _hamming, _int4, _rotated  # noqa: E402

KERNEL_TESTS = "test_triton_kernels.py"
#: Cases of KERNEL_TESTS that run without CUDA (the cuda_only ones skip).
MIN_CASES = 20
CPU = torch.device("cpu")  # split sizes only; they do not change the compiled code

_I32, _I64 = "i32", "i64"
HAMMING_ARGS = dict(
    codes_ptr="*i64",
    q_ptr="*i64",
    valid_ptr="*u8",
    hist_ptr="*i32",
    n=_I32,
    nq=_I32,
    n_splits=_I32,
    n_qblocks=_I32,
    thr_ptr="*i64",
    cut_ptr="*i64",
    slot_ptr="*i64",
    ties_ptr="*i64",
    count_ptr="*i64",
    out_d_ptr="*i32",
    out_r_ptr="*i64",
    out_cols=_I32,
)
INT4_ARGS = dict(
    words_ptr="*i32",
    halves_ptr="*fp16",
    floats_ptr="*fp32",
    qscale_ptr="*fp32",
    valid_ptr="*u8",
    out_ptr="*i64",
    row0=_I32,
    n=_I32,
    nq=_I32,
    n_splits=_I32,
    n_qblocks=_I32,
)


def compile_for(kernel, arg_types: dict, meta: dict, capability: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    meta = dict(meta)
    options = {key: meta.pop(key) for key in ("num_warps", "enable_fp_fusion") if key in meta}
    signature = {name: "constexpr" if name in meta else arg_types[name] for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs=meta)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def resource_usage(cubin: bytes, tmp_path: Path) -> dict[str, int]:
    """``REG``, ``STACK``, ``LOCAL``, ... of the one function in ``cubin`` (``cuobjdump -res-usage``)."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip(f"no cuobjdump at {tool}")
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    out = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if "REG:" in line)
    return {key: int(value) for key, value in re.findall(r"(\w+):(\d+)", line)}


def hamming_cases():
    """(name, kernel, arg types, meta): the specialisations ``hamming_topk`` launches at
    384 dimensions, 10M rows."""
    for nq, exact in ((1, False), (32, True)):
        meta = _hamming.config(10_000_000, nq, 48, CPU, True, exact)
        meta["NATIVE"] = True  # libdevice.popc, as on a GPU
        yield f"hamming-histogram-q{nq}-{'exact' if exact else 'coarse'}", _hamming._histogram, HAMMING_ARGS, meta
        meta = {k: v for k, v in meta.items() if k != "NBINS"}
        yield f"hamming-emit-q{nq}-{'exact' if exact else 'coarse'}", _hamming._emit, HAMMING_ARGS, meta


def int4_cases():
    """The specialisations ``int4_topk`` launches at 384 dimensions in blocks of 64, 10M rows:
    multiply-add (1 and 8 queries), tensor cores (32 queries), and every key written (a
    ``keep`` above the per-program lists)."""
    for nq, keep in ((1, 40), (8, 40), (32, 40), (4, 2000)):
        meta = _int4.config(10_000_000, nq, keep, 384, 64, CPU, True)
        query = "*fp16" if meta["DOT"] else "*fp32"
        args = dict(INT4_ARGS, qa_ptr=query, qb_ptr=query, qsa_ptr=query, qsb_ptr=query)
        yield f"int4-q{nq}-keep{keep}{'-dot' if meta['DOT'] else ''}", _int4._topk_kernel, args, meta


RQ_ARGS = dict(
    words_ptr="*i32",
    floats_ptr="*fp32",
    q_ptr="*fp32",
    levels_ptr="*fp32",
    valid_ptr="*u8",
    out_ptr="*i64",
    row0=_I32,
    n=_I32,
    nq=_I32,
    n_splits=_I32,
    n_qblocks=_I32,
)


def rq_cases():
    """The specialisations ``rq_topk`` launches at 384 dimensions, 10M rows, per bit width:
    1 and 8 queries, and every key written."""
    for bits, padded in ((1, 384), (2, 384), (4, 384)):
        for nq, keep in ((1, 40), (8, 40), (4, 2000)):
            meta = _rotated.config(10_000_000, nq, keep, padded, bits, CPU, True)
            yield f"rq{bits}-q{nq}-keep{keep}", _rotated._topk_kernel, RQ_ARGS, meta


CASES = [*hamming_cases(), *int4_cases(), *rq_cases()]


@pytest.mark.skipif(_common.INTERPRETED, reason="TRITON_INTERPRET is set: the kernels are interpreted, not compiled")
@pytest.mark.parametrize("name, kernel, arg_types, meta", CASES, ids=[case[0] for case in CASES])
def test_kernels_compile_for_the_gpu_without_spills(name, kernel, arg_types, meta, tmp_path):
    capabilities = (90, 80) if meta.get("DOT") else (90,)  # sm_80 lowers tl.dot differently (no wgmma)
    for capability in capabilities:
        compiled = compile_for(kernel, arg_types, meta, capability)
        assert "ld.global" in compiled.asm["ptx"]
        usage = resource_usage(compiled.asm["cubin"], tmp_path)
        assert usage["LOCAL"] == 0 and usage["STACK"] == 0, f"{name} spills registers on sm_{capability}: {usage}"
        if kernel not in (_int4._topk_kernel, _rotated._topk_kernel):  # the native popcount, not the interpreter's
            assert "popc.b64" in compiled.asm["ptx"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, test_triton_kernels.py runs compiled in this process")
def test_kernels_in_the_interpreter():
    root = Path(quant_retriever.__file__).resolve().parents[1]
    path = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).with_name(KERNEL_TESTS))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the interpreter run failed:\n{out[-8000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= MIN_CASES, f"the interpreter run passed too few cases:\n{out[-3000:]}"
