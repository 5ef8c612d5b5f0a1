"""Server benchmark: ``python -m rtserve serve`` under HTTP load (benches/server.py's machinery).

One text per ``POST /v1/embeddings`` request (base64 vectors, as the openai client asks),
8 client threads with keep-alive connections, benches/embeddings.py's mixed sentences; the
server's micro-batcher gathers concurrent requests. Model: the pulled all-MiniLM-L6-v2 or,
when it is not pulled, a random-init BERT of its shape (the ``weights`` parameter says which;
see models.py). Server and clients share this machine's cores.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import embeddings  # benches/embeddings.py

from .common import BENCHES, SMOKE
from .models import WEIGHTS, minilm_folder

_spec = importlib.util.spec_from_file_location("rtserve_server_bench", BENCHES / "server.py")
server_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server_bench)  # type: ignore[union-attr]

REQUESTS = 32 if SMOKE else 512


class ServerMiniLM:
    """requests/s, one text per request, at ``concurrency`` client threads."""

    params = (WEIGHTS, [8])
    param_names = ["weights", "concurrency"]
    timeout = 300

    def setup_cache(self) -> str:
        return minilm_folder()

    def setup(self, folder: str, weights: str, concurrency: int) -> None:
        threads = int(os.environ.get("RTSERVE_NUM_THREADS", "0")) or (os.cpu_count() or 1)
        self.proc, self.url = server_bench.start_server(folder, threads, 4096, [])
        self.name = Path(folder).name
        self.texts = embeddings.sentences(embeddings.N_SENTENCES)
        server_bench.run_load(self.url, self.name, self.texts, 1, concurrency, 16 if SMOKE else 64, "base64",
                              self.proc.pid)  # warm-up

    def teardown(self, folder: str, weights: str, concurrency: int) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except Exception:  # noqa: BLE001  (a stuck server must not fail the next benchmark)
            self.proc.kill()

    def track_requests_per_s(self, folder: str, weights: str, concurrency: int) -> float:
        result = server_bench.run_load(self.url, self.name, self.texts, 1, concurrency, REQUESTS, "base64",
                                       self.proc.pid)
        return result["rps"]

    track_requests_per_s.unit = "requests/s"
