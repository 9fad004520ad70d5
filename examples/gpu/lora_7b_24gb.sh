#!/usr/bin/env bash
# GiGPO on WebShop with Qwen2.5-7B-Instruct and LoRA on one 24 GB GPU. The hf engine samples
# with the learner's own module (one copy of the bf16 weights, ~15 GB); only the adapters
# (r=16 on every projection, ~40M parameters) have gradients and AdamW state; the KL
# reference is the base with the adapters off (no second copy); activation checkpointing and
# 4k-token micro-batches keep activations small. Estimate: 21.6 GB (weights 14.3, adapters
# with their gradients and AdamW state 0.2, activations 3.2, KV cache of 16 sequences at the
# 4.6k context limit 3.9). The start-up estimate says whether it fits
# before anything runs (lower train.micro_batch_tokens or rollout.batch_size if it does not).
#
#   pip install 'agentrl[webshop,lora]'
#   bash examples/gpu/lora_7b_24gb.sh [key=value overrides]
set -euo pipefail
agentrl train configs/webshop_gigpo_qwen2.5-7b.yaml \
  policy.backend=hf policy.dtype=bfloat16 "policy.lora={r: 16, alpha: 32, dropout: 0.0}" \
  train.lr=1e-5 train.activation_checkpointing=true train.micro_batch_tokens=4096 \
  rollout.batch_size=16 "$@"
