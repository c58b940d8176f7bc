"""``python -m quant_retriever``: the ``quant-retriever`` command line."""

import sys

from quant_retriever.cli import main

if __name__ == "__main__":
    sys.exit(main())
