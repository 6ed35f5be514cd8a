"""Multi-process initialisation on JAX's own distributed runtime (``jax.distributed``).

Sources, in order:
1. explicit variables: ``OPEN_R1_COORDINATOR`` (host:port of process 0), ``OPEN_R1_NUM_PROCESSES``,
   ``OPEN_R1_PROCESS_ID``, optionally ``OPEN_R1_LOCAL_DEVICE_IDS`` (comma-separated);
2. SLURM: inside an ``srun`` step with more than one task, ``jax.distributed`` reads the SLURM
   variables itself (coordinator = first node of the step).
Otherwise the run is single-process. ``OPEN_R1_INIT_TIMEOUT`` (seconds, default 300) bounds the wait
for the coordinator: a coordinator that never answers gives a clear error, not a hang.
On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import jax

log = logging.getLogger("open_r1_jax")


class DistributedInitError(RuntimeError):
    """The distributed runtime could not start (bad variables, or no coordinator within the timeout)."""


def _int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise DistributedInitError(f"{name}={value!r}: expected an integer") from None


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Poll a TCP connection to ``host:port`` until it answers. XLA's client aborts the whole process
    (a fatal check, not an exception) when the coordinator never answers, so we look first."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedInitError(f"OPEN_R1_COORDINATOR={address!r}: expected host:port")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f"could not join coordinator {address} within {timeout:g}s ({e.strerror or e}). Check that "
                    "process 0 is running and reachable at that address, or raise OPEN_R1_INIT_TIMEOUT."
                ) from None
            time.sleep(0.5)


def _slurm_tasks() -> int:
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) if os.environ.get("SLURM_JOB_ID") else 1


def multi_process_env() -> bool:
    """Whether the environment asks for several processes (a coordinator address, or a SLURM step of
    several tasks): what ``initialize_from_env`` starts ``jax.distributed`` for."""
    return bool(os.environ.get("OPEN_R1_COORDINATOR")) or _slurm_tasks() > 1


def initialize_from_env() -> bool:
    """Start ``jax.distributed`` from the environment; returns True when running multi-process."""
    timeout = _int("OPEN_R1_INIT_TIMEOUT") if os.environ.get("OPEN_R1_INIT_TIMEOUT") else 300
    coordinator = os.environ.get("OPEN_R1_COORDINATOR")
    if not multi_process_env():
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or os.environ.get("OPEN_R1_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict = {"initialization_timeout": timeout}
    if coordinator:
        n, i = _int("OPEN_R1_NUM_PROCESSES"), _int("OPEN_R1_PROCESS_ID")
        if not 0 <= i < n:
            raise DistributedInitError(f"OPEN_R1_PROCESS_ID={i} must be in 0..OPEN_R1_NUM_PROCESSES-1 ({n - 1})")
        kwargs.update(coordinator_address=coordinator, num_processes=n, process_id=i)
        if os.environ.get("OPEN_R1_LOCAL_DEVICE_IDS"):
            kwargs["local_device_ids"] = [int(x) for x in os.environ["OPEN_R1_LOCAL_DEVICE_IDS"].split(",")]
        where = f"coordinator {coordinator} (process {i} of {n})"
        if i > 0:  # process 0 hosts the coordinator
            try:
                wait_for_coordinator(coordinator, timeout)
            except DistributedInitError as e:
                raise DistributedInitError(str(e).replace(f"coordinator {coordinator}", where, 1)) from None
    else:
        where = f"the SLURM step's coordinator ({_slurm_tasks()} tasks)"
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with what a user can act on
        raise DistributedInitError(
            f"could not join {where} within {timeout}s: {str(e).splitlines()[0][:300]}. Check that process 0 "
            f"is running and reachable at that address, or raise OPEN_R1_INIT_TIMEOUT."
        ) from e
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
