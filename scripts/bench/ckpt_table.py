"""The table "ours vs ZipNN vs zstd -3" from the outputs of checkpoints.sh:
  python3 scripts/bench/ckpt_table.py OUTDIR
reads OUTDIR/zipnn.json, OUTDIR/ours_codec.jsonl (benches/codec_files.rs) and
OUTDIR/ours_store.json (ckpt_ours.py). Speeds are MB/s of raw bytes on one core (CPU time for
ZipNN and zstd, wall time on an otherwise idle thread for ours); sizes are fractions of raw.
"""
import json
import sys

out = sys.argv[1]
zipnn = json.load(open(f"{out}/zipnn.json"))
ours = [json.loads(line) for line in open(f"{out}/ours_codec.jsonl")]
store = json.load(open(f"{out}/ours_store.json"))

series = {}
for z in zipnn["files"]:
    series.setdefault(z["path"].split("/")[-3 if z["path"].endswith(".safetensors") else -2], []).append(z)
by_path = {o["path"]: o for o in ours}

print("| series | raw MB | zstd -3 | ZipNN | ours | ZipNN MB/s c / d | ours MB/s c / d | zstd -3 MB/s c / d |")
print("|---|---|---|---|---|---|---|---|")
for name, zs in series.items():
    raw = sum(z["bytes"] for z in zs)
    os_ = [by_path[z["path"]] for z in zs]
    mbs = lambda sec: raw / 1e6 / sec
    print(f"| {name} whole | {raw / 1e6:.0f} "
          f"| {sum(z['zstd3_bytes'] for z in zs) / raw:.4f} "
          f"| {sum(z['zipnn_bytes'] for z in zs) / raw:.4f} "
          f"| {sum(o['stored_bytes'] for o in os_) / raw:.4f} "
          f"| {mbs(sum(z['zipnn_compress_cpu_s'] for z in zs)):.0f} / {mbs(sum(z['zipnn_decompress_cpu_s'] for z in zs)):.0f} "
          f"| {mbs(sum(o['compress_s'] for o in os_)):.0f} / {mbs(sum(o['decompress_s'] for o in os_)):.0f} "
          f"| {mbs(sum(z['zstd3_compress_cpu_s'] for z in zs)):.0f} / {mbs(sum(z['zstd3_decompress_cpu_s'] for z in zs)):.0f} |")
print()
print("| series | raw MB | zstd -3 XOR chain | ZipNN XOR chain | ml-dash store (deltas) | upload / floor | download / floor |")
print("|---|---|---|---|---|---|---|")
for c in zipnn["chains"]:
    name = next(n for n, zs in series.items() if zs[0]["path"] == c["files"][0])
    s = store[name]
    worst_up, worst_down = max(s["upload_x_floor"]), max(s["download_x_floor"])
    up = sum(s["upload_s"]) / sum(s["sha256_s"])
    down = sum(s["download_s"]) / sum(s["sha256_s"])
    print(f"| {name} x{len(c['files'])} | {c['bytes'] / 1e6:.0f} | {c['zstd3_chain_bytes'] / c['bytes']:.4f} "
          f"| {c['chain_bytes'] / c['bytes']:.4f} | {s['ratio']:.4f} "
          f"| {up:.2f}x (worst {worst_up:.2f}x) | {down:.2f}x (worst {worst_down:.2f}x) |")
