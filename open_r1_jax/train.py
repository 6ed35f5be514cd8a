"""``python -m open_r1_jax.train --config FILE [key.sub=value ...]``: the main job (a thin CLI)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m open_r1_jax.train", description=__doc__)
    parser.add_argument("--config", help="YAML file of overrides (configs/tiny.yaml for a first run)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50 run.dir=runs/x")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from open_r1_jax.config import ConfigError, load_config
    from open_r1_jax.parallel.distributed import DistributedInitError, initialize_from_env
    from open_r1_jax.parallel.mesh import split_cpu_host
    from open_r1_jax.training.trainer import TrainingDiverged, train

    try:
        cfg = load_config(args.config, args.overrides)
        split_cpu_host(cfg.mesh, cfg.train.micro_batch or cfg.train.global_batch)
        initialize_from_env()
        summary = train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TrainingDiverged, DistributedInitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
