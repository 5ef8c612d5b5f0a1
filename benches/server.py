"""Server load benchmark: all-MiniLM-L6-v2 embeddings over HTTP against in-process ``model.embed``.

Starts ``python -m rtserve serve minilm --port 0 --max-queue 4096`` as a subprocess (reads its
ready line for the URL), then for each text mix and each client concurrency (1, 8, 32) runs N
client threads, each with its own ``httpx.Client`` (keep-alive), sending ``POST /v1/embeddings``
requests until a fixed total is done, and reports requests/s, sentences/s and per-request
p50/p99 latency. Two request shapes: one text per request (the server's batcher must gather
concurrent requests into batches) and 16 texts per request.

Text mixes: "short" is "The quick brown fox jumps over the lazy dog." (12 tokens) in every
request; "mixed" is benches/embeddings.py's 512 seeded 5-60-word sentences (loaded from that
file), request i taking the next sentence(s) in order.

The in-process baseline, in the same run, is ``rt.load(folder).embed(texts, batch_size=64)``
over the same sentences, run in this process while the server idles. This machine's speed
drifts by 20% over minutes (other tenants of the host), so each row gets its own baseline:
embed run back to back for ``--baseline-seconds`` (default 4) just before the row and again
just after, sentences/s over that time, the two averaged. The headline figure is server
sentences/s / that baseline (the server's overhead: HTTP, JSON, queueing, batching). The
table also gives the ratio to the best of 3 single embed calls measured once at the start
(the figure earlier versions of this script reported). RTSERVE_NUM_THREADS is the same for both (default 2); on a 2-core
machine the server and the client threads share the same 2 cores, so client-side HTTP and
JSON work is charged to the server's figure.

    python benches/server.py              # progress and a summary on stdout
    python benches/server.py --markdown   # plus the table for docs/benchmarks.md
    python benches/server.py --quick      # few requests, for checking the script
    python benches/server.py --nodelay    # the server with TCP_NODELAY set (see _NODELAY_WRAPPER)

Requests ask for ``encoding_format: "base64"`` (what the openai client sends by default);
``--encoding float`` asks for JSON float lists instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu_model  # noqa: E402  (benches/machine.py)

_spec = importlib.util.spec_from_file_location("embeddings_bench", HERE / "embeddings.py")
_emb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_emb)  # type: ignore[union-attr]

SHORT = _emb.SHORT
N_SENTENCES = _emb.N_SENTENCES
BATCH = _emb.BATCH
CONCURRENCY = (1, 8, 32)
_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# ``--nodelay``: run the CLI with TCP_NODELAY set on its listening socket (Linux hands it on
# to the accepted sockets). The CLI binds ``socket.socket(family, SOCK_STREAM)``, whose proto
# is 0, so asyncio's ``_set_nodelay`` (which checks ``sock.proto == IPPROTO_TCP``) skips the
# accepted sockets: Nagle then holds a response's body (sent after its headers) until the
# client's delayed ACK, about 40 ms, on every keep-alive request after the first few.
_NODELAY_WRAPPER = """
import socket, sys
_listen = socket.socket.listen
def listen(self, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM:
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _listen(self, *args)
socket.socket.listen = listen
from rtserve.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def start_server(model: str, threads: int, max_queue: int, extra: list[str],
                 nodelay: bool = False) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
    env["RTSERVE_NUM_THREADS"] = str(threads)
    launcher = ["-c", _NODELAY_WRAPPER] if nodelay else ["-m", "rtserve"]
    cmd = [sys.executable, *launcher, "serve", model, "--port", "0", "--max-queue", str(max_queue), *extra]
    shown = shlex.join(cmd) if not nodelay else "python -m rtserve (TCP_NODELAY wrapper) " + shlex.join(cmd[3:])
    print(f"server: {shown}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" on (http://\S+)", line)
    if not match:
        proc.kill()
        _, err = proc.communicate()
        raise SystemExit(f"server did not start: {line!r}\n{err}")
    # Drain stderr so the server never blocks on a full pipe.
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
    return proc, match.group(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_load(url: str, model: str, texts: list[str], per_request: int, concurrency: int,
             total: int, encoding: str, server_pid: int) -> dict:
    """``total`` requests of ``per_request`` texts from ``concurrency`` threads; latency and rates."""
    import httpx

    payloads = []
    for i in range(total):
        start = (i * per_request) % len(texts)
        chunk = [texts[(start + j) % len(texts)] for j in range(per_request)]
        payloads.append({"model": model, "input": chunk[0] if per_request == 1 else chunk,
                         "encoding_format": encoding})
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=120.0) as client:
            client.get("/v1/models")  # open the connection before the clock starts
            barrier.wait()
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= total:
                    break
                t0 = time.perf_counter()
                r = client.post("/v1/embeddings", json=payloads[i])
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    continue
                data = r.json()["data"]
                if len(data) != per_request:
                    errors.append(f"got {len(data)} vectors for {per_request} inputs")
                mine.append(dt)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    client0, server0 = time.process_time(), cpu_seconds(server_pid)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu, server_cpu = time.process_time() - client0, cpu_seconds(server_pid) - server0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, first: {errors[0]}")
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return {"rps": total / wall, "sps": total * per_request / wall, "p50": p50, "p99": p99,
            "wall": wall, "requests": total,
            "client_cpu": client_cpu / wall, "server_cpu": server_cpu / wall}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _wrk_ms(text: str) -> float:
    """wrk's latency figures ("812.00us", "48.20ms", "1.02s") in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def run_load_wrk(url: str, model: str, texts: list[str], per_request: int, concurrency: int,
                 seconds: float, encoding: str, server_pid: int) -> dict:
    """``concurrency`` keep-alive connections of wrk (a C load generator) for ``seconds``,
    cycling through the same request bodies as ``run_load``; latency and rates."""
    import json
    import resource
    import shutil
    import tempfile

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--client wrk: wrk is not installed (Debian: apt-get install wrk)")
    bodies = []
    for i in range(len(texts)):
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        bodies.append(json.dumps({"model": model, "input": chunk[0] if per_request == 1 else chunk,
                                  "encoding_format": encoding}))
    lua = ["bodies = {"]
    lua += [f"  [==[{b}]==]," for b in bodies]
    lua += ["}", "local i = 0",
            'local headers = {["Content-Type"] = "application/json"}',
            "request = function()",
            "  i = i + 1",
            '  return wrk.format("POST", "/v1/embeddings", headers, bodies[(i % #bodies) + 1])',
            "end"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("\n".join(lua) + "\n")
        script = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server0, t0 = cpu_seconds(server_pid), time.perf_counter()
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", script,
                              f"{url}/v1/embeddings"], capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds(server_pid) - server0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(script)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad or "Socket errors" in out:
        raise SystemExit(f"wrk saw failed requests:\n{out}")
    done = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)[1])  # type: ignore[index]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    p99 = _wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"rps": rps, "sps": rps * per_request, "p50": p50, "p99": p99, "wall": wall, "requests": done,
            "client_cpu": client_cpu / wall, "server_cpu": server_cpu / wall}


def in_process(model, texts: list[str], runs: int) -> float:
    model.embed(texts[:BATCH], batch_size=BATCH)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        model.embed(texts, batch_size=BATCH)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def sustained(model, texts: list[str], seconds: float) -> float:
    """Sentences/s of ``embed(texts, batch_size=64)`` run back to back for ``seconds``."""
    done = 0
    t0 = time.perf_counter()
    while True:
        model.embed(texts, batch_size=BATCH)
        done += len(texts)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def _client_line(kind: str, seconds: float) -> str:
    if kind == "wrk":
        import shutil

        version = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True).stdout
        first = (version.splitlines() or ["wrk"])[0].split(" [")[0]
        return (f"{first}, one thread, N keep-alive connections for {seconds:g} s, request bodies cycled from "
                f"a Lua script")
    return "httpx, N threads with one keep-alive httpx.Client each, a fixed number of requests"


def repo_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="also print the table for docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="few requests, for checking the script")
    parser.add_argument("--threads", type=int, default=2, help="RTSERVE_NUM_THREADS for server and in-process")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="RTSERVE_NUM_THREADS of the server only (default: --threads)")
    parser.add_argument("--model", default="minilm", help="catalog name or HF folder (default: minilm)")
    parser.add_argument("--max-queue", type=int, default=4096)
    parser.add_argument("--encoding", choices=["base64", "float"], default="base64")
    parser.add_argument("--nodelay", action="store_true",
                        help="start the server with TCP_NODELAY on its listening socket (see _NODELAY_WRAPPER)")
    parser.add_argument("--no-batch16", action="store_true", help="skip the 16-texts-per-request runs")
    parser.add_argument("--client", choices=["wrk", "httpx"], default=None,
                        help="load generator: wrk (C, little CPU; the default when installed) or httpx threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each wrk row (default 10)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                        help="client concurrencies to run (default 1 8 32)")
    parser.add_argument("--baseline-seconds", type=float, default=4.0,
                        help="in-process embed time before and after each row (default 4)")
    args = parser.parse_args()
    import shutil

    client_kind = args.client or ("wrk" if shutil.which("wrk") else "httpx")
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
        args.baseline_seconds = min(args.baseline_seconds, 0.5)
    single_total, multi_total, runs = (64, 16, 1) if args.quick else (512, 128, 3)
    command = shlex.join([sys.executable, *sys.argv])

    os.environ["RTSERVE_NUM_THREADS"] = str(args.threads)
    import httpx
    import rtserve as rt
    from rtserve import catalog

    rt.set_num_threads(args.threads)
    folder = catalog.resolve(args.model, quiet=True)
    mixes = {"short": [SHORT] * N_SENTENCES, "mixed": _emb.sentences(N_SENTENCES)}
    load_start = load_average()
    machine = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, rtserve ISA {rt.isa()}, "
               f"RTSERVE_NUM_THREADS={args.threads} in-process, {args.server_threads or args.threads} in the server; "
               f"server and client threads share the machine's cores")
    print(f"machine: {machine}")
    print(f"versions: python {platform.python_version()}, rtserve built from {repo_commit()}, "
          f"httpx {httpx.__version__}; client: {_client_line(client_kind, args.seconds)}")
    print(f"load average (1/5/15 min) at start: {load_start}")

    model = rt.load(folder)
    base = {}
    for mix, texts in mixes.items():
        base[mix] = in_process(model, texts, runs)
        print(f"in-process {mix}: {base[mix]:.0f} sentences/s (embed(512 texts, batch_size={BATCH}), best of {runs})",
              flush=True)

    shapes = [1] if args.no_batch16 else [1, 16]
    proc, url = start_server(str(folder), args.server_threads or args.threads, args.max_queue, [], args.nodelay)
    name = Path(folder).name
    rows = []
    try:
        print(f"server at {url} (model name {name!r})", flush=True)
        warm = run_load(url, name, mixes["mixed"], 1, 8, 64, args.encoding, proc.pid)  # warm-up, not reported
        print(f"warm-up: {warm['rps']:.0f} requests/s", flush=True)
        for mix, texts in mixes.items():
            for per_request in shapes:
                total = single_total if per_request == 1 else multi_total
                for conc in args.concurrency:
                    before = sustained(model, texts, args.baseline_seconds)
                    time.sleep(0.3)
                    if client_kind == "wrk":
                        r = run_load_wrk(url, name, texts, per_request, conc, args.seconds, args.encoding, proc.pid)
                        total = r["requests"]
                    else:
                        r = run_load(url, name, texts, per_request, conc, total, args.encoding, proc.pid)
                    after = sustained(model, texts, args.baseline_seconds)
                    adjacent = (before + after) / 2
                    r.update(mix=mix, per_request=per_request, conc=conc, base=adjacent,
                             ratio=r["sps"] / adjacent, ratio_start=r["sps"] / base[mix])
                    rows.append(r)
                    print(f"  {mix:5s} {per_request:2d} text(s)/request, concurrency {conc:2d}: "
                          f"{r['rps']:7.1f} requests/s, {r['sps']:6.0f} sentences/s, p50 {r['p50']:7.2f} ms, "
                          f"p99 {r['p99']:7.2f} ms, {r['ratio']:.2f}x in-process around the row "
                          f"({before:.0f} before, {after:.0f} after), {r['ratio_start']:.2f}x the start's best of "
                          f"{runs} ({total} requests); CPUs busy: "
                          f"client {r['client_cpu']:.2f}, server {r['server_cpu']:.2f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_end = load_average()
    print(f"load average (1/5/15 min) at end: {load_end}")
    for mix in mixes:
        hit = [r for r in rows if r["mix"] == mix and r["per_request"] == 1 and r["conc"] == 32]
        if hit:
            print(f"target: {mix}, 1 text/request, concurrency 32 >= 0.85x in-process: {hit[0]['ratio']:.2f}x "
                  f"(of the start's best of {runs}: {hit[0]['ratio_start']:.2f}x)")

    if args.markdown:
        print()
        amount = (f"{args.seconds:g} s per row" if client_kind == "wrk" else
                  f"{single_total} requests per 1-text row, {multi_total} per 16-text row")
        print(f"- **Run**: {'quick (`--quick`)' if args.quick else 'full'}: {amount}; in-process embed for "
              f"{args.baseline_seconds:g} s before and after each row (and best of {runs} at the start)")
        print(f"- **Client**: {_client_line(client_kind, args.seconds)}")
        print(f"- **Machine**: {machine}; load average {load_start} at start, {load_end} at end")
        print(f"- **Versions**: python {platform.python_version()}, rtserve built from {repo_commit()}, "
              f"httpx {httpx.__version__}")
        print(f"- **Command**: `{command}`" + (" (server started with TCP_NODELAY on its listening socket)"
                                               if args.nodelay else ""))
        print(f"- **In-process** (`rt.load(folder).embed(512 texts, batch_size={BATCH})`): best of {runs} at the "
              f"start: short {base['short']:.0f} sentences/s, mixed {base['mixed']:.0f}; around each row: in the table")
        print()
        print("| texts | texts/request | concurrency | requests/s | sentences/s | p50 ms | p99 ms | in-process around "
              "the row | ÷ in-process | ÷ start's best | client CPUs | server CPUs |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['mix']} | {r['per_request']} | {r['conc']} | {r['rps']:.1f} | {r['sps']:.0f} | "
                  f"{r['p50']:.2f} | {r['p99']:.2f} | {r['base']:.0f} | {r['ratio']:.2f} | {r['ratio_start']:.2f} | "
                  f"{r['client_cpu']:.2f} | {r['server_cpu']:.2f} |")


if __name__ == "__main__":
    main()
