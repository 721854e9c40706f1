"""Train one generator on a preset split of ``generation_split.py`` and keep the checkpoint
where ``generation.py --dataset D --checkpoint-dir DIR`` reuses it (``DIR/D-KIND.pt`` and
its training time in ``DIR/D-KIND.json``), so training and scoring can run apart.

    python benchmarks/train_split.py carbon_24 crystal_flow /tmp/ckpt --setting epochs=60
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

from common import shared_data
from generation_split import _number, load_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dataset")
    p.add_argument("kind")
    p.add_argument("checkpoint_dir", type=Path)
    p.add_argument("--setting", action="append", help="KEY=VALUE (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    from matloop.generators.torch_common import training_progress
    from matloop.generators.training import generator_class

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    train, _ = load_split(args.dataset, shared_data(), args.seed)
    settings = {"seed": args.seed}
    for item in args.setting or []:
        key, _, value = item.partition("=")
        settings[key] = _number(value)
    gen = generator_class(args.kind)(**settings)
    load0 = os.getloadavg()[0]
    start = time.perf_counter()

    def show(epoch, epochs, logs):
        print(f"epoch {epoch}/{epochs} loss {logs.get('loss', 0):.4f} "
              f"{time.perf_counter() - start:.0f} s load {os.getloadavg()[0]:.1f}", flush=True)

    with training_progress(show):
        gen.fit(train)
    seconds = time.perf_counter() - start
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint_dir / f"{args.dataset}-{args.kind}.pt"
    gen.save(ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps({
        "train_seconds": seconds, "n_train": len(train), "settings": settings,
        "load_avg_1min_start_end": [load0, os.getloadavg()[0]],
    }))
    print(f"trained {args.kind} on {args.dataset} in {seconds:.0f} s -> {ckpt}")


if __name__ == "__main__":
    main()
