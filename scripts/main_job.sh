#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, train the Flax twin on a text file,
# check that both twins agree, generate from both, and write the Penzai attention view.
#
# Usage: bash scripts/main_job.sh [CORPUS] [RUN_DIR]
#   CORPUS   UTF-8 text file (default: ../shared/data/tinyshakespeare.txt)
#   RUN_DIR  run directory (default: runs/shakespeare); an existing run is resumed
set -euo pipefail
cd "$(dirname "$0")/.."

corpus=${1:-../shared/data/tinyshakespeare.txt}
run_dir=${2:-runs/shakespeare}

if [ ! -x .venv/bin/gpt2-twins ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
export PATH="$PWD/.venv/bin:$PATH"

if [ -d "$run_dir/checkpoints" ]; then
  gpt2-twins train --data "$corpus" --out "$run_dir" --resume
else
  gpt2-twins train --data "$corpus" --out "$run_dir"
fi

echo "== parity: Flax twin against Penzai twin on validation text"
gpt2-twins parity "$run_dir"

for twin in flax penzai; do
  echo "== generate with the $twin twin (temperature 0.8, seed 0)"
  gpt2-twins generate "$run_dir" --twin "$twin" --prompt "ROMEO:" --max-new-tokens 300 \
    --temperature 0.8 --top-k 40 --seed 0 --sliding-window
done

echo "== inspect: attention of every layer and head, and the model's treescope view"
gpt2-twins inspect "$run_dir" --prompt "ROMEO: What say you, my lord?" \
  --out "$run_dir/attention.html" --treescope "$run_dir/model.html"
echo "open $run_dir/attention.html, $run_dir/model.html and $run_dir/loss.png in a browser"
