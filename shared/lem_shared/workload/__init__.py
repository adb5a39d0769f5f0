"""Real-text workloads: prompt sources and the tokenizers that turn them into token ids."""
