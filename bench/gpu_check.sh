#!/usr/bin/env bash
# One command for a CUDA machine (sized for 10 minutes on one H200): CUDA parity, extraction throughput, training MFU
# and a 2-minute fine-tuning run that must save a checkpoint. Results: $OUT/gpu_check.json and $OUT/gpu_check.md.
#
#   bash bench/gpu_check.sh                          # CUDA, full sizes, OUT=./out
#   OUT=/tmp/x bash bench/gpu_check.sh --device cpu --quick   # smoke run (tests/test_gpu_check.py)
#
# The target machine has torch, numpy, pillow, opencv and scikit-learn but none of our other pins, and reaches no
# package index: the pins the check imports are installed from bench/wheels/ (fill it here with
# `make gpu-wheels`, i.e. bench/gpu_wheels.sh; the wheels are not in git). Random weights throughout: the
# machine cannot download the zoo either.
set -euo pipefail

DEVICE=cuda
QUICK=
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=--quick; shift ;;
        *) echo "usage: bench/gpu_check.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${OUT:-./out}" && cd "${OUT:-./out}" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DINOSCOPE_HOME="$OUT/home"  # no platformdirs needed, nothing written to the user's folders
cd "$ROOT"
log() { echo "== $*" | tee -a "$OUT/gpu_check.log"; }
: > "$OUT/gpu_check.log"

# ---- 1. the pins this check imports, from the wheels it carries (only those missing)
missing=()
for pair in faiss:faiss-cpu sqlalchemy:SQLAlchemy yaml:PyYAML platformdirs:platformdirs; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from bench/wheels"
    "$PY" -m pip install --no-index --find-links "$ROOT/bench/wheels" --quiet "${missing[@]}" 2>&1 | tee -a "$OUT/gpu_check.log"
fi

# ---- 2. parity and extraction throughput
log "parity and extraction ($DEVICE${QUICK:+, quick})"
status=0
"$PY" bench/gpu_check.py --device "$DEVICE" $QUICK --out "$OUT" 2>&1 | tee -a "$OUT/gpu_check.log" || status=1

# ---- 3. training step MFU (bench/train_step.py, the trainer's benchmark, with its own flags)
log "training step"
if [ -n "$QUICK" ]; then
    TS_ARGS=(--device "$DEVICE" --model tiny-cpu --batch 2 --threads 1 --precisions fp32 --steps 1 --seconds 0.1
             --trials 1)
else
    TS_ARGS=(--device "$DEVICE" --model vitb14 --batch 128)
fi
"$PY" bench/train_step.py "${TS_ARGS[@]}" > "$OUT/train_step.txt" 2>&1 || status=1
tail -n 15 "$OUT/train_step.txt" | tee -a "$OUT/gpu_check.log"

# ---- 4. a 2-minute fine-tuning run that saves a checkpoint (SIGTERM: the loop checkpoints, then stops)
RUN="$OUT/train_run"
rm -rf "$RUN"
if [ -n "$QUICK" ]; then
    PRESET=tiny-cpu  # the smoke run: one step of the tiny preset, same command and checkpoint path
    TRAIN_ARGS=(--preset tiny-cpu --stop-at 1 --set optim.batch_size_per_device=2 data.num_workers=0)
    LIMIT=600
else
    "$PY" -c "import torch; from engine.models import build_backbone, save_backbone; torch.manual_seed(0); \
save_backbone(build_backbone('dinov2_vits14'), '$OUT/vits14_random.pth')"
    PRESET=finetune
    TRAIN_ARGS=(--preset finetune --init "$OUT/vits14_random.pth" --set device=$DEVICE)
    LIMIT=120
fi
log "train --preset $PRESET"
set +e
timeout -s TERM -k 60 "$LIMIT" "$PY" -m app train "${TRAIN_ARGS[@]}" --data "$OUT/photos" --out "$RUN" \
    --log-every 5 > "$OUT/train.txt" 2>&1
train_rc=$?
set -e
tail -n 8 "$OUT/train.txt" | tee -a "$OUT/gpu_check.log"
checkpoint="$(ls "$RUN"/checkpoints/* 2>/dev/null | tail -n 1 || true)"
[ -n "$checkpoint" ] || status=1

# ---- 5. one JSON and one table
"$PY" - "$OUT" "$train_rc" "$checkpoint" "$PRESET" <<'EOF'
import json, sys
from pathlib import Path

out, train_rc, checkpoint, preset = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
result = json.loads((out / "gpu_check_model.json").read_text()) if (out / "gpu_check_model.json").exists() else {}
ts = (out / "train_step.txt").read_text().splitlines()
events = out / "train_run" / "events.jsonl"
steps = [json.loads(line) for line in events.read_text().splitlines() if line.strip()] if events.exists() else []
result["train_step"] = {"tail": ts[-12:]}
result["train"] = {"preset": preset, "exit_code": train_rc, "checkpoint": checkpoint or None, "events": len(steps),
                   "last_event": steps[-1] if steps else None}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
lines = [f"# GPU check: {result.get('machine', '?')}", "", "| check | figure |", "|---|---|"]
for name, p in result.get("parity", {}).items():
    lines.append(f"| parity {name}: min CLS cosine bf16 vs CPU fp32 ({p['photos']} photos) | {p['min_cosine']:.5f} |")
for r in result.get("model_only", []):
    lines.append(f"| {r['model']} model only, batch {r['batch']} {r['precision']} | {r['img_s']:.1f} img/s |")
for r in result.get("end_to_end", []):
    lines.append(f"| {r['model']} end to end from JPEGs, batch {r['batch']}, {r['workers']} decode threads "
                 f"| {r['files_s']:.1f} files/s |")
if result.get("end_to_end"):
    r = result["end_to_end"][0]
    lines.append(f"| decode + eval transform alone | {r['decode_files_s']:.1f} files/s, "
                 f"{r['decode_per_thread']:.1f} per thread |")
lines.append(f"| train --preset {preset}: checkpoint | {Path(checkpoint).name if checkpoint else 'NONE'} |")
lines += ["", "train_step.py:", "```", *ts[-12:], "```"]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
log "results in $OUT/gpu_check.json and $OUT/gpu_check.md (status $status)"
exit $status
