#!/usr/bin/env bash
# ENAT vs U-ViT on the digits demo at EQUAL TRAINING TIME: each config trains for the same wall-clock budget
# (trainer.max_time), then its last checkpoint is validated (digits-FID, masked-token loss) and its sampling cost
# is measured (GFLOPs per generated image, guided, T = 8). Prints one JSON line per backbone.
#   bash scripts/compare_digits_backbones.sh [BUDGET, default 00:00:03:30]
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-00:00:03:30}
PY=${PYTHON:-python}
for name in demo_digits demo_digits_enat; do
  run=runs/compare/$name
  rm -rf "$run"; mkdir -p runs/compare
  "$PY" -m lit_nat fit --config "configs/$name.yaml" --trainer.max_time="$BUDGET" --trainer.max_epochs=-1 \
    --trainer.enable_progress_bar=false --trainer.default_root_dir="$run" \
    --trainer.logger.init_args.save_dir="$run" --trainer.logger.init_args.version=fit > "$run.log" 2>&1
  ckpt=$(ls "$run"/tensorboard/fit/checkpoints/last.ckpt)
  "$PY" -m lit_nat validate --config "configs/$name.yaml" --ckpt_path "$ckpt" --trainer.enable_progress_bar=false \
    --trainer.default_root_dir="$run" --trainer.logger.init_args.save_dir="$run" \
    --trainer.logger.init_args.version=validate >> "$run.log" 2>&1
  "$PY" - "$run" "$name" <<'PY'
import json, sys, torch, yaml
from lit_nat.models.flops import report_for
run, name = sys.argv[1], sys.argv[2]
report = json.load(open(f"{run}/tensorboard/validate/eval_report.json"))
ckpt = torch.load(f"{run}/tensorboard/fit/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
model = yaml.safe_load(open(f"configs/{name}.yaml"))["model"]
flops = report_for(name, model["arch"], model.get("arch_overrides"),
                   {"codebook_size": 17, "grid_size": 8, "num_classes": 10}, steps=8)
print(json.dumps({"config": name, "steps_trained": ckpt["global_step"], "params": flops.parameters,
                  "digits_fid": round(report.get("fid", float("nan")), 2),
                  "gflops_per_image_guided": round(flops.per_image_gflops["guided"], 3)}))
PY
done
