"""The asv benchmark suite (``asv.conf.json`` points ``benchmark_dir`` here).

Modules: ``kernels`` (GEMM, attention, norms), ``graph`` (compile time, memory plans),
``models`` (MiniLM embeddings, SmolLM2-135M-shaped decoding), ``server`` (HTTP requests/s).
Shared helpers are in ``common``. The standalone scripts one folder up (``benches/*.py``)
are not part of the suite: asv imports only this package.

``RTSERVE_BENCH_SMOKE=1`` shrinks every parameter list and model to a tiny size, so
``tests/test_bench_smoke.py`` can run the whole suite with ``asv run --quick`` in seconds;
the figures of a smoke run mean nothing.
"""

import sys
from pathlib import Path

# The suite's modules import their neighbours by name: benches/*.py (machine, embeddings,
# decode) and tests/graph_models.py. asv imports ``suite.<module>`` directly, so this runs first.
for _folder in (Path(__file__).resolve().parent.parent, Path(__file__).resolve().parents[2] / "tests"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
