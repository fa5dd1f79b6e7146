"""What observability costs: the 1,000-in-flight workload with tracing off, on and sampled out.

    .venv/bin/python -m benches.tracing [--rounds 10] [--backend memory|sqlite]

The three-activity workflow of `bench_workflows.py`, 1,000 executions in flight at a time, in
one process per configuration (OpenTelemetry lets a process set its tracer provider once):

- off: no tracer provider set by the host (plait's default): one check per span site;
- sdk, sampling all: the OpenTelemetry SDK with every span sampled, through a batch span
  processor to an exporter that drops them (what the SDK costs, not a network);
- sdk, sampling off: the SDK with the `ALWAYS_OFF` sampler (non-recording spans);
- metrics on: no tracing, plait's Prometheus metrics enabled.

The configurations take turns, batch after batch, each in its own process, so that a slow
moment of the machine is shared. The figure is the median of the batches' rates.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from benches import machine

CONFIGS = ("off", "sdk-all", "sdk-off", "metrics")
LABELS = {
    "off": "tracing off (no provider)",
    "sdk-all": "SDK, sampling everything",
    "sdk-off": "SDK, sampling off",
    "metrics": "metrics on, tracing off",
    "baseline": "before observability",
}
IN_FLIGHT = 1_000


def _configure(config: str) -> None:
    if config == "metrics":
        from plait.observability import enable_metrics

        enable_metrics()
    if not config.startswith("sdk"):
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON if config == "sdk-all" else ALWAYS_OFF)
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=100_000))
    trace.set_tracer_provider(provider)


async def _batches(config: str, backend: str, batches: int) -> list[float]:
    """Runs `batches` batches (after a warm-up one); their rates in workflows/s."""
    _configure(config)
    import plait
    from benches.bench_workflows import three_steps

    fresh = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        engine = (
            plait.Engine.memory()
            if backend == "memory"
            else plait.Engine.sqlite(os.path.join(tmp, "db.sqlite"))
        )
        async with engine:
            rates = []
            for round_ in range(batches + 1):
                xs = [next(fresh) for _ in range(IN_FLIGHT)]
                began = time.perf_counter()
                await asyncio.gather(*(three_steps.execute({"x": x}, engine=engine) for x in xs))
                if round_:
                    rates.append(IN_FLIGHT / (time.perf_counter() - began))
    return rates


def _child(config: str, backend: str, batches: int, tree: str | None = None) -> list[float]:
    env = dict(os.environ)
    if tree is not None:  # another checkout of plait (the baseline before observability)
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(tree, "python"), os.getcwd()])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benches.tracing",
            "--child",
            config,
            "--backend",
            backend,
            "--batches",
            str(batches),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    rates: list[float] = json.loads(out.strip().splitlines()[-1])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="processes per configuration")
    parser.add_argument("--batches", type=int, default=4, help="batches per process")
    parser.add_argument("--backend", choices=("memory", "sqlite"), action="append")
    parser.add_argument(
        "--baseline", help="a checkout of plait without observability, run as a row too"
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="which of them, comma-separated"
    )
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends = args.backend or ["memory", "sqlite"]
    if args.child is not None:
        print(json.dumps(asyncio.run(_batches(args.child, backends[0], args.batches))))
        return
    print(f"machine before: {machine.speed()}", flush=True)
    for backend in backends:
        configs = [c for c in CONFIGS if c in args.configs.split(",")]
        rates: dict[str, list[float]] = {config: [] for config in configs}
        for _ in range(args.rounds):
            if args.baseline is not None:
                found = _child("off", backend, args.batches, args.baseline)
                rates.setdefault("baseline", []).extend(found)
            for config in configs:
                rates[config].extend(_child(config, backend, args.batches))
        base = statistics.median(rates[configs[0]])
        print(
            f"\n3-activity workflows, {IN_FLIGHT:,} in flight, {backend} "
            f"({args.rounds} processes x {args.batches} batches each)"
        )
        print(f"| {'configuration':<28} | workflows/s (median) | vs {configs[0]:<3} |")
        print(f"|{'-' * 30}|{'-' * 22}|{'-' * 8}|")
        for config in rates:
            median = statistics.median(rates[config])
            print(f"| {LABELS[config]:<28} | {median:>20,.0f} | {median / base:>6.0%} |")
    print(f"\nmachine after:  {machine.speed()}")


if __name__ == "__main__":
    main()
