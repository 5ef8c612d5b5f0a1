"""``python -m rtserve bench --peak`` (rtserve.bench): the probes run and report positive figures."""

from __future__ import annotations

import json
import math

import rtserve as rt
from rtserve import bench, cli


def test_bench_peak_json_reports_every_probe(capsys):
    assert cli.main(["bench", "--peak", "--json", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    peak = json.loads(lines[0])
    assert peak["threads"] == 1 and peak["isa"] == rt.isa()
    assert peak["read_gbs"] > 0
    if rt.isa() == "generic":  # the FMA probes exist for avx2/avx512 only
        assert math.isnan(peak["f32_gflops"])
    else:
        assert peak["f32_gflops"] > 0
    if not dict(rt.cpu_features()).get("avx512_bf16"):
        assert peak["bf16_gflops"] is None


def test_bench_peak_table_names_each_probe(capsys):
    assert cli.main(["bench", "--peak", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("f32 FMA", "bf16 dot", "int8 dot", "read"):
        assert label in out


def test_measure_peak_restores_the_pool():
    before = rt.num_threads()
    assert bench.measure_peak(threads=1).threads == 1
    assert rt.num_threads() == before


def test_bench_without_peak_says_what_to_run(capsys):
    assert cli.main(["bench"]) == 2
    assert "--peak" in capsys.readouterr().out
