"""One process owns a store and its device; clients share it over HTTP.

============ =================================================================
module       holds
============ =================================================================
app          the FastAPI app: endpoints, limits, the API key, JSON errors
run          ``quant-retriever serve``: open the store and model, run uvicorn
client       ``RemoteStore``: the store API over HTTP, for both framework adapters
wire         filters and records as JSON
============ =================================================================

``fastapi``, ``uvicorn`` and ``httpx`` come with the ``server`` extra:
``pip install "quant-retriever[server]"``.
"""

from quant_retriever.server.client import RemoteStore

__all__ = ["RemoteStore"]
