#!/usr/bin/env python
"""Build the synthetic people's SMPL-format body model (pipeline/synth_model.py) and write it atomically.

The shipped file pipeline/data/synth_body_model.npz is this script's output with the default seed;
tests/test_synth_model.py checks that the file and the code agree.

    .venv/bin/python scripts/make_body_model.py [--seed 0] [--out pipeline/data/synth_body_model.npz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.fsutil import atomic_path
from pipeline.synth_model import BODY_MODEL_SEED, body_model_path, build_body_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=BODY_MODEL_SEED, help="seed of the random shape directions β8, β9")
    ap.add_argument("--out", type=Path, default=body_model_path(), help="output .npz")
    args = ap.parse_args()
    model = build_body_model(args.seed)
    with atomic_path(args.out, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **model)
    print(f"wrote {args.out}: {model['v_template'].shape[0]} vertices, {model['f'].shape[0]} faces, "
          f"{model['shapedirs'].shape[2]} shape components, seed {args.seed}")


if __name__ == "__main__":
    main()
