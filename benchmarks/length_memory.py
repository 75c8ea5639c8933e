"""Scoring past the training length must not cost memory quadratic in the length: this scores a
model (d_model 256, 4 layers, trained context 128, untrained weights: memory does not depend on
them) with `ablate.inference.lengths.losses` at each length, a batch holding the same number of tokens at
every length (batch 16 × 128, as the studies evaluate), and prints the peak growth of the
process's memory during scoring, each mixer and length in a fresh process.

    python benchmarks/length_memory.py                       # mha, gla, mamba2 at 128 to 8k
    python benchmarks/length_memory.py --mixers mha --lengths 128,1024
"""

import argparse
import subprocess
import sys

MEASURE = """
import resource, sys
import numpy as np, torch
import ablate
from ablate.inference import lengths
mixer, length = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = ablate.build_model({"mixer": mixer, "preset": "modern", "vocab_size": 2048, "context": 128,
                            "d_model": 256, "n_layers": 4, "n_heads": 4, "qkv_dim": 256, "ffn_dim": 1024})
val = np.random.default_rng(0).integers(0, 2048, size=4 * 16 * 128 + 1).astype(np.uint16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lengths.losses(model, val, [length], 16 * 128, 1)
print(round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", default="mha,gla,mamba2")
    parser.add_argument("--lengths", default="128,256,512,1024,2048,4096,8192")
    args = parser.parse_args()
    sizes = [int(n) for n in args.lengths.split(",")]
    print(f"{'mixer':<8}" + "".join(f"{n:>8}" for n in sizes) + "   peak growth in MB while scoring, by length")
    for mixer in args.mixers.split(","):
        grown = []
        for n in sizes:
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, mixer, str(n)], capture_output=True, text=True, check=True
            )
            grown.append(int(done.stdout.split()[-1]))
        ratio = grown[-1] / max(grown[0], 1)
        print(
            f"{mixer:<8}" + "".join(f"{g:>8}" for g in grown) + f"   {sizes[-1] // sizes[0]}x the length: {ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
