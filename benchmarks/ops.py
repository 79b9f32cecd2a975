"""Op benchmark (same as `fastweights bench ops`): see fastweights/benchmark/ops.py for what it measures.

python benchmarks/ops.py                          # sum + delta, L = 512..32768, ~10 min on 2 cores
python benchmarks/ops.py --lengths 512 2048 --rules delta --peers
"""

from __future__ import annotations

import argparse
import sys

from fastweights.bench import ops

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=ops.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ops.configure(parser)
    sys.exit(ops.main(parser.parse_args()))
