"""History store speed with 100,000 generations on SQLite: page 1 and a text search must stay under 50 ms.

python bench/history_benchmark.py --rows 100000 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from storage import HistoryFilter, HistoryStore
from storage.models import Generation

WORDS = "fox snow whale city neon forest portrait castle river dragon robot sunset ocean desert cat dog".split()


def fill(store: HistoryStore, rows: int) -> None:
    rng = random.Random(0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch = []
    for i in range(rows):
        words = " ".join(rng.choice(WORDS) for _ in range(8))
        batch.append({
            "created_at": start + timedelta(seconds=i), "checkpoint": rng.choice(["raw", "turbo"]),
            "prompt": f"a photo of {words} number {i}", "negative_prompt": "", "seed": i, "steps": 8,
            "guidance": 0.0, "width": 1024, "height": 1024, "num_images": 1, "status": "ok", "device": "bench",
            "placement": "gpu", "app_version": "bench", "favorite": i % 50 == 0, "files_missing": False,
            "comparison_id": f"c{i // 2}" if i % 10 < 2 else None,
        })  # fmt: skip
        if len(batch) == 5000:
            with store.session() as session:
                session.execute(insert(Generation), batch)
                session.commit()
            batch = []


def median_ms(fn, repeats: int = 21) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore(Path(tmp), f"sqlite:///{tmp}/h.sqlite3").open()
        start = time.perf_counter()
        fill(store, args.rows)
        fill_s = time.perf_counter() - start
        cases = {
            "page1": lambda: store.page(limit=24),
            "page_deep": lambda: store.page(cursor=args.rows // 2, limit=24),
            "search_common_word": lambda: store.page(limit=24, filters=HistoryFilter(text="fox")),
            "search_two_words": lambda: store.page(limit=24, filters=HistoryFilter(text="dragon sunset")),
            "search_rare": lambda: store.page(limit=24, filters=HistoryFilter(text="number 4242")),
            "favorites": lambda: store.page(limit=24, filters=HistoryFilter(favorites_only=True)),
            "checkpoint_raw": lambda: store.page(limit=24, filters=HistoryFilter(checkpoint="raw")),
            "comparisons": lambda: store.page(limit=24, filters=HistoryFilter(comparisons_only=True)),
            "count_all": lambda: store.count(),
        }
        results = {name: round(median_ms(fn), 2) for name, fn in cases.items()}
    payload = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "rows": args.rows, "fill_s": round(fill_s, 1), "median_ms": results,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "command": "python " + " ".join(sys.argv),
    }  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{payload['date'][:10]}_history_sqlite_{args.rows}.json").write_text(
        json.dumps(payload, indent=2)
    )
    print(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
