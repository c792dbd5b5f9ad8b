#!/usr/bin/env bash
# One prepared run on a lent GPU machine (issue 16's GPU checks, and issue 19's robustness runs where
# a GPU makes a training take minutes instead of a quarter of an hour). Everything ends by DEADLINE
# seconds; what finished is packed into $OUT (logs.tar.gz and gpu.log).
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   DRY=1 OUT=/tmp/out bash benchmarks/gpu_check.sh      # here, on the CPU: tiny sizes, checks the commands
#
# Phase 1 (until QUEUE_END s): in parallel, each process with one torch thread -- the paper's pendulum
# (docs/results.md section 1: seed 0, defaults, L started 50% off) trained with --device cuda and
# evaluated; the CUDA tests; a 1-GPU DistributedDataParallel run through torchrun; and a queue of
# benchmarks/robustness.py runs (ROBUST_JOBS lines "condition seed", ROBUST_SETS for every run, e.g. "--camera --camera-measured
# --camera-learn": the camera as `anmc swing` measures it, the way a user without the truth would train;
# ROBUST_DEVICE=cpu trains them on the machine's CPU cores, one torch thread each, e.g. ROBUST_P=12 QUEUE_END=560
# ROBUST_MIN=8 PHASE2=0 for a call spent on them),
# ROBUST_P at a time, each with a time limit so that it finishes and is evaluated (opt-in, below).
# Phase 2 (the GPU alone): benchmarks/train_step.py at 64x64, batch 32 and 128, eager; benchmarks/profile_step.py;
# then train_step.py with the compiled prior in the time left.
set -u
OUT=${OUT:?set OUT}
cd "$(dirname "$0")/.."
T0=$(date +%s)
since() { echo $(( $(date +%s) - T0 )); }
LOG=$OUT/gpu.log
W=${WORK:-/tmp/gpuwork}
mkdir -p "$W/robust" "$W/logs"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 ANMC_THREADS=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
DRY=${DRY:-0}
QUEUE_END=${QUEUE_END:-300}
ROBUST_P=${ROBUST_P:-2}
ROBUST_MIN=${ROBUST_MIN:-5.3}
ROBUST_SETS=${ROBUST_SETS:-}  # the defaults already remove the background when it is not dark and take three starts
ROBUST_DEVICE=${ROBUST_DEVICE:-}
DEV=cuda
if [ "$DRY" = 1 ]; then DEV=cpu; QUEUE_END=${QUEUE_END_DRY:-150}; fi
echo "== $(date -u) start; nvidia-smi:"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
nproc
python3 -c "import sys, torch, sympy, lark, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'sympy', sympy.__version__, 'lark', lark.__version__, 'numpy', numpy.__version__)"

kill_tree() {  # SIGNAL PID...: each process and all its descendants (this script's own, never another's)
  local sig=$1; shift
  for p in "$@"; do kill_tree "$sig" $(ps -o pid= --ppid "$p" 2>/dev/null); kill -s "$sig" "$p" 2>/dev/null; done
}
PHASE1=""
echo "== [$(since) s] phase 1: the paper's pendulum on $DEV, CUDA tests, torchrun, robustness queue"
if [ "$DRY" = 1 ]; then PAPER="--tiny"; else PAPER="--minutes $ROBUST_MIN"; fi
python3 examples/paper_experiments.py --systems pendulum --seeds 0 $PAPER --set device=$DEV -o "$W/paper" > "$W/logs/paper.log" 2>&1 &
PHASE1="$PHASE1 $!"
python3 -m pytest -p no:cacheprovider tests/test_train.py tests/test_data_dataset.py tests/test_prior_gmm.py -k "cuda or gpu" -rs > "$W/logs/pytest_cuda.log" 2>&1 &
PHASE1="$PHASE1 $!"
(
  python3 -m anmc synth priors/pendulum.anm -o "$W/ddp_data" --clips 4 --frames 40 --size 32 --seed 5 &&
  torchrun --standalone --nproc_per_node 1 -m anmc train priors/pendulum.anm "$W/ddp_data" -o "$W/ddp_run" \
    --device $DEV --epochs 2 --steps-per-epoch 20 --batch 4 --seq-len 8 &&
  python3 -m anmc train priors/pendulum.anm "$W/ddp_data" -o "$W/ddp_run" --resume --epochs 3 --device $DEV &&
  python3 -m anmc eval "$W/ddp_run" --device $DEV
) > "$W/logs/torchrun.log" 2>&1 &
PHASE1="$PHASE1 $!"
# Robustness runs are opt-in: 16 at once on one H200 ran ~100 s an epoch each, and one alone is no faster
# than on a CPU core (docs/scaling.md), e.g. ROBUST_JOBS=$'black 0\ngrey 0' ROBUST_P=2
JOBS=${ROBUST_JOBS:-}
if [ "$DRY" = 1 ]; then JOBS="black 0"; ROBUST_SETS="--set background=remove"; fi  # --quick trains one epoch: no room for starts
robust_one() {  # condition seed
  local extra=""
  if [ "$DRY" = 1 ]; then extra="--quick"; fi
  python3 benchmarks/robustness.py --conditions "$1" --seeds "$2" --time-limit "$ROBUST_MIN" $ROBUST_SETS --set device=${ROBUST_DEVICE:-$DEV} \
    --workdir "$W/robust/$1_s$2" --json "$W/robust/$1_s$2.json" $extra > "$W/logs/robust_$1_s$2.log" 2>&1
  local rc=$?
  echo "[$(since) s] robustness $1 seed $2 done (rc $rc)"
}
export -f robust_one since; export T0 W DEV DRY ROBUST_MIN ROBUST_SETS ROBUST_DEVICE
if [ -n "$JOBS" ]; then
  echo "$JOBS" | xargs -P "$ROBUST_P" -L 1 bash -c 'robust_one $0 $1' &
  QUEUE=$!
  PHASE1="$PHASE1 $QUEUE"
