"""Orchestration over the library: the demo (``organdetr demo``), the ablation runner (``organdetr
benchmark``) and model profiling (parameters, FLOPs, latency, peak memory)."""
