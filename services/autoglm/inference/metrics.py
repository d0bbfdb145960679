"""Prometheus metrics of the inference app, served as text on a side port."""

from __future__ import annotations

import os
import resource
import sys

import torch

from autoglm.core.metrics import Metrics
from autoglm.inference.scheduler import StepStats


class InferenceMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.latency = self.histogram(
            "autoglm_request_latency_seconds", "Request latency", "model", "method"
        )
        self.ttft = self.histogram(
            "autoglm_time_to_first_token_seconds", "Time to first token", "model"
        )
        self.queue_wait = self.histogram(
            "autoglm_queue_wait_seconds", "Wait before admission", "model"
        )
        self.tokens = self.counter("autoglm_generated_tokens_total", "Tokens generated", "model")
        self.requests = self.counter(
            "autoglm_requests_total", "Requests by outcome", "model", "method", "outcome"
        )
        self.queue_depth = self.gauge("autoglm_queue_depth", "Requests waiting", "model")
        self.batch_size = self.histogram(
            "autoglm_batch_size",
            "Sequences per decode step",
            "model",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.kv_blocks = self.gauge(
            "autoglm_kv_blocks",
            "KV cache blocks: used by sequences, cached for prefix sharing, total",
            "model",
            "state",
        )
        self.preemptions = self.counter(
            "autoglm_preemptions_total",
            "Sequences that gave their KV blocks back to a full pool (recomputed later)",
            "model",
        )
        self.prefix_blocks = self.counter(
            "autoglm_prefix_blocks_total",
            "Full prompt blocks looked up in the prefix cache, by outcome",
            "model",
            "outcome",
        )
        self.prefill_tokens = self.counter(
            "autoglm_prefill_tokens_total", "Prompt (and recomputed) tokens computed", "model"
        )
        self.models_loaded = self.gauge("autoglm_models_loaded", "Models loaded")
        self.rss = self.gauge(
            "autoglm_process_max_rss_bytes", "Peak resident set size", value=max_rss_bytes
        )
        self.resident = self.gauge(
            "autoglm_process_resident_memory_bytes",
            "Current resident set size",
            value=resident_memory_bytes,
        )
        self.cuda_memory = self.gauge(
            "autoglm_cuda_memory_allocated_bytes",
            "CUDA memory in use",
            value=lambda: torch.cuda.memory_allocated() if torch.cuda.is_available() else 0,
        )

    def on_step(self, model: str, stats: StepStats) -> None:
        self.queue_depth.labels(model).set(stats.queue_depth)
        for wait in stats.queue_waits:
            self.queue_wait.labels(model).observe(wait)
        if stats.batch_size:
            self.batch_size.labels(model).observe(stats.batch_size)
        # Not under batch_size: requests that finish on their prefill token leave the
        # batch before the step is reported, yet generated a token.
        if stats.tokens:
            self.tokens.labels(model).inc(stats.tokens)
        if stats.kv_blocks_total:
            self.kv_blocks.labels(model, "used").set(stats.kv_blocks_used)
            self.kv_blocks.labels(model, "cached").set(stats.kv_blocks_cached)
            self.kv_blocks.labels(model, "total").set(stats.kv_blocks_total)
        if stats.preemptions:
            self.preemptions.labels(model).inc(stats.preemptions)
        if stats.prefix_block_queries:
            hits = stats.prefix_block_hits
            self.prefix_blocks.labels(model, "hit").inc(hits)
            self.prefix_blocks.labels(model, "miss").inc(stats.prefix_block_queries - hits)
        if stats.prefill_tokens:
            self.prefill_tokens.labels(model).inc(stats.prefill_tokens)


def max_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux, bytes on
    macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def resident_memory_bytes() -> int:
    """Current resident set size: pages in ``/proc/self/statm`` times the page size; the
    peak where there is no ``/proc`` (macOS), the closest figure available there."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return max_rss_bytes()
