#!/usr/bin/env bash
# The robust compression grid as four background processes (one thread each): one per seed in
# the priority order of robust_compression.order, and a second one on seed 0 (which runs every
# ratio, so has the most work) from the end of that order. Each process re-reads the runs file
# before every run, so they skip what another has finished and meet without repeating work.
# Progress: benchmarks/results/robust_compression.seed{0,1,2}.log. When they are done (or to
# see partial results): python benchmarks/robust_compression.py --resume --only-seeds 99 \
#   --threads 1 && python benchmarks/splice_readme.py
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t ORDER < benchmarks/robust_compression.order
for seed in 0 1 2; do
  nohup python benchmarks/robust_compression.py --resume --threads 1 --only-seeds "$seed" \
    --methods "${ORDER[@]}" > "benchmarks/results/robust_compression.seed$seed.log" 2>&1 &
done
mapfile -t REVERSED < <(tac benchmarks/robust_compression.order)
nohup python benchmarks/robust_compression.py --resume --threads 1 --only-seeds 0 \
  --methods "${REVERSED[@]}" > "benchmarks/results/robust_compression.seed0b.log" 2>&1 &
echo "started 4 processes; logs in benchmarks/results/robust_compression.seed*.log"
