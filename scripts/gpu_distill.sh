#!/usr/bin/env bash
# Issue 9 on a lent GPU in one command: fine-tune an EfficientNet-Lite2 teacher, distil a
# ResNet-18 from scratch from it, train the same ResNet-18 on labels alone for comparison, and
# time batch inference. Each stage stops itself within its budget, so the whole run fits one
# device-tool call; the results and checkpoints land in $OUT.
#
# 1. Here, on the CPU, once per session (the pack and the weights are not committed):
#        . .venv/bin/activate
#        python scripts/pack_data.py
#    It writes, under runs/gpu/ (git-ignored: it travels only when carried):
#        pack.npz                  ~26 MiB  2,857 photos (TrashNet + realworld) at 192 px, masks,
#                                           48 backgrounds; split seed 0 = runs/recipes/split-all
#        lite2_imagenet_fp16.pt    ~12 MiB  the teacher's ImageNet weights (no PyPI there)
#        splits/, audit.*                   the split files, for `garbage-sorter evaluate` later
#    With the repository (~6 MiB) that is ~44 MiB of the 64 MiB a call may carry.
#
# 2. The device tool, one call (about 9 minutes of the 10 a command may run):
#        run(command="bash scripts/gpu_distill.sh", carry=["runs/gpu"], timeout_s=600)
#    The machine is bare and offline but its image has Python 3.12 with torch, torchvision,
#    numpy, Pillow and scikit-learn (KINDS.md), which is all this needs: nothing is installed.
#    The project runs from a copy laid out as pip would install it (PYTHONPATH), since
#    pyproject maps training/ to garbage_sorter.training.
#    Budgets in minutes, from the environment: TEACHER_MIN=2.5 STUDENT_MIN=4 SCRATCH_MIN=1
#    (e.g. command="TEACHER_MIN=2 STUDENT_MIN=3 bash scripts/gpu_distill.sh"); they include
#    each stage's loading. (3 + 5 + 1.5 would not fit: the preflight, six Python start-ups
#    and the inference timing take about a minute of the 10.) The scratch run is shorter than
#    the student's; results.json compares them at equal wall time, from the student's curve.
#    Its torch (2.11 when last seen) differs from this venv's: checkpoints are plain tensors
#    and load in either. EXTRA="--compile" passes flags to every stage. A preflight first
#    runs teacher and student for 3 steps each (~30 s) with CUDA's sync check on, so a bug
#    costs seconds of the 15-minute lease rather than the teacher's minutes, and leaves time
#    for a second call.
#
# 3. What comes back in $OUT (at most 8 files of at most 16 MiB):
#        results.json      per stage: images/s, time to 95% val accuracy, val/test accuracy per
#                          source, epochs; the student at the scratch run's budget; inference
#                          img/s by batch size; device and torch version. Rewritten after each
#                          stage, so a run cut off at its limit still returns what it made.
#        log.txt           everything printed
#        teacher.pt        EfficientNet-Lite2 checkpoint, fp16 (~10 MB)
#        student.pt.part00, student.pt.part01
#                          the distilled ResNet-18 checkpoint, fp16 (22 MB), cut at 15 MiB:
#                              cat student.pt.part00 student.pt.part01 > student.pt
#                              sha256sum -c sha256.txt     # names student.pt and teacher.pt
#        sha256.txt
#    Then here: garbage-sorter evaluate --model student.pt runs/gpu/splits
#    (the original photos at full size, as the product sees them; the figures in results.json
#    come from the 192 px pack).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/gpu-out}  # not under runs/gpu: that folder travels
PACK=${PACK:-runs/gpu/pack.npz}
INIT=${INIT:-runs/gpu/lite2_imagenet_fp16.pt}
WORK=${WORK:-/tmp/gpu-distill}
TEACHER_MIN=${TEACHER_MIN:-2.5}
STUDENT_MIN=${STUDENT_MIN:-4}
SCRATCH_MIN=${SCRATCH_MIN:-1}
EXTRA=${EXTRA:-}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
for f in "$PACK" "$INIT"; do
    [ -f "$f" ] || { echo "missing $f: run scripts/pack_data.py here and carry runs/gpu"; exit 2; }
done

# The project as installed, without pip (the machine has no registry).
SITE="$WORK/site"
rm -rf "$SITE" && mkdir -p "$SITE"
cp -r garbage_sorter "$SITE/garbage_sorter"
cp -r training "$SITE/garbage_sorter/training"
cp -r resources "$SITE/garbage_sorter/resources"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# The app's user folders (the Classifier reads a saved bin region): named here, because the
# machine lacks platformdirs, which finds the defaults.
export GARBAGE_SORTER_CONFIG_DIR="$WORK/user/config" GARBAGE_SORTER_DATA_DIR="$WORK/user/data" \
    GARBAGE_SORTER_CACHE_DIR="$WORK/user/cache"

gpu() { "$PY" -m garbage_sorter.training.gpu --pack "$PACK" "$@" $EXTRA; }
collect() { "$PY" -m garbage_sorter.training.gpu --stage summary --out "$WORK" >/dev/null && cp "$WORK/results.json" "$OUT/"; }

date
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

echo "== preflight: teacher and student, 3 steps each, host syncs reported"
gpu --stage teacher --out "$WORK/pre/teacher" --init "$INIT" --epochs 1 --max-steps 3 --sync-debug
gpu --stage student --out "$WORK/pre/student" --teacher "$WORK/pre/teacher/best.pt" --epochs 1 --max-steps 3 --sync-debug

echo "== teacher: EfficientNet-Lite2 from ImageNet, $TEACHER_MIN min"
gpu --stage teacher --out "$WORK/teacher" --init "$INIT" --minutes "$TEACHER_MIN"
cp "$WORK/teacher/best.pt" "$OUT/teacher.pt"
collect

echo "== student: ResNet-18 from scratch, distilled, $STUDENT_MIN min"
gpu --stage student --out "$WORK/student" --teacher "$WORK/teacher/best.pt" --minutes "$STUDENT_MIN"
split -b 15M -d -a 2 "$WORK/student/best.pt" "$OUT/student.pt.part"
(cd "$WORK" && cp student/best.pt student.pt && cp teacher/best.pt teacher.pt && sha256sum student.pt teacher.pt) > "$OUT/sha256.txt"
collect

echo "== scratch: ResNet-18 on labels alone, $SCRATCH_MIN min"
gpu --stage scratch --out "$WORK/scratch" --minutes "$SCRATCH_MIN"
collect

echo "== batch inference"
gpu --stage infer --out "$WORK/infer" --models "$WORK/teacher/best.pt" "$WORK/student/best.pt" "$WORK/scratch/best.pt"
if [ -f bench/gpu_inference.py ]; then
    "$PY" bench/gpu_inference.py --model "$WORK/student/best.pt" > "$OUT/gpu_inference.txt" 2>&1 \
        || echo "bench/gpu_inference.py failed (see gpu_inference.txt)"
fi
collect
date