else
  QUEUE=
fi
while [ "$(since)" -lt "$QUEUE_END" ] && [ -n "$(jobs -rp)" ]; do sleep 5; done
echo "== [$(since) s] phase 1 over; stopping what still runs"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>&1 | tail -1
[ -n "$QUEUE" ] && kill -STOP "$QUEUE" 2>/dev/null  # xargs paused first, or it starts the queue's next runs as the running ones stop
kill_tree INT $PHASE1
sleep 4
kill_tree KILL $PHASE1
sleep 1  # (no `wait`: it would wait for the tee of the log too)
for f in "$W"/logs/paper.log "$W"/logs/pytest_cuda.log "$W"/logs/torchrun.log; do echo "--- $f (tail)"; tail -n 25 "$f"; done
for f in "$W"/robust/*.json; do [ -f "$f" ] && python3 -c "import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]" "$f"; done

if [ "${PHASE2:-1}" = 1 ]; then  # PHASE2=0: phase 1 alone (e.g. a call spent on CPU robustness runs)
echo "== [$(since) s] phase 2: training step, GPU alone"
if [ "$DRY" = 1 ]; then STEP="--quick --device cpu"; else STEP="--device cuda --size 64 --batch 32 --repeats 20"; fi
timeout 70 python3 benchmarks/train_step.py $STEP --readings standard,smoother
# a step bound by launching kernels costs about the same at 4x the sequences: frames/s should grow with the batch
if [ "$DRY" = 1 ]; then BIG="--quick --device cpu --batch 4"; else BIG="--device cuda --size 64 --batch 128 --repeats 10"; fi
echo "== [$(since) s] the same at batch 128"
timeout 60 python3 benchmarks/train_step.py $BIG --readings standard,smoother
echo "== [$(since) s] where the smoother's step goes"
if [ "$DRY" = 1 ]; then PROF="--device cpu --steps 1 --rows 5"; else PROF="--device cuda --size 64 --batch 32 --rows 25"; fi
timeout 60 python3 benchmarks/profile_step.py $PROF --readings smoother
echo "== [$(since) s] with the compiled prior"
LEFT=$(( ${DEADLINE:-560} - $(since) ))
if [ "$LEFT" -gt 20 ]; then timeout "$LEFT" python3 benchmarks/train_step.py $STEP --readings standard,smoother --compile-prior; fi
fi
echo "== [$(since) s] packing"
tar -czf "$OUT/logs.tar.gz" --exclude='*.npz' --exclude='*.mp4' --exclude='*.pt' --exclude='*.png' --exclude='*.gif' --exclude='*.u8' -C "$W" logs robust paper/results.jsonl ddp_run/metrics.jsonl 2>/dev/null
ls -la "$OUT"
echo "== [$(since) s] end"
exec >&- 2>&-  # the log's tee ends when nothing else holds this output open...
sleep 1
kill_tree KILL $(ps -o pid= --ppid $$)  # ...and anything left holding it (a compile worker pool) would keep the call waiting
