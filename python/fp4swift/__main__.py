"""`python -m fp4swift ...`: the `fp4swift` command, also torchrun's module entry
(`torchrun --nproc-per-node 2 -m fp4swift train ...`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
