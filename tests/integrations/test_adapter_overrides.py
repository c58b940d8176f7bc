"""The adapters mark every framework hook with ``@override``: a hook whose base method was
renamed or removed fails here (and under a type checker), instead of silently never being
called; a method that shadows a base method without the mark fails too."""

from __future__ import annotations

import pytest

from quant_retriever.integrations._langchain_store import QuantizedRetriever
from quant_retriever.integrations._langchain_store import QuantizedVectorStore as LangChainStore
from quant_retriever.integrations._llama_index_store import QuantizedVectorStore as LlamaIndexStore

ADAPTERS = [LangChainStore, QuantizedRetriever, LlamaIndexStore]


def own_methods(cls):
    for name, attr in vars(cls).items():
        func = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
        if callable(func) and not name.startswith("__") and not (name.startswith("_abc") or name == "model_post_init"):
            yield name, func


@pytest.mark.parametrize("cls", ADAPTERS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_hook_overrides_a_base_method_and_says_so(cls):
    bases = cls.__mro__[1:]
    marked = {name for name, func in own_methods(cls) if getattr(func, "__override__", False)}
    in_base = {name for name, _ in own_methods(cls) if any(name in vars(b) for b in bases)}
    assert marked, "no hook is marked"
    assert marked <= in_base, f"@override on methods no base class has: {sorted(marked - in_base)}"
    assert in_base <= marked, f"base methods overridden without @override: {sorted(in_base - marked)}"
