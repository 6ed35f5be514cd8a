"""Where a compiled train step's time goes, by operation: the JAX profiler's trace of the step on this
machine, each executed XLA operation joined with the source line of the JAX code it came from.

    python benchmarks/profile_step.py [--config configs/baby_gpt.yaml] [--steps 20] [--top 15] [key=value ...]

XLA:CPU records one trace event per executed operation (thunk) with ``--xla_cpu_enable_xprof_traceme``
(set here before jax is imported). The trace is read back with ``jax.profiler.ProfileData``; the
compiled module's HLO text gives each operation's kind and its JAX name stack, whose named scopes
(``attn``, ``drn``, ``moe``, ``embed``, ``lm_head``, ``loss``, ``optimizer``) say which part of the model
it computes. Printed: the step's wall time, the operation time per step (operations may overlap on
the thread pool, so it can exceed the wall time), then the top operations, the time by part of the
model (forward and backward) and by kind of operation. ``--trace-dir`` keeps the raw trace for TensorBoard / Perfetto.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import JaxStep, emit, one_batch  # noqa: E402

from open_r1_jax.config import load_config  # noqa: E402
from open_r1_jax.parallel.mesh import make_mesh, split_cpu_host  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')
# the model's and the step's named scopes (model/transformer.py, training/step.py, the stages' losses)
PARTS = re.compile(r"\b(attn|drn|moe|embed|lm_head|loss|optimizer)\b")
# events that are not one operation: the executor around them, thread-pool bookkeeping, a device
# waiting for the others in a collective (on a split CPU host)
SKIP = ("ThunkExecutor::", "ThreadpoolListener", "SlinkyThreadPool", "end: ", "Rendezvous", "Wait: ")


def hlo_index(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> {opcode (with the fusion kind), op_name (the JAX name stack)} from HLO text."""
    out = {}
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode = m.groups()
        kind = re.search(r"kind=(\w+)", line)
        op_name = OP_NAME.search(line)
        out[name] = {
            "opcode": opcode + (f"/{kind.group(1)}" if kind and opcode == "fusion" else ""),
            "op_name": op_name.group(1) if op_name else "",
        }
    return out


def part(op_name: str) -> str:
    """The model part and direction of an operation: 'drn fwd', 'attn bwd', 'optimizer', ..."""
    scopes = PARTS.findall(op_name)
    scope = scopes[-1] if scopes else "other"
    if scope == "optimizer":
        return scope
    return f"{scope} {'bwd' if 'transpose(' in op_name else 'fwd'}"


def _family(name: str) -> str:
    """'loop_multiply_fusion.12' -> 'loop_multiply_fusion'."""
    return re.sub(r"(\.\d+)+$", "", name)


def trace_events(trace_dir: Path) -> list[tuple[str, float]]:
    """(operation name, duration s) of every XLA operation executed in the trace."""
    from jax.profiler import ProfileData

    files = sorted(trace_dir.rglob("*.xplane.pb"))
    if not files:
        raise SystemExit(f"no *.xplane.pb under {trace_dir}: the profiler wrote no trace")
    events = []
    for plane in ProfileData.from_file(str(files[-1])).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's own threads; the python line holds dispatch
                continue
            events += [(e.name, e.duration_ns * 1e-9) for e in line.events if not e.name.startswith(SKIP)]
    return events


def profile(cfg, steps: int, trace_dir: Path) -> dict:
    # the CPU host split as the train CLI splits it where the config asks (mesh.cpu_devices); each
    # device runs its own copy of every operation, and an operation's time sums its copies
    devices = split_cpu_host(cfg.mesh, cfg.train.micro_batch or cfg.train.global_batch)
    batch = one_batch(cfg)
    step = JaxStep(cfg, batch, warmup=3, mesh=make_mesh(cfg.mesh) if devices > 1 else None)  # warm-up: allocations
    wall = step.run(steps)
    jax.profiler.start_trace(str(trace_dir))
    for _ in range(steps):
        step.run(1)
    jax.profiler.stop_trace()
    ops: dict[str, float] = defaultdict(float)
    for name, sec in trace_events(trace_dir):
        ops[name] += sec / steps
    return {
        "wall": wall,
        "ops": dict(ops),
        "index": hlo_index(step.step.as_text()),
        "flops": step.flops,
        "tokens": int(np.count_nonzero(batch["segment_ids"])),
        "devices": devices,
    }


def report(res: dict, top: int, only: str | None = None) -> dict:
    ops, index = res["ops"], res["index"]
    if only:  # the operations of one part ("attn fwd", ...) only
        ops = {n: s for n, s in ops.items() if part(index.get(n, {}).get("op_name", "")) == only}
    total = sum(ops.values())
    print(
        f"step {res['wall'] * 1e3:.1f} ms wall ({res['tokens'] / res['wall']:,.0f} tokens/s, "
        f"{res['flops'] / res['wall'] / 1e9:.0f} GFLOP/s of {res['flops'] / 1e9:.2f} GFLOP); "
        f"{total * 1e3:.1f} ms of operations per step in {len(ops)} distinct operations"
        + (f" (summed over {res['devices']} CPU devices)" if res["devices"] > 1 else "")
    )
    info = lambda n: index.get(n, {"opcode": "?", "op_name": ""})
    print(f"\ntop {top} operations (ms/step, share of operation time, kind, JAX op)")
    rows = sorted(ops.items(), key=lambda kv: -kv[1])
    for name, sec in rows[:top]:
        i = info(name)
        print(f"  {sec * 1e3:7.2f} {sec / total:6.1%}  {name:<30} {i['opcode']:<16} {i['op_name'][-80:]}")
    by_part: dict[str, float] = defaultdict(float)
    by_kind: dict[str, float] = defaultdict(float)
    for name, sec in ops.items():
        by_part[part(info(name)["op_name"])] += sec
        by_kind[_family(name)] += sec
    print("\nby part of the model (named scopes; bwd = the backward pass)")
    for where, sec in sorted(by_part.items(), key=lambda kv: -kv[1]):
        print(f"  {sec * 1e3:7.2f} {sec / total:6.1%}  {where}")
    print(f"\ntop {top} kinds of operation")
    for kind, sec in sorted(by_kind.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {sec * 1e3:7.2f} {sec / total:6.1%}  {kind}")
    return {
        "cpu_devices": res["devices"],
        "step_ms": res["wall"] * 1e3,
        "op_ms": total * 1e3,
        "gflops_per_step": res["flops"] / 1e9,
        "top_operations": [
            {"name": n, "ms": s * 1e3, "kind": info(n)["opcode"], "op_name": info(n)["op_name"]} for n, s in rows[:top]
        ],
        "by_part_ms": {k: v * 1e3 for k, v in sorted(by_part.items(), key=lambda kv: -kv[1])},
        "by_kind_ms": {k: v * 1e3 for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])[:top]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/baby_gpt.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temporary folder)")
    ap.add_argument("--part", default=None, help='only the operations of one part, e.g. "attn fwd"')
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        res = profile(cfg, args.steps, Path(args.trace_dir or tmp))
    emit("profile_step", {"config": args.config, "overrides": args.overrides, **report(res, args.top, args.part)})


if __name__ == "__main__":
    main()
