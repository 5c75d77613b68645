"""ZipNN and zstd -3 on checkpoint files: size, single-thread compress and decompress time (best
of --runs, in memory, page cache warm, `sync` before each timed step), byte-exact round trip.
  python scripts/bench/zipnn_measure.py [FILE...] [--chain FILE...]... [--json OUT] [--runs 3]
Each --chain gives one series in order (its files are measured one by one too): file 0 is
compressed whole, file i as ZipNN's XOR delta against file i-1 when both have the same size
(whole otherwise); chain_bytes is the sum (chain_file_bytes per file), whole_bytes the sum of
the whole-file ZipNN sizes. zstd3_chain_bytes is the same chain with zstd -3 on the XOR.

ZipNN is called as ZipNN(method="huffman", input_format="byte", bytearray_dtype=DTYPE,
threads=1), plus delta_compressed_type="byte" for the chain. DTYPE comes from the safetensors
header (the dtype holding most bytes) and is float32 for other files (torch.save). Note: ZipNN's
compress rewrites its input buffer in place, so each call gets a fresh copy (made untimed).
"""
import argparse
import json
import os
import struct
import sys
import time
from importlib.metadata import version

import numpy as np
import zipnn
import zstandard

ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def file_dtype(path):
    if not path.endswith(".safetensors"):
        return "float32"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    by = {}
    for k, v in header.items():
        if k != "__metadata__":
            by[v["dtype"]] = by.get(v["dtype"], 0) + v["data_offsets"][1] - v["data_offsets"][0]
    return ST_DTYPES[max(by, key=by.get)]


def zipnn_codec(dtype, delta=False):
    kw = dict(method="huffman", input_format="byte", bytearray_dtype=dtype, threads=1)
    if delta:
        kw["delta_compressed_type"] = "byte"
    return zipnn.ZipNN(**kw)


def best(runs, fn, arg_of=lambda: None):
    """Best wall and CPU seconds of fn(arg) over runs (arg made untimed), and fn's last result."""
    wall = cpu = float("inf")
    for _ in range(runs):
        arg = arg_of()
        os.sync()
        w, c = time.perf_counter(), time.process_time()
        out = fn(arg)
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu, out


def measure(path, runs):
    with open(path, "rb") as f:  # warm-up read: the page cache holds the file from here on
        data = f.read()
    dtype = file_dtype(path)
    z = zipnn_codec(dtype)
    zc_s, zc_cpu, comp = best(runs, z.compress, lambda: bytearray(data))
    zd_s, zd_cpu, back = best(runs, z.decompress, lambda: comp)
    assert bytes(back) == data, f"ZipNN round trip differs: {path}"
    cz, dz = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    sc_s, sc_cpu, scomp = best(runs, cz.compress, lambda: data)
    sd_s, sd_cpu, sback = best(runs, dz.decompress, lambda: scomp)
    assert sback == data, f"zstd round trip differs: {path}"
    return dict(path=path, bytes=len(data), dtype=dtype,
                zipnn_bytes=len(comp), zipnn_compress_s=zc_s, zipnn_decompress_s=zd_s,
                zstd3_bytes=len(scomp), zstd3_compress_s=sc_s, zstd3_decompress_s=sd_s,
                zipnn_compress_cpu_s=zc_cpu, zipnn_decompress_cpu_s=zd_cpu,
                zstd3_compress_cpu_s=sc_cpu, zstd3_decompress_cpu_s=sd_cpu)


def chain(paths, whole):
    """XOR-delta chain over paths in order; whole maps path -> measured row."""
    sizes, zsizes = [], []
    prev = None
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        dtype = file_dtype(p)
        if prev is not None and len(prev) == len(data):
            z = zipnn_codec(dtype, delta=True)
            comp = z.compress(bytearray(data), delta_second_data=bytearray(prev))
            assert bytes(z.decompress(comp, delta_second_data=prev)) == data, f"delta differs: {p}"
            xor = np.bitwise_xor(np.frombuffer(data, np.uint8), np.frombuffer(prev, np.uint8))
            zsizes.append(len(zstandard.ZstdCompressor(level=3).compress(xor.tobytes())))
            sizes.append(len(comp))
        else:
            sizes.append(whole[p]["zipnn_bytes"])
            zsizes.append(whole[p]["zstd3_bytes"])
        prev = data
    return dict(files=paths, bytes=sum(whole[p]["bytes"] for p in paths), chain_bytes=sum(sizes),
                whole_bytes=sum(whole[p]["zipnn_bytes"] for p in paths),
                zstd3_chain_bytes=sum(zsizes),
                zstd3_whole_bytes=sum(whole[p]["zstd3_bytes"] for p in paths),
                chain_file_bytes=sizes, zstd3_chain_file_bytes=zsizes, chain_s=time.perf_counter() - t0)


def mbs(n, s):
    return n / s / 1e6 if s > 0 else float("inf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--chain", nargs="+", action="append", default=[], metavar="FILE")
    ap.add_argument("--json")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    paths = list(dict.fromkeys(a.files + [p for c in a.chain for p in c]))
    if not paths:
        ap.error("no files")

    call = ('ZipNN(method="huffman", input_format="byte", bytearray_dtype=DTYPE, threads=1)'
            '.compress(buf) / .decompress(buf)')
    print(f"zipnn {version('zipnn')}, zstandard {version('zstandard')} (level 3); best of {a.runs}; "
          f"MB/s = 1e6 bytes of input per wall second, one thread", flush=True)
    w = max(len(p) for p in paths)
    hdr = (f"{'file':<{w}} {'dtype':>8} {'bytes':>12} {'zipnn':>12} {'ratio':>6} {'c MB/s':>7} "
           f"{'d MB/s':>7} {'zstd-3':>12} {'ratio':>6} {'c MB/s':>7} {'d MB/s':>7}")
    print(hdr)
    rows = {}
    for p in paths:
        r = rows[p] = measure(p, a.runs)
        n = r["bytes"]
        print(f"{p:<{w}} {r['dtype']:>8} {n:>12,} {r['zipnn_bytes']:>12,} "
              f"{r['zipnn_bytes'] / n:>6.3f} {mbs(n, r['zipnn_compress_s']):>7.0f} "
              f"{mbs(n, r['zipnn_decompress_s']):>7.0f} {r['zstd3_bytes']:>12,} "
              f"{r['zstd3_bytes'] / n:>6.3f} {mbs(n, r['zstd3_compress_s']):>7.0f} "
              f"{mbs(n, r['zstd3_decompress_s']):>7.0f}", flush=True)
    chains = [chain(c, rows) for c in a.chain]
    for c in chains:
        n = c["bytes"]
        print(f"chain of {len(c['files'])} in {os.path.commonpath(c['files'])}: {n:,} bytes; "
              f"ZipNN whole {c['whole_bytes']:,} ({c['whole_bytes'] / n:.3f}), "
              f"XOR chain {c['chain_bytes']:,} ({c['chain_bytes'] / n:.3f}); "
              f"zstd-3 whole {c['zstd3_whole_bytes']:,} ({c['zstd3_whole_bytes'] / n:.3f}), "
              f"XOR chain {c['zstd3_chain_bytes']:,} ({c['zstd3_chain_bytes'] / n:.3f})")
    if a.json:
        out = dict(zipnn_version=version("zipnn"), zstandard_version=version("zstandard"),
                   zipnn_call=call, runs=a.runs, files=list(rows.values()), chains=chains)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
