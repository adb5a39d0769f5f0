"""LLenergyMeasure telemetry: a daemon that samples every GPU (NVML) and the host, always, into PostgreSQL."""
