"""Similar-nodule search latency: exact faiss search in an index of 100,000 embeddings.

    python benchmarks/retrieval.py latency   # -> benchmarks/results/retrieval.json

Random unit vectors stand in for nodule embeddings (exact search costs the same whatever the
vectors hold); one query at a time, k = 4, as the viewer asks; median of repeated queries.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval.json"
app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.callback()
def main() -> None:
    """Retrieval benchmarks (the subcommand names what is measured)."""


@app.command()
def latency(
    n: int = typer.Option(100_000, help="Indexed embeddings."),
    dim: int = typer.Option(128, help="Embedding dimension."),
    queries: int = typer.Option(200, help="Timed queries."),
) -> None:
    import faiss
    import torch

    from activecad.retrieval import NoduleIndex

    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    metadata = pd.DataFrame(
        {
            "seriesuid": [f"s{k}" for k in range(n)],
            "coordX": 0.0,
            "coordY": 0.0,
            "coordZ": 0.0,
            "diameter_mm": 6.0,
            "malignancy": 3.0,
        }
    )
    start = time.perf_counter()
    index = NoduleIndex(x, metadata, metric="cosine")
    build_s = time.perf_counter() - start
    times = []
    for k in rng.integers(0, n, size=queries + 10):
        t = time.perf_counter()
        found = index.search(x[k], k=4)
        times.append(time.perf_counter() - t)
        assert found[0][0].seriesuid == f"s{k}"  # exact: finds itself first
    times = times[10:]  # warm-up
    result = {
        "search_latency": {
            "n": n,
            "dim": dim,
            "k": 4,
            "metric": "cosine (exact, IndexFlatIP)",
            "queries": queries,
            "median_ms": 1000 * float(np.median(times)),
            "p95_ms": 1000 * float(np.percentile(times, 95)),
            "build_s": build_s,
            "machine": {
                "cpu_threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "faiss": faiss.__version__,
            },
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**old, **result}, indent=1) + "\n")
    typer.echo(json.dumps(result, indent=1))


if __name__ == "__main__":
    app()
