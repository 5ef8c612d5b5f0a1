"""Compiled graphs: compile time, and the memory plan against its lower bound.

Models from tests/graph_models.py with random weights: BERT-base (attention written out with
primitive ops, as a Hugging Face export has it) and a Llama of SmolLM2-135M's shape.
``track_planned_bytes`` is the arena the planner assigns for concrete dims;
``track_lower_bound_bytes`` the most bytes live at any one time (no plan can do better);
``track_planned_over_lower_bound`` their ratio (the acceptance bound is 1.05).
"""

from __future__ import annotations

import graph_models as gm  # tests/graph_models.py (common puts tests/ on sys.path)

from .common import SMOKE

MODELS = {"BERT-base": (gm.BERT_BASE, gm.build_bert, gm.bert_weights),
          "Llama (SmolLM2-135M shape)": (gm.SMOLLM2_135M, gm.build_llama, gm.llama_weights)}
if SMOKE:
    MODELS = {"BERT tiny": (gm.BERT_TINY, gm.build_bert, gm.bert_weights),
              "Llama tiny": (gm.LLAMA_TINY, gm.build_llama, gm.llama_weights)}
DIMS = ["1x128", "8x128", "32x512"] if not SMOKE else ["2x16"]


def _graph(model: str):
    cfg, build, weights = MODELS[model]
    return build(cfg, weights(cfg))


class Compile:
    """``graph.compile()`` with passes (fusions, weight prepacking, shape inference, planning)."""

    params = list(MODELS)
    param_names = ["model"]
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0
    timeout = 600

    def setup(self, model: str) -> None:
        self.graph = _graph(model)

    def time_compile(self, model: str) -> None:
        self.graph.compile()


class MemoryPlan:
    """``compiled.memory_plan(batch=b, seq=s)`` of each model compiled with passes."""

    params = (list(MODELS), DIMS)
    param_names = ["model", "batchxseq"]
    timeout = 600

    def setup_cache(self) -> dict:
        plans = {}
        for model in MODELS:
            compiled = _graph(model).compile()
            for dims in DIMS:
                batch, seq = (int(x) for x in dims.split("x"))
                plans[(model, dims)] = dict(compiled.memory_plan(batch=batch, seq=seq))
        return plans

    def track_planned_bytes(self, plans: dict, model: str, dims: str) -> int:
        return plans[(model, dims)]["planned_bytes"]

    track_planned_bytes.unit = "bytes"

    def track_lower_bound_bytes(self, plans: dict, model: str, dims: str) -> int:
        return plans[(model, dims)]["lower_bound_bytes"]

    track_lower_bound_bytes.unit = "bytes"

    def track_planned_over_lower_bound(self, plans: dict, model: str, dims: str) -> float:
        plan = plans[(model, dims)]
        return plan["planned_bytes"] / plan["lower_bound_bytes"]

    track_planned_over_lower_bound.unit = "ratio"
