#!/usr/bin/env bash
# Side by side: `text2ct bench` and MONAI (f32 and bf16 autocast) on the same workload, the same
# inputs and the same thread count, one after the other; prints a Markdown table of each figure and
# MONAI's time over ours (> 1: text2ct is faster).
#
#   benchmarks/compare.sh unet --latent 4,16,16,8 [--batch 1] [--repeats 2] [--threads 2]
#   benchmarks/compare.sh vae --size 64,64,32 [--decode one-pass|sliding|both] [--splits 4] [--window 16,16,8]
#   benchmarks/compare.sh generate --size 64,64,32 --steps 2 [--decode one-pass|sliding] [--decode-window X,Y,Z]
#
# The arguments go to both programs unchanged (they take the same ones); --threads defaults to the
# number of cores. TEXT2CT names the binary (default target/release/text2ct: `cargo build --release`
# first), PYTHON the interpreter with torch and monai (default python3). MONAI_PRECISIONS limits the
# MONAI runs (default "f32 bf16"). The JSON of every run is kept in $OUT (default a temporary folder).
# Peaks: the whole run's (text2ct's includes writing the random weights for `generate`) and the
# measured phases' (reset before each phase where Linux allows it). PyTorch's first forward pays
# oneDNN's set-up: give --repeats 2 (unet, vae) or --steps 2 or more (generate) for warm figures.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
TEXT2CT="${TEXT2CT:-$root/target/release/text2ct}"
PYTHON="${PYTHON:-python3}"
MONAI_PRECISIONS="${MONAI_PRECISIONS:-f32 bf16}"

if [ $# -lt 1 ] || ! [[ "$1" =~ ^(unet|vae|generate)$ ]]; then
    echo "usage: $0 unet|vae|generate [options of text2ct bench]" >&2
    exit 2
fi
bench="$1"
shift
args=("$@")
case " ${args[*]-} " in
*" --threads "*) ;;
*) args+=(--threads "$(nproc)") ;;
esac
if [ ! -x "$TEXT2CT" ]; then
    echo "$TEXT2CT: no such program (cargo build --release, or set TEXT2CT)" >&2
    exit 2
fi
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"

echo "text2ct bench $bench ${args[*]}" >&2
"$TEXT2CT" bench "$bench" "${args[@]}" --json | tail -n 1 >"$OUT/text2ct.json"
for p in $MONAI_PRECISIONS; do
    echo "monai_bench.py $bench ${args[*]} --precision $p" >&2
    "$PYTHON" "$here/monai_bench.py" "$bench" "${args[@]}" --precision "$p" --json | tail -n 1 >"$OUT/monai_$p.json"
done

"$PYTHON" - "$bench" "$OUT" $MONAI_PRECISIONS <<'EOF'
import json, sys
bench, out, precisions = sys.argv[1], sys.argv[2], sys.argv[3:]
ours = json.load(open(f"{out}/text2ct.json"))
monai = {p: json.load(open(f"{out}/monai_{p}.json")) for p in precisions}
fields = {
    "unet": ["seconds_per_forward", "peak_rss_forward_bytes", "peak_rss_bytes"],
    "vae": ["seconds_encode", "seconds_decode", "peak_rss_encode_bytes", "peak_rss_decode_bytes", "peak_rss_bytes"],
    "generate": ["seconds_total", "seconds_per_step", "seconds_decode", "seconds_total_scaled",
                 "peak_rss_generate_bytes", "peak_rss_bytes"],
}[bench]
shape = {k: ours[k] for k in ("latent", "batch", "size", "steps", "guidance", "decode") if k in ours}
print(f"`text2ct bench {bench}` vs MONAI ({next(iter(monai.values()))['program'] if monai else ''}), "
      f"{ours['threads']} threads; " + ", ".join(f"{k} {v}" for k, v in shape.items()))
print()
head = "| figure | text2ct | " + " | ".join(f"MONAI {p}" for p in precisions) + " | " + \
    " | ".join(f"MONAI {p} / text2ct" for p in precisions) + " |"
print(head)
print("|" + "---|" * (2 + 2 * len(precisions)))
def fmt(k, v):
    if v is None:
        return "–"
    return f"{v / 1e9:.2f} GB" if k.endswith("_bytes") else f"{v:.3f} s"
for k in fields:
    a = ours.get(k)
    row = [k, fmt(k, a)] + [fmt(k, monai[p].get(k)) for p in precisions]
    for p in precisions:
        b = monai[p].get(k)
        row.append(f"{b / a:.2f}" if a and b else "–")
    print("| " + " | ".join(row) + " |")
EOF
