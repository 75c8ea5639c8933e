"""Tokenizing a corpus larger than memory should cost a bounded amount of it: this builds a
JSON-lines corpus of SIZE MB, tokenizes it through `ablate.data` (a fresh cache, the byte
tokenizer and, with --bpe, a 4,096-token BPE trained on it), and prints the peak growth of the
process's memory, the time and the throughput.

    python benchmarks/tokenize_stream.py 100 300        # MB of text, each size in a fresh process
    python benchmarks/tokenize_stream.py 100 --bpe
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import resource, sys, time
from pathlib import Path
from ablate.core.config import DataConfig
from ablate.data.corpus import prepare
source, cache, tokenizer = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
corpus = prepare(DataConfig(source=source, tokenizer=tokenizer, vocab_size=4096 if tokenizer == "bpe" else None), cache)
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(corpus.meta.n_train_tokens + corpus.meta.n_val_tokens, round(seconds, 1), round(grown))
"""


def corpus(folder: Path, megabytes: int) -> Path:
    """Rows of Python-like text, varied enough that a BPE has something to learn."""
    path = folder / "corpus.jsonl"
    with path.open("w") as f:
        written, i = 0, 0
        while written < megabytes * 2**20:
            row = json.dumps(
                {"text": f"def f{i}(x):\n    return [x * {i % 97} for _ in range({i % 13})]  # {i}\n" * 20}
            )
            f.write(row + "\n")
            written, i = written + len(row) + 1, i + 1
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", type=int, nargs="+", help="MB of text")
    parser.add_argument("--bpe", action="store_true", help="train a BPE instead of the byte tokenizer")
    args = parser.parse_args()
    tokenizer = "bpe" if args.bpe else "byte"
    print(f"{'MB':>6} {'tokens':>13} {'seconds':>8} {'MB/s':>6} {'peak growth MB':>15}   tokenizer {tokenizer}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            source = corpus(Path(tmp), size)
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, str(source), str(Path(tmp) / "cache"), tokenizer],
                capture_output=True,
                text=True,
                check=True,
            )
            tokens, seconds, grown = done.stdout.split()
            print(f"{size:>6} {int(tokens):>13,} {float(seconds):>8.1f} {size / float(seconds):>6.1f} {grown:>15}")


if __name__ == "__main__":
    main()
