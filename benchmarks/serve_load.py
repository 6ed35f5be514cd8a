"""Load test of ``python -m open_r1_jax.serve``: continuous batching against one request at a time.

Starts two servers in subprocesses on the tiny model (``--run DIR``, or ``configs/tiny.yaml``'s
architecture with random weights exported to a temporary folder: speed does not depend on the
weights): one with ``slots=--slots`` (continuous batching), one with ``slots=1`` (one request at a
time, the rest queued). Each is driven in turn by C concurrent closed-loop clients (async httpx: a
client sends its next request when the last one is answered) for ``--seconds``, C in
``--concurrency``; levels and servers alternate for ``--rounds`` and medians are reported, so that
the machine's drift hits both alike. Every request asks for ``--max-tokens`` tokens at temperature
0.7. Prints QPS, p50/p95/p99 latency and output tokens/s per level, the ratio at each level, then the
seed's deployment table (online, batch, edge) with what this machine reaches.
Target: continuous batching >= 4x the QPS of one-at-a-time at no worse p95.

    python benchmarks/serve_load.py [--run runs/tiny] [--slots 16] [--concurrency 1 4 8 16] [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"Q: {a}+{b}\nA: " for a, b in zip(range(100, 999, 37), range(999, 100, -41))]


def export_random_tiny(folder: Path) -> Path:
    from open_r1_jax.config import load_config, to_dict
    from open_r1_jax.export import torch_tensors, write_safetensors
    from open_r1_jax.model import build_model, split_model

    cfg = load_config(ROOT / "configs/tiny.yaml")
    _, params, rest = split_model(build_model(cfg.model))
    (folder / "config.json").write_text(json.dumps(to_dict(cfg)))
    write_safetensors(torch_tensors({"params": params, "model_state": rest}), folder, 1 << 30)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, slots: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "open_r1_jax.serve", "--run", str(run), "--port", str(self.port)]
        cmd += [f"slots={slots}", "max_queue=256", "log_level=warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                sys.exit(f"the server exited with {self.proc.returncode}")
        sys.exit("the server did not answer /health within 300 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def drive(url: str, concurrency: int, seconds: float, max_tokens: int) -> dict:
    """C closed-loop clients for ``seconds``: -> QPS, latency percentiles, output tokens/s."""
    latencies: list[float] = []
    tokens = 0
    stop_at = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        k = i
        while time.perf_counter() < stop_at:
            body = {"prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.7, "seed": k}
            t0 = time.perf_counter()
            r = await http.post("/v1/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]
            k += concurrency

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return {"requests": len(lat), "qps": len(lat) / wall, "p50": p50, "p95": p95, "p99": p99, "tokens_s": tokens / wall}


def warm(url: str) -> None:
    for p in sorted(PROMPTS, key=len)[:: len(PROMPTS) - 1]:  # the shortest and longest prompt buckets
        httpx.post(f"{url}/v1/completions", json={"prompt": p, "max_tokens": 4}, timeout=300).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="run or export to serve (default: tiny.yaml's architecture, random weights)")
    parser.add_argument("--slots", type=int, default=16, help="sequence slots of the continuous-batching server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=6.0, help="per concurrency level and round")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds; medians are reported")
    args = parser.parse_args()
    modes = {"batched": args.slots, "one_at_a_time": 1}
    runs: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in args.concurrency} for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else export_random_tiny(Path(tmp))
        servers = {mode: Server(run, slots) for mode, slots in modes.items()}  # both up; one driven at a time
        try:
            for server in servers.values():
                warm(server.url)
            for _ in range(args.rounds):  # alternated, so that the machine's drift hits both modes alike
                for c in args.concurrency:
                    for mode, server in servers.items():
                        runs[mode][c].append(asyncio.run(drive(server.url, c, args.seconds, args.max_tokens)))
        finally:
            for server in servers.values():
                server.close()
    results = {
        m: {c: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for c, rs in lv.items()}
        for m, lv in runs.items()
    }
    print(
        f"{args.max_tokens} output tokens per request; batched = {args.slots} slots, one at a time = 1 slot; "
        f"medians of {args.rounds} alternated rounds of {args.seconds:g} s"
    )
    print(f"{'mode':<14} {'C':>3} {'req':>5} {'QPS':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'tok/s':>8}")
    for mode, levels in results.items():
        for c, r in levels.items():
            print(
                f"{mode:<14} {c:>3} {r['requests']:>5} {r['qps']:>7.2f} {r['p50']:>7.3f} {r['p95']:>7.3f} "
                f"{r['p99']:>7.3f} {r['tokens_s']:>8.1f}"
            )
    ratios = {c: results["batched"][c]["qps"] / results["one_at_a_time"][c]["qps"] for c in args.concurrency}
    p95_ok = {c: results["batched"][c]["p95"] <= results["one_at_a_time"][c]["p95"] for c in args.concurrency}
    for c in args.concurrency:
        print(f"C={c:<3} QPS ratio batched / one-at-a-time {ratios[c]:5.2f}x, p95 no worse: {p95_ok[c]}")
    batched = results["batched"]
    online = max((r["qps"] for r in batched.values() if r["p95"] < 0.3), default=0.0)
    edge = max((r["qps"] for r in batched.values() if r["p95"] < 1.0), default=0.0)
    best = max(batched.values(), key=lambda r: r["qps"])
    print("\nthe seed's deployment table, at this machine's scale (2 CPU cores, the tiny model):")
    print(f"{'scenario':<10} {'seed target':<32} {'reached here':<40}")
    print(f"{'online':<10} {'2xA100, p95 < 300 ms, 50 QPS':<32} {f'{online:.1f} QPS at p95 < 300 ms':<40}")
    reached = f"{best['qps']:.1f} samples/s ({best['tokens_s']:.0f} tokens/s)"
    print(f"{'batch':<10} {'8xA100, 200 samples/s':<32} {reached:<40}")
    print(f"{'edge':<10} {'< 1 s, 5 QPS':<32} {f'{edge:.1f} QPS at p95 < 1 s':<40}")
    emit(
        "serve_load",
        {
            "max_tokens": args.max_tokens,
            "slots": args.slots,
            "results": results,
            "qps_ratio": ratios,
            "p95_no_worse": p95_ok,
        },
    )


if __name__ == "__main__":
    main()
