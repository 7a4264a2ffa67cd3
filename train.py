"""Train an MLP on MNIST (see ``python train.py --help``); e.g. ``XPMLP_BACKEND=cupy python train.py``."""

from xpmlp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
