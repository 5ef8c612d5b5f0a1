"""Server scheduling: decoders' continuous batching, the memory budget, shared models, and
memory under a 32-client burst (a real server subprocess on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

import rtserve as rt
from conftest import run_in_threads
from rtserve.server import ModelRegistry, create_app
from rtserve.server.errors import ApiError
from rtserve.server.scheduler import DecodeScheduler
from test_server import BERT, LLAMA, running_server

QWEN = Path(__file__).resolve().parent / "fixtures" / "tiny_qwen2"


@pytest.fixture(scope="module")
def llama() -> rt.models.DecoderModel:
    return rt.load(LLAMA)


def _greedy(model: rt.models.DecoderModel, prompt: str, n: int) -> list[int]:
    return model.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True).token_ids


# --- continuous batching, in process -------------------------------------------------------


def test_sequences_join_a_running_batch_and_match_alone(llama: rt.models.DecoderModel) -> None:
    # A long request runs; others join between its steps (one step advances all of them),
    # finish and leave while it goes on. Every sequence's greedy tokens equal a lone run's.
    prompts = ["hello", "the cat sat on the", "a", "once upon a time there"]
    lengths = [40, 6, 9, 12]
    steps: list[tuple[int, int]] = []

    async def scenario() -> dict[str, list[int]]:
        scheduler = DecodeScheduler("llama", llama, max_sequences=8, observe=lambda n, new: steps.append((n, new)))
        first = scheduler.submit([llama.new_sequence(prompts[0], max_tokens=lengths[0], temperature=0, ignore_eos=True)])
        got: dict[str, list[int]] = {}
        seen_first = 0
        others = None
        async for outputs in first:
            seen_first += 1
            if seen_first == 3:  # the first request is running: the others join it
                jobs = [
                    scheduler.submit([llama.new_sequence(p, max_tokens=n, temperature=0, ignore_eos=True)])
                    for p, n in zip(prompts[1:], lengths[1:])
                ]
                others = asyncio.gather(*(job.wait() for job in jobs))
        assert others is not None
        await others
        for prompt, job in zip(prompts[1:], jobs):
            got[prompt] = job.sequences[0].token_ids
        got[prompts[0]] = first.sequences[0].token_ids
        assert scheduler.running == 0 and not scheduler.busy
        return got

    got = asyncio.run(scenario())
    for prompt, n in zip(prompts, lengths):
        assert got[prompt] == _greedy(llama, prompt, n), prompt
    assert max(n for n, _ in steps) == 4  # all four advanced together
    assert sum(new for _, new in steps) == 4
    assert len(steps) < sum(lengths)  # fewer steps than running them one after another


def test_max_sequences_queue_limit_and_cancel(llama: rt.models.DecoderModel) -> None:
    async def scenario() -> None:
        scheduler = DecodeScheduler("llama", llama, max_sequences=2, max_queue=1)
        seq = lambda n: llama.new_sequence("hello", max_tokens=n, temperature=0, ignore_eos=True)  # noqa: E731
        running = scheduler.submit([seq(30), seq(30)])  # fills the batch
        while scheduler.running < 2:
            await asyncio.sleep(0.001)
        waiting = scheduler.submit([seq(3)])  # waits: no room
        with pytest.raises(ApiError) as raised:
            scheduler.submit([seq(3)])
        assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "1"}
        async for _ in running:
            assert scheduler.running <= 2
            break  # the consumer goes away: its sequences leave the batch
        await waiting.wait()
        assert len(waiting.sequences[0].token_ids) == 3
        assert len(running.sequences[0].token_ids) < 30  # cancelled part way
        assert scheduler.running == 0

    asyncio.run(scenario())


def test_a_failing_step_reaches_every_request_and_the_scheduler_goes_on(llama: rt.models.DecoderModel) -> None:
    async def scenario() -> None:
        scheduler = DecodeScheduler("llama", llama)
        bad = llama.new_sequence("hello", max_tokens=3, temperature=0)
        bad.prompt_ids = [10**9]  # an id outside the vocabulary: the model raises
        with pytest.raises(IndexError, match="out of range"):
            await scheduler.submit([bad]).wait()
        good = scheduler.submit([llama.new_sequence("hello", max_tokens=3, temperature=0, ignore_eos=True)])
        await good.wait()
        assert good.sequences[0].token_ids == _greedy(llama, "hello", 3)

    asyncio.run(scenario())


# --- continuous batching over HTTP -------------------------------------------------------


def test_http_concurrent_generations_are_exact(llama: rt.models.DecoderModel) -> None:
    # Streaming and plain requests from 6 clients share the decode loop (joining and leaving
    # it between steps: tests above show that deterministically); each gets its lone-run text.
    prompts = ["hello", "the cat", "a b c", "once upon", "x y", "hello there"]
    with running_server("serve", f"llama={LLAMA}", "--port", "0") as line:
        url = re.search(r"on (http://\S+) ", line)[1]  # type: ignore[index]

        def client(i: int) -> list[str]:
            problems = []
            for j in range(3):
                prompt, n = prompts[(i + j) % len(prompts)], 4 + 7 * ((i + j) % 4)
                body = {"model": "llama", "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
                want = llama.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True).text
                if i % 2:
                    text = ""
                    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as stream:
                        for event in stream.iter_lines():
                            if event.startswith("data: {"):
                                text += json.loads(event[6:])["choices"][0]["text"]
                else:
                    text = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
                if text != want:
                    problems.append(f"client {i}: {prompt!r} gave {text!r}, alone {want!r}")
            return problems

        assert run_in_threads(client, count=6, timeout=120) == []
        metrics = httpx.get(f"{url}/metrics").text
        assert 'rtserve_running_sequences{model="llama"} 0.0' in metrics
        steps = float(re.search(r'rtserve_decode_batch_sequences_count\{model="llama"\} (\S+)', metrics)[1])  # type: ignore[index]
        tokens = float(re.search(r'rtserve_decode_batch_sequences_sum\{model="llama"\} (\S+)', metrics)[1])  # type: ignore[index]
        assert tokens == sum(4 + 7 * ((i + j) % 4) for i in range(6) for j in range(3))  # one per sequence per step
        assert steps <= tokens


# --- memory budget and shared models -------------------------------------------------------


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_memory_budget_unloads_the_least_recently_used_idle_model() -> None:
    registry = ModelRegistry.from_specs([f"bert={BERT}", f"llama={LLAMA}", f"qwen={QWEN}"])
    entries = {e.name: e for e in registry}
    with TestClient(create_app(registry)) as local:
        assert local.post("/v1/embeddings", json={"model": "bert", "input": "hi"}).status_code == 200
        assert local.post("/v1/completions", json={"model": "llama", "prompt": "hi", "max_tokens": 2}).status_code == 200
        bert, llama = entries["bert"].resident_bytes, entries["llama"].resident_bytes
        assert bert >= _size(BERT) and llama >= _size(LLAMA)  # measured at load, at least the files
        # a budget that holds bert with either decoder, not all three (qwen: its files' size until loaded)
        registry.memory_budget = bert + max(llama, _size(QWEN))
        assert entries["qwen"].estimate_bytes() == _size(QWEN)
        time.sleep(0.01)
        assert local.post("/v1/embeddings", json={"model": "bert", "input": "hi"}).status_code == 200  # bert: most recent
        response = local.post("/v1/completions", json={"model": "qwen", "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 200, response.text
        assert not entries["llama"].loaded  # least recently used and idle: unloaded
        assert entries["bert"].loaded and entries["qwen"].loaded
        index = {m["name"]: m for m in local.post("/v2/repository/index", json={}).json()}
        assert index["llama"]["state"] == "UNAVAILABLE" and index["llama"]["reason"] == "unloaded"
        # llama comes back on its next request; what it needs is made free first
        assert local.post("/v1/completions", json={"model": "llama", "prompt": "hi", "max_tokens": 2}).status_code == 200
        assert entries["llama"].loaded
        assert registry.resident_bytes - entries["llama"].resident_bytes + llama <= registry.memory_budget


def test_a_model_larger_than_the_budget_is_refused_with_503() -> None:
    registry = ModelRegistry.from_specs([f"bert={BERT}"], memory_budget=1024)
    with TestClient(create_app(registry)) as local:
        response = local.post("/v1/embeddings", json={"model": "bert", "input": "hi"})
        assert response.status_code == 503, response.text
        assert "memory budget" in response.json()["error"]["message"]
        assert not next(iter(registry)).loaded


def test_the_same_folder_twice_shares_one_loaded_model() -> None:
    registry = ModelRegistry.from_specs([f"a={BERT}", f"b={BERT}", f"c={BERT}"])
    with TestClient(create_app(registry)) as local:
        for name in "abc":
            assert local.post("/v1/embeddings", json={"model": name, "input": "hi"}).status_code == 200
        a, b, c = registry
        assert a.model is b.model is c.model
        assert a.resident_bytes > 0 and b.resident_bytes == c.resident_bytes == 0
        assert registry.resident_bytes == a.resident_bytes
        # unloading the first leaves the memory with the others: still counted once
        assert local.post("/v2/repository/models/a/unload").status_code == 200
        assert registry.resident_bytes >= _size(BERT)
        metrics = local.get("/metrics").text
        assert re.search(r'rtserve_model_resident_bytes\{model="a"\} 0\.0', metrics)


def test_serve_rejects_a_bad_memory_budget() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "rtserve", "serve", str(BERT), "--memory-budget", "lots"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--memory-budget" in done.stderr and "not a size" in done.stderr


# --- 32 concurrent clients: everything answered, memory returns ------------------------------


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc (Linux)")
def test_32_clients_all_answered_and_memory_returns(minilm_dir: Path) -> None:
    sentences = [" ".join(f"word{(i * 7 + j) % 97}" for j in range(1 + (i * 13) % 60)) for i in range(200)]
    with running_server("serve", f"minilm={minilm_dir}", "--port", "0", "--max-queue", "16") as line:
        url = re.search(r"on (http://\S+) ", line)[1]  # type: ignore[index]
        pid = running_server.last_process.pid  # type: ignore[attr-defined]

        def burst(clients: int, requests: int) -> list[str]:
            def worker(i: int) -> list[str]:
                problems = []
                with httpx.Client(timeout=60) as http:
                    for j in range(requests):
                        texts = [sentences[(i * requests + j + k) % len(sentences)] for k in range(1 + (i + j) % 4)]
                        response = http.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": texts})
                        if response.status_code not in (200, 429):
                            problems.append(f"client {i}: {response.status_code} {response.text[:200]}")
                return problems

            return run_in_threads(worker, count=clients, timeout=600)

        # warm-up: the same traffic at a lower concurrency, until the server's memory settles
        assert burst(8, 15) == []
        warm = _rss(pid)
        assert burst(32, 15) == []
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        # a few ordinary requests let the arenas' shrink policy see the load is gone
        for text in sentences[:12]:
            assert httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": text}).status_code == 200
        after = _rss(pid)
        assert after <= 1.10 * warm, f"resident memory {warm / 2**20:.1f} MiB after warm-up, {after / 2**20:.1f} MiB after the burst"


def test_instances_share_the_queue_and_answer_as_one_model_does(minilm_dir: Path) -> None:
    # Two instances of one encoder take turns at the queue; each runs on a pool of its own (one
    # thread: the machine's threads split in two) while the other is busy, pinned to CPUs of
    # its own; every request gets what the model gives it alone.
    import os
    import threading

    from rtserve.server.batcher import EmbedBatcher, instance_cpus

    model = rt.load(minilm_dir)
    texts = [" ".join(f"w{(i * 7 + j) % 31}" for j in range(1 + (i * 5) % 40)) for i in range(48)]
    expected = model.embed(texts)
    seen: list[tuple[str, int | None, frozenset[int]]] = []
    lock = threading.Lock()

    def run(items, on_rows=None):  # type: ignore[no-untyped-def]
        with lock:
            seen.append((threading.current_thread().name, rt.local_threads(), frozenset(os.sched_getaffinity(0))))
        return model.embed_encoded(items, on_rows=on_rows)

    async def scenario() -> list[np.ndarray]:
        batcher = EmbedBatcher("m", run, tokenize=model.tokenizer.encode_each, instances=2, threads=2, pin=True)
        try:
            answers = await asyncio.gather(*(batcher.submit_texts([t]) for t in texts))
        finally:
            batcher.stop()
            await batcher.wait_stopped()
        return [vectors for vectors, _ in answers]

    got = np.concatenate(asyncio.run(scenario()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    names = {name for name, _, _ in seen}
    assert names == {"rtserve-batcher-m-0", "rtserve-batcher-m-1"}, seen
    # A batch that starts while the other instance is busy runs on the instance's own pool.
    assert {local for _, local, _ in seen} <= {None, 1} and 1 in {local for _, local, _ in seen}, seen
    cpus = instance_cpus(2, 1)
    if cpus is not None:  # two CPUs or more: each instance on one of its own
        by_name = {name: affinity for name, _, affinity in seen}
        assert sorted(map(sorted, by_name.values())) == sorted(map(sorted, cpus)), by_name


def test_serve_rejects_zero_instances() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "rtserve", "serve", str(BERT), "--instances", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "--instances must be at least 1" in done.stderr


def test_embedding_requests_are_answered_as_their_rows_finish() -> None:
    # A batch's first requests get their vectors while the rest of the model call still runs.
    import threading

    from rtserve.server.batcher import EmbedBatcher
    from rtserve.tokenizer import Encoded

    release = threading.Event()

    def run(items: list[Encoded], on_rows) -> np.ndarray:  # type: ignore[no-untyped-def]
        out = np.asarray([[float(item.ids[0])] for item in items], dtype=np.float32)
        on_rows([0], out)  # the first item's batch is done
        release.wait(10)  # the second is still running
        on_rows([1], out)
        return out

    async def scenario() -> None:
        batcher = EmbedBatcher("m", run, tokenize=lambda texts, limit: [Encoded([len(t)], [1], [0]) for t in texts])
        first = asyncio.ensure_future(batcher.submit_texts(["abc"]))
        second = asyncio.ensure_future(batcher.submit_texts(["hello"]))
        vectors, items = await asyncio.wait_for(first, 5)
        assert vectors.tolist() == [[3.0]] and items[0].ids == [3]
        assert not second.done()
        release.set()
        assert (await second)[0].tolist() == [[5.0]]

    asyncio.run(scenario())
