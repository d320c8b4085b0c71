#!/bin/sh
# One prepared GPU command (issue 18): unpack face shards, run training legs at full speed, and
# bring back the last leg's export.
#
#   sh scripts/gpu_leg.sh SHARDS MODULE:CONFIG [MODULE:CONFIG ...]
#
# SHARDS: comma-separated tars of aligned faces from scripts/pack_shards.py, carried with the
# call; each is unpacked into out/prepared/. MODULE: a flipnet.training module (prior,
# autoencoder, face_embedding, flipnet, restorer); the legs run in order, so FLIPNET's embedder
# trains before its adapters read it. Each CONFIG's max_minutes keeps the whole command within
# 9 minutes (use the *-gpu.json configs: bf16, channels_last, data on the device). Folders a
# config names (a prior, an autoencoder, a pseudo restorer) must be committed: they travel with
# the tree. What comes back through $OUT (8 files of at most 16 MiB): EXPORT.tar.part-aa, -ab, ...
# (the last leg's fp16 EMA export as a tar cut into 15 MiB parts: `cat EXPORT.tar.part-* | tar
# xf -` puts it back together), samples.png (the last leg's newest sample grid) and one
# MODULE.log per leg (speed: images/s is in the progress lines).
set -e
usage() { printf '%s\n' "usage: sh scripts/gpu_leg.sh SHARDS MODULE:CONFIG [MODULE:CONFIG ...]" >&2
          exit 2; }
[ $# -ge 2 ] || usage
SHARDS=$1
shift
for LEG in "$@"; do
    case $LEG in *:*) ;; *) usage ;; esac
done
PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu-leg}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src" PYTHONUNBUFFERED=1
mkdir -p out/prepared "$OUT"
for SHARD in $(printf '%s' "$SHARDS" | tr ',' ' '); do
    tar xf "$SHARD" -C out/prepared
done
for LEG in "$@"; do
    MODULE=${LEG%%:*}
    CONFIG=${LEG#*:}
    case $MODULE in
        prior|autoencoder|flipnet|restorer) EXPORT=$MODULE ;;
        face_embedding) EXPORT=embedder ;;
        *) printf '%s\n' "unknown training module '$MODULE' in '$LEG'" >&2; exit 2 ;;
    esac
    "$PYTHON" -m "flipnet.training.$MODULE" "$CONFIG" > "$OUT/$MODULE.log" 2>&1 || {
        tail -n 40 "$OUT/$MODULE.log"; exit 1; }
    RUN=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['out_dir'])" "$CONFIG")
    tail -n 2 "$OUT/$MODULE.log"
done
# dash has no pipefail: check the export before tar | split hides a failure
[ -d "$RUN/$EXPORT" ] || { printf '%s\n' "no export at $RUN/$EXPORT" >&2; exit 1; }
tar cf - -C "$RUN" "$EXPORT" | split -b 15m - "$OUT/$EXPORT.tar.part-"
LAST=$(ls -t "$RUN"/samples/*.png 2>/dev/null | head -n 1)
[ -n "$LAST" ] && cp "$LAST" "$OUT/samples.png"
exit 0
