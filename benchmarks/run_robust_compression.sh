#!/usr/bin/env bash
# The robust compression grid as three background processes (one per seed, one thread each),
# in the priority order of robust_compression.order, resuming what the runs file holds.
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
echo "started 3 processes; logs in benchmarks/results/robust_compression.seed*.log"
