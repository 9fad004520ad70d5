#!/usr/bin/env bash
# GiGPO on ALFWorld with Qwen2.5-1.5B-Instruct on 2 GPUs of one node (the paper's 2 x H100
# setting): FSDP2 across the 2 ranks, fp32 master weights and optimizer state with bf16 compute,
# each rank rolling out 8 of the 16 groups with its own colocated vLLM engine (sleep mode frees
# its memory during the update). The memory estimate is printed before the first rollout.
#
#   pip install 'agentrl[alfworld,vllm]' && export ALFWORLD_DATA=...
#   bash examples/gpu/alfworld_gigpo_2gpu.sh [key=value overrides]
#
# Preempted (SIGTERM/SIGINT), every rank writes its part of a checkpoint and the script exits 75
# with the command that resumes the run. Several nodes: agentrl launch --nnodes=N --node_rank=R
# --rdzv_endpoint=HOST:29500 ... (same command on every node); rollout.groups must divide by the
# total number of ranks.
set -euo pipefail
agentrl launch --standalone --nproc_per_node=2 --local-ranks-filter=0 train \
  configs/alfworld_gigpo_qwen2.5-1.5b.yaml \
  train.strategy=fsdp policy.dtype=float32 train.mixed_precision=bf16 \
  train.activation_checkpointing=true "$@"
