"""``quant-retriever serve``: open the store and its model once, then answer HTTP under uvicorn
until SIGTERM/SIGINT (requests in flight finish, then the store is closed).

Binding anything but a loopback address needs an API key, read from ``--api-key-file`` or the
``QUANT_RETRIEVER_API_KEY`` environment variable (never the command line, where other users
can read it); without one the server refuses to start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path

from quant_retriever.server.app import Limits, create_app

__all__ = ["API_KEY_ENV", "read_api_key", "is_loopback", "serve"]

API_KEY_ENV = "QUANT_RETRIEVER_API_KEY"
log = logging.getLogger("quant_retriever.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(path: str | os.PathLike | None) -> str | None:
    """The key from ``path`` (its first line; a regular file, not a link), else from the
    environment, else ``None``. ``ValueError`` for an unusable file or an empty key."""
    if path is not None:
        p = Path(path)
        try:
            st = os.lstat(p)
        except OSError as exc:
            raise ValueError(f"--api-key-file {p}: {exc.strerror}.") from None
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"--api-key-file {p}: not a regular file (links are not followed).")
        lines = p.read_text(encoding="utf-8", errors="strict").splitlines()
        key = lines[0].strip() if lines else ""
    else:
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            return None
    if len(key) < 16:
        raise ValueError("the API key must be at least 16 characters.")
    return key


def serve(
    store_path: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    read_only: bool = False,
    api_key: str | None = None,
    model: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    limits: Limits | None = None,
    embed: bool = True,
    codec: str | None = None,
) -> None:
    """Serve the store at ``store_path`` (created empty, with ``codec`` and the cosine metric,
    when there is none and not ``read_only``) until a signal stops the server."""
    import uvicorn

    from quant_retriever import ingest
    from quant_retriever.store import QuantizedStore

    if not is_loopback(host) and api_key is None:
        raise ValueError(
            f"binding {host} (not a loopback address) needs an API key: --api-key-file FILE or ${API_KEY_ENV}."
        )
    limits = limits or Limits()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(store_path)
    if QuantizedStore.exists(path) or read_only:
        store = ingest.open_store(path, read_only=read_only)
    else:  # cosine, as the framework adapters make their own stores
        store = QuantizedStore(codec=codec or ingest.DEFAULT_CODEC, path=path, metric="cosine")
    try:
        encoder = ingest.load_store_encoder(store, model, precision, device) if embed else None
    except BaseException:
        store.close()
        raise
    settings = store.settings
    log.info(
        "quant-retriever serve: store=%s documents=%d codec=%s dim=%s read_only=%s model=%s precision=%s",
        path,
        len(store),
        settings["codec"],
        settings["dim"],
        read_only,
        getattr(encoder, "model_name", None),
        getattr(encoder, "precision", None),
    )
    log.info(
        "quant-retriever serve: http://%s:%d auth=%s max_body=%d max_batch=%d max_k=%d",
        host,
        port,
        "api-key" if api_key else "none (loopback only)",
        limits.max_body,
        limits.max_batch,
        limits.max_k,
    )
    app = create_app(store, encoder, api_key=api_key, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
