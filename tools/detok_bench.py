"""Host-side costs the trainer's scoring path pays per std-step batch, on this machine's CPU.

    python tools/detok_bench.py [--reps 20]

128 rows x 256 random token ids (seeded) of the bundled SmolLM2 tokenizer:
- transformers' `batch_decode` against the Rust `decode_batch` behind it (`grpo.rollout.rust_batch_decode`,
  same texts asserted), medians of --reps calls;
- whether the Rust decode releases the GIL: a pure-Python loop timed alone and with the decode running on a
  thread (equal times: it does);
- starting a fresh 8-thread ThreadPoolExecutor and mapping 26 trivial jobs (what the math verifier did per
  batch before it kept its threads) against mapping them on a kept pool.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_ms(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return 1e3 * statistics.median(out)


def main() -> None:
    import torch

    from grpo.models import load_tokenizer
    from grpo.rollout import rust_batch_decode

    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    tok = load_tokenizer("smollm2-135m-instruct")
    rows = torch.randint(0, len(tok), (128, 256), generator=torch.Generator().manual_seed(0)).tolist()
    fast = rust_batch_decode(tok)
    assert fast is not None and fast(rows) == tok.batch_decode(rows, skip_special_tokens=True)
    slow_ms = median_ms(lambda: tok.batch_decode(rows, skip_special_tokens=True), args.reps)
    fast_ms = median_ms(lambda: fast(rows), args.reps)
    print(f"batch_decode {slow_ms:.1f} ms, Rust decode_batch {fast_ms:.1f} ms (128 x 256 tokens, same texts)")

    def spin(n=300_000):
        x = 0
        for i in range(n):
            x += i
        return x

    alone = median_ms(spin, args.reps)
    beside = []
    for _ in range(args.reps):
        th = threading.Thread(target=fast, args=(rows,))
        t = time.perf_counter()
        th.start()
        spin()
        beside.append(time.perf_counter() - t)
        th.join()
    print(f"Python loop alone {alone:.1f} ms, beside the Rust decode on a thread "
          f"{1e3 * statistics.median(beside):.1f} ms")

    def fresh_pool():
        with ThreadPoolExecutor(max_workers=8) as ex:
            list(ex.map(lambda k: k, range(26)))

    kept = ThreadPoolExecutor(max_workers=8)
    list(kept.map(lambda k: k, range(26)))
    print(f"26 trivial jobs: fresh 8-thread pool {median_ms(fresh_pool, args.reps):.2f} ms, kept pool "
          f"{median_ms(lambda: list(kept.map(lambda k: k, range(26))), args.reps):.2f} ms")


if __name__ == "__main__":
    main()
