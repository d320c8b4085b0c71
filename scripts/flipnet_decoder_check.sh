#!/bin/bash
# Score a FLIPNET folder decoded by another autoencoder (same encoder, so the adapters stay valid):
#   scripts/flipnet_decoder_check.sh FLIPNET_FOLDER AUTOENCODER_FOLDER TAG
# makes out/prior-latent-128-TAG (weights/prior-latent-128 with autoencoder/ replaced) and
# out/flipnet-TAG/flipnet (the FLIPNET folder pointed at it), then runs the degradation realism
# table (with the decoder's ceiling row) and the restoration row on the bench gfpgan set.
set -euo pipefail
FLIPNET=$1; AE=$2; TAG=$3
P=out/prior-latent-128-$TAG
F=out/flipnet-$TAG
rm -rf "$P" "$F"
cp -r weights/prior-latent-128 "$P" && rm -r "$P/autoencoder" && cp -r "$AE" "$P/autoencoder"
mkdir -p "$F" && cp -r "$FLIPNET" "$F/flipnet"
python - "$F" "$P" <<'PY'
import json, sys
folder, prior = sys.argv[1:]
cfg = json.load(open(f"{folder}/flipnet/config.json"))
cfg["prior"] = prior
json.dump(cfg, open(f"{folder}/flipnet/config.json", "w"), indent=2)
train = json.load(open("configs/flipnet-128-latent-cpu-leg3.json"))
train["out_dir"], train["flipnet"]["prior"] = folder, prior
json.dump(train, open(f"{folder}/train.json", "w"), indent=2)
PY
python benchmarks/degradation_realism.py --n 200 --flipnet-steps 10 --flipnet "$F/flipnet" \
    --presets gfpgan --autoencoder "$AE" --out "out/degradation-realism-$TAG"
python benchmarks/flipnet_ablations.py --configs "$F/train.json" --steps 10 --starts 0.4 \
    --fidelities 0.5 --guidances config --out "out/flipnet-$TAG-test"
