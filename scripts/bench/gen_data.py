#!/usr/bin/env python3
"""Deterministic data for scripts/bench/compare.sh (needs numpy).

    gen_data.py OUTDIR [N_CKPT=5] [FROZEN_MIB=192] [DELTA_MIB=64] [FLOOR_MIB=1024]

Writes OUTDIR/ckpt_1.bin .. ckpt_N.bin: each is FROZEN_MIB of float32 "weights" (normal,
sigma 0.02, seed 1000; byte-identical in every checkpoint) followed by DELTA_MIB of fresh
float32 weights (seed 2000+k, different in every checkpoint). Also OUTDIR/floor.bin:
FLOOR_MIB of uniform random bytes (seed 3000) for the SHA-256 floor.
"""
import os
import sys

import numpy as np

MIB = 1 << 20


def weights(seed: int, mib: int) -> bytes:
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.standard_normal(mib * MIB // 4, dtype=np.float32)
    a *= np.float32(0.02)
    return a.tobytes()


def main() -> None:
    out = sys.argv[1]
    n, frozen_mib, delta_mib, floor_mib = (
        [int(x) for x in sys.argv[2:6]] + [5, 192, 64, 1024][len(sys.argv[2:6]):]
    )
    os.makedirs(out, exist_ok=True)
    frozen = weights(1000, frozen_mib)
    for k in range(1, n + 1):
        with open(os.path.join(out, f"ckpt_{k}.bin"), "wb") as f:
            f.write(frozen)
            f.write(weights(2000 + k, delta_mib))
    del frozen
    rng = np.random.Generator(np.random.PCG64(3000))
    with open(os.path.join(out, "floor.bin"), "wb") as f:
        for _ in range(floor_mib // 64):
            f.write(rng.integers(0, 2**63, size=64 * MIB // 8, dtype=np.uint64).tobytes())


if __name__ == "__main__":
    main()
