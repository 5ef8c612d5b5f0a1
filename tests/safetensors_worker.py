"""Load safetensors files with rtserve in a separate process, one request per line.

The corruption tests run the loader here so that a crash (a signal), an abort or a hang
shows up as a dead or silent worker instead of taking pytest down.

Protocol: after importing, the worker writes {"ready": true}. Then, for each path read
from stdin (one per line), it calls rt.load_safetensors(path), reads every byte of every
tensor it got, and writes one JSON line:
    {"path": ..., "outcome": "ok" | "WeightsError" | "<other exception class>" | "BadTensor",
     "message": str(error) or "", "tensors": [{"name", "dtype", "shape", "sha256"}, ...]}
"BadTensor" means the load succeeded but a tensor's numpy view disagrees with its own
shape or nbytes.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import sys

import numpy as np

import rtserve as rt


def describe(tensor: rt.Tensor, name: str) -> tuple[dict, str | None]:
    array = np.asarray(tensor)
    raw = array.tobytes()  # touches every byte of the mapping
    summary = {
        "name": name,
        "dtype": tensor.dtype,
        "shape": list(tensor.shape),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    if tuple(array.shape) != tuple(tensor.shape) or len(raw) != tensor.nbytes:
        return summary, f"{name}: numpy shape {array.shape}, {len(raw)} bytes vs {tensor.shape}, {tensor.nbytes}"
    return summary, None


def load(path: str) -> dict:
    try:
        tensors = rt.load_safetensors(path)
        summaries = []
        for name, tensor in tensors.items():
            summary, problem = describe(tensor, name)
            if problem is not None:
                return {"outcome": "BadTensor", "message": problem, "tensors": summaries}
            summaries.append(summary)
        return {"outcome": "ok", "message": "", "tensors": summaries}
    except BaseException as error:  # a pyo3 PanicException is a BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        outcome = "WeightsError" if isinstance(error, rt.WeightsError) else type(error).__name__
        return {"outcome": outcome, "message": str(error), "tensors": []}


def main() -> None:
    faulthandler.enable()  # a segfault prints a traceback to stderr, which the parent shows
    # Keep the protocol on a private copy of stdout; anything else printing goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    reply({"ready": True})
    for line in sys.stdin:
        path = line.rstrip("\n")
        if path:
            reply({"path": path, **load(path)})


if __name__ == "__main__":
    main()
