"""Access to the devices a run measures (NVML for NVIDIA GPUs)."""
