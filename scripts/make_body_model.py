#!/usr/bin/env python
"""Write the synthetic people's SMPL-format body model (pipeline/synth_model.py) to a file, atomically.

The toolkit does not need this script: ``body_model_path()`` builds the model (0.2 s) and keeps it in the user's
cache (``$PERSPOSE_CACHE``, else ``~/.cache/perspose``). Use it for a copy to inspect or to give another tool; with
the default seed it writes exactly the bytes the toolkit uses (tests/test_synth_model.py checks it).

    .venv/bin/python scripts/make_body_model.py [--seed 0] [--out synth_body_model.npz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.codec import npz_bytes
from pipeline.fsutil import atomic_write_bytes
from pipeline.synth_model import BODY_MODEL_SEED, build_body_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=BODY_MODEL_SEED, help="seed of the random shape directions β8, β9")
    ap.add_argument("--out", type=Path, default=Path("synth_body_model.npz"), help="output .npz")
    args = ap.parse_args()
    model = build_body_model(args.seed)
    atomic_write_bytes(args.out, npz_bytes(model))
    print(f"wrote {args.out}: {model['v_template'].shape[0]} vertices, {model['f'].shape[0]} faces, "
          f"{model['shapedirs'].shape[2]} shape components, seed {args.seed}")


if __name__ == "__main__":
    main()
