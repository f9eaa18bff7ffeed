#!/usr/bin/env bash
# The GPU check: the quick pipeline's stages (small settings, bench/gpu_check.py) on one device in float32,
# in bf16, and in float32 under `torchrun --nproc_per_node=1`, each compared with the CPU reference committed
# in bench/results/gpu_check_reference.json (ids, verdicts, metrics), with each stage's seconds and the
# evals' generated tokens/s. No network (HF_HUB_OFFLINE=1). Sized to take well under 8 minutes for the three
# on a GPU (not yet measured there: no GPU has been lent; the CPU reference took minutes on 2 cores).
#
#   bench/gpu_check.sh                       # --device cuda
#   bench/gpu_check.sh --device cpu --dry-run   # the plan only (what the test suite runs)
#
# Options: --device D (default cuda), --model M (default the embedded SmolLM2), --work DIR, --dry-run.
# Exit status: the number of configurations that failed (0: all passed).
set -u
cd "$(dirname "$0")/.."
device=cuda
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --model|--work) extra+=("$1" "$2"); shift 2 ;;
    --dry-run) extra+=("$1"); shift ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -x .venv/bin/python ]; then
  PATH="$PWD/.venv/bin:$PATH"
fi
export PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
failed=0
start=$SECONDS
for config in "--dtype float32" "--dtype bf16" "--dtype float32 --torchrun"; do
  t0=$SECONDS
  # shellcheck disable=SC2086  # $config is a list of words
  if python bench/gpu_check.py --device "$device" $config ${extra[@]+"${extra[@]}"}; then
    echo "== $device $config: ok ($((SECONDS - t0)) s)"
  else
    echo "== $device $config: FAILED ($((SECONDS - t0)) s)"
    failed=$((failed + 1))
  fi
done
echo "== gpu_check: $failed of 3 configurations failed, $((SECONDS - start)) s in all"
exit "$failed"
