"""Proxy overhead: llama.cpp's OpenAI-compatible server straight vs through `tracetune proxy`.

    python benchmarks/proxy_bench.py [--requests 400] [--concurrency 32] [--max-tokens 1]
                                     [--gen-tokens 32] [--gen-requests 64] [--stream]

Starts `python -m llama_cpp.server` on the embedded GGUF and `tracetune proxy --upstream
openai:smol@http://127.0.0.1:PORT/v1` in front of it (its store in a temporary directory), both on
loopback, and sends the same chat completions (one fixed prompt, greedy; the server reuses the
cached prompt for both sides alike) straight to the server and through the proxy:

  (a) latency: --requests tiny requests (max_tokens=1, so the model's time does not drown the
      overhead) one at a time, direct and proxied in A-B-B-A order, so drift in the machine's load
      falls on both sides alike; each side's median and p90 and the added latency (proxy -
      direct, ms). Goal: added median <= 2 ms.
  (b) throughput: --concurrency clients (asyncio, keep-alive connections) send requests in
      alternating blocks direct, proxy, proxy, direct; requests/s of each and the ratio proxy /
      direct. Goal: >= 0.95x. Two workloads: the tiny requests (--requests of them: pure overhead,
      which on a small machine measures how much CPU the proxy takes from the server and the
      clients that share it) and requests that generate --gen-tokens tokens (--gen-requests of
      them: a model-bound workload, as agents send; --gen-tokens 0 skips it).

Last, the proxy's record count, which must equal the number of requests it was sent. Every loop
is bounded in count and by --max-seconds per phase; both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx2 as httpx  # the openai client's HTTP library

from tracetune.logs.store import LogStore
from tracetune.models.spec import embedded_gguf_path

PROMPT = "Say OK."
GEN_PROMPT = "Write a Python function that reverses a string."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], ready_url: str, log_path: Path, env=None) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{cmd[2]} exited: {log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(ready_url, timeout=2)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"{cmd[2]} did not come up in 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def send(client: httpx.Client, url: str, body: dict) -> float:
    """One request; seconds until the whole answer was read."""
    t0 = time.perf_counter()
    resp = client.post(url, json=body)
    resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        sys.exit(f"{url} answered HTTP {resp.status_code}: {resp.text[:500]}")
    return elapsed


def latency(urls: dict, body: dict, n: int, max_s: float) -> dict[str, list[float]]:
    """Per-request seconds for each side, one request at a time in A-B-B-A order."""
    times: dict[str, list[float]] = {side: [] for side in urls}
    order = ["direct", "proxy", "proxy", "direct"]
    deadline = time.monotonic() + max_s
    with httpx.Client(timeout=60) as client:
        for i in range(2 * n):
            if time.monotonic() > deadline:
                print(f"  latency phase stopped at its {max_s:.0f} s limit")
                break
            side = order[i % 4]
            times[side].append(send(client, urls[side], body))
    return times


async def _throughput(url: str, body: dict, n: int, concurrency: int, max_s: float) -> tuple:
    """(requests done, seconds) for n requests from `concurrency` clients."""
    left = n
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        deadline = t0 + max_s
        done = 0

        async def worker() -> None:
            nonlocal left, done
            while left > 0 and time.perf_counter() < deadline:
                left -= 1
                resp = await client.post(url, json=body)
                await resp.aread()
                if resp.status_code != 200:
                    raise SystemExit(f"{url} answered HTTP {resp.status_code}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - t0


def throughput(url: str, body: dict, n: int, concurrency: int, max_s: float) -> tuple:
    return asyncio.run(_throughput(url, body, n, concurrency, max_s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400,
                    help="tiny requests per side, in each of the latency and throughput phases")
    ap.add_argument("--concurrency", type=int, default=32, help="clients in the throughput phase")
    ap.add_argument("--max-tokens", type=int, default=1, help="max_tokens of the tiny requests")
    ap.add_argument("--gen-tokens", type=int, default=32,
                    help="max_tokens of the model-bound throughput workload (0: skip it)")
    ap.add_argument("--gen-requests", type=int, default=64,
                    help="model-bound requests per side")
    ap.add_argument("--stream", action="store_true", help="streamed answers (server-sent events)")
    ap.add_argument("--n-threads", type=int, default=0,
                    help="llama.cpp server threads (default: the server's own default)")
    ap.add_argument("--max-seconds", type=float, default=300, help="time limit per phase")
    args = ap.parse_args()
    if args.requests < 4 or args.concurrency < 1 or args.gen_requests < 2:
        sys.exit("--requests must be at least 4, --gen-requests 2 and --concurrency 1")
    with tempfile.TemporaryDirectory(prefix="proxy_bench_") as tmp:
        run(args, Path(tmp))


def throughput_blocks(urls: dict, body: dict, n: int, concurrency: int, max_s: float) -> dict:
    """{side: (requests done, seconds)} over blocks direct, proxy, proxy, direct of n/2 each."""
    rates = {"direct": [0, 0.0], "proxy": [0, 0.0]}
    for side in ("direct", "proxy", "proxy", "direct"):
        done, secs = throughput(urls[side], body, n // 2, concurrency, max_s / 4)
        rates[side][0] += done
        rates[side][1] += secs
    return rates


def run(args, tmp: Path) -> None:
    server_port, proxy_port = free_port(), free_port()
    server_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
                  "--host", "127.0.0.1", "--port", str(server_port), "--n_ctx", "2048",
                  "--model_alias", "smol", "--interrupt_requests", "False"]
    if args.n_threads:
        server_cmd += ["--n_threads", str(args.n_threads)]
    server_url = f"http://127.0.0.1:{server_port}/v1"
    server = start(server_cmd, f"{server_url}/models", tmp / "server.log")
    proxy = None
    try:
        proxy = start([sys.executable, "-m", "tracetune.cli", "proxy", "--upstream",
                       f"openai:smol@{server_url}", "--port", str(proxy_port),
                       "--out", str(tmp / "run")],
                      f"http://127.0.0.1:{proxy_port}/health", tmp / "proxy.log",
                      env={**os.environ, "OPENAI_API_KEY": "sk-bench-not-a-real-key"})
        urls = {"direct": f"{server_url}/chat/completions",
                "proxy": f"http://127.0.0.1:{proxy_port}/v1/chat/completions"}
        tiny = {"model": "smol", "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": args.max_tokens, "temperature": 0, "seed": 0,
                "stream": args.stream}
        gen = {**tiny, "messages": [{"role": "user", "content": GEN_PROMPT}],
               "max_tokens": args.gen_tokens}
        proxied = 0

        with httpx.Client(timeout=60) as client:  # warm-up: caches, pools, first-call costs
            for _ in range(10):
                for side in ("direct", "proxy"):
                    send(client, urls[side], tiny)
            proxied += 10

        times = latency(urls, tiny, args.requests, args.max_seconds)
        proxied += len(times["proxy"])
        rates = {"tiny": throughput_blocks(urls, tiny, args.requests, args.concurrency,
                                           args.max_seconds)}
        if args.gen_tokens:
            rates["gen"] = throughput_blocks(urls, gen, args.gen_requests, args.concurrency,
                                             args.max_seconds)
        proxied += sum(r["proxy"][0] for r in rates.values())
        health = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{proxy_port}/health", timeout=10).read())
    finally:
        if proxy is not None:
            stop(proxy)
        stop(server)
    with LogStore(tmp / "run") as store:
        records = store.count()
        bad = sum(r.status != "ok" for r in store)

    ms = {side: [t * 1000 for t in ts] for side, ts in times.items()}
    added_med = statistics.median(ms["proxy"]) - statistics.median(ms["direct"])
    added_p90 = pct(ms["proxy"], 0.9) - pct(ms["direct"], 0.9)
    mode = "streamed" if args.stream else "non-streamed"
    print(f"{mode} chat completions on loopback, {os.cpu_count()} CPUs; latency: "
          f"{len(ms['direct'])} + {len(ms['proxy'])} requests (max_tokens={args.max_tokens}) "
          f"one at a time; throughput: {args.concurrency} concurrent clients")
    print(f"{'':<34}{'direct':>10}{'proxy':>10}{'proxy - direct':>16}")
    print(f"{'latency median (ms)':<34}{statistics.median(ms['direct']):>10.2f}"
          f"{statistics.median(ms['proxy']):>10.2f}{added_med:>+16.2f}")
    print(f"{'latency p90 (ms)':<34}{pct(ms['direct'], 0.9):>10.2f}"
          f"{pct(ms['proxy'], 0.9):>10.2f}{added_p90:>+16.2f}")
    ratios = {}
    for kind, r in rates.items():
        rps = {side: n / s for side, (n, s) in r.items()}
        ratios[kind] = rps["proxy"] / rps["direct"]
        tokens = args.max_tokens if kind == "tiny" else args.gen_tokens
        label = f"req/s, max_tokens={tokens} ({r['direct'][0]}+{r['proxy'][0]})"
        print(f"{label:<34}{rps['direct']:>10.1f}{rps['proxy']:>10.1f}"
              f"{ratios[kind]:>15.3f}x")
    print(f"added median latency {added_med:+.2f} ms (goal <= 2 ms): "
          f"{'met' if added_med <= 2 else 'MISSED'}")
    for kind, ratio in ratios.items():
        tokens = args.max_tokens if kind == "tiny" else args.gen_tokens
        print(f"throughput proxy/direct at max_tokens={tokens}: {ratio:.3f}x (goal >= 0.95x): "
              f"{'met' if ratio >= 0.95 else 'MISSED'}")
    print(f"proxy store: {records} records ({bad} not ok) for {proxied} proxied requests "
          f"(/health: {health['records']}): {'match' if records == proxied else 'MISMATCH'}")


if __name__ == "__main__":
    main()
