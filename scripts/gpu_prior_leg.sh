#!/bin/sh
# One prepared GPU command (issue 18): train a prior leg at full speed and bring back its export.
#
#   sh scripts/gpu_prior_leg.sh CONFIG SHARD
#
# Runs from the repository root on the device machine, in at most 9 minutes with data unpacking
# (CONFIG's max_minutes stops training in time; use a *-gpu.json config: bf16, channels_last,
# data_on_device, compile). SHARD is a tar of aligned faces from scripts/pack_shards.py, carried
# with the call; it is unpacked into out/prepared/. A latent config's `autoencoder` must be a
# committed folder (it travels with the tree). What comes back through $OUT (8 files of at most
# 16 MiB): prior.tar.part-aa, -ab, ... (the fp16 EMA export, with autoencoder/ for a latent prior,
# as a tar cut into 15 MiB parts: `cat prior.tar.part-* | tar xf -` puts it back together),
# samples.png (the last sample grid) and train.log (speed: images/s is in the progress lines).
set -e
CONFIG=$1
SHARD=$2
PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu-leg}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src" PYTHONUNBUFFERED=1
mkdir -p out/prepared "$OUT"
tar xf "$SHARD" -C out/prepared
RUN=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['out_dir'])" "$CONFIG")
"$PYTHON" -m flipnet.training.prior "$CONFIG" > "$OUT/train.log" 2>&1 || {
    tail -n 40 "$OUT/train.log"; exit 1; }
tar cf - -C "$RUN" prior | split -b 15m - "$OUT/prior.tar.part-"
LAST=$(ls -t "$RUN"/samples/*.png 2>/dev/null | head -n 1)
[ -n "$LAST" ] && cp "$LAST" "$OUT/samples.png"
tail -n 3 "$OUT/train.log"
