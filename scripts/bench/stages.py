"""CPU seconds per GiB per stage of ml-dash commands, from `perf record` samples (perf from
Debian's linux-perf; works where perf cannot count cycles, since it samples the CPU clock).
  python3 scripts/bench/stages.py BIN FILE [FILE2]
times, for FILE: an upload into an empty store (every byte new), the same upload again (every
chunk stored), a download; with FILE2 (the next checkpoint of FILE), its upload as the next
version (deltas) and its download. Symbols are grouped by stage; a row is CPU-s per GiB of the
file. Run it on an otherwise idle machine: the CPU time of each stage grows when another
process shares the core.
"""
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

FREQ = 999
RULES = [
    ("SHA-256", r"sha2|sha256"),
    ("BLAKE3", r"blake3"),
    ("chunking", r"hash16|chunker|fastcdc|Chunker"),
    ("plane coding (Huffman, zstd, transposes)", r"huffman|planes|codec::|rotated_stats|sample_stats|zstd|ZSTD|HUF_|HIST_|FSE"),
    ("delta transform", r"delta::"),
    ("kernel: copies to and from files", r"copy_to_iter|copy_folio|copy_user|rep_movs"),
    ("kernel: zeroing new pages, faults", r"clear_page|page_fault|do_anonymous|alloc_pages"),
    ("user memcpy / memset", r"memmove|memset|memcpy"),
    ("index (sled)", r"sled"),
]


def stages(cmd, work):
    data = os.path.join(work, "perf.data")
    subprocess.run(["sync"])
    subprocess.run(["perf", "record", "-q", "-o", data, "-F", str(FREQ), *cmd],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                          "--sort", "sym", "-F", "sample,sym"],
                         capture_output=True, text=True, check=True).stdout
    cats = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s+(\d+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        n, kind, sym = int(m.group(1)), m.group(2), m.group(3)
        name = next((nm for nm, pat in RULES if re.search(pat, sym)), None)
        cats[name or ("kernel: other" if kind == "k" else "other")] += n
    return {k: v / FREQ for k, v in cats.items()}


def main():
    bin_, f1 = sys.argv[1], sys.argv[2]
    f2 = sys.argv[3] if len(sys.argv) > 3 else None
    gib = os.path.getsize(f1) / (1 << 30)
    work = tempfile.mkdtemp(dir="/var/tmp")
    try:
        root = os.path.join(work, "s")
        base = [bin_, "--root", root]
        where = ["--project", "p", "--experiment", "e"]
        out = os.path.join(work, "out")
        steps = [
            ("upload, new", base + ["upload", *where, "--to", "f", f1]),
            ("upload, stored", base + ["upload", *where, "--to", "g", f1]),
            ("download", base + ["download", *where, "/f", "-o", out]),
        ]
        if f2:
            steps += [
                ("upload, next version (deltas)", base + ["upload", *where, "--to", "f", f2]),
                ("download, next version", base + ["download", *where, "/f", "-o", out]),
            ]
        cols = [(name, stages(cmd, work)) for name, cmd in steps]
        names = [nm for nm, _ in RULES] + ["kernel: other", "other"]
        print(f"CPU-s per GiB ({os.path.basename(f1)}, {gib:.2f} GiB)")
        print("| stage | " + " | ".join(n for n, _ in cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for n in names:
            print(f"| {n} | " + " | ".join(f"{c.get(n, 0) / gib:.3f}" for _, c in cols) + " |")
        print("| **total** | " + " | ".join(f"**{sum(c.values()) / gib:.3f}**" for _, c in cols) + " |")
    finally:
        shutil.rmtree(work)


main()
