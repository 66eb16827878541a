"""What one request costs the API when nothing else competes: POST /v1/rankings and GET of a queued one.

bench/api.py measures latency under 64 concurrent clients, where latency is mostly queueing behind the
other 63; this measures the work behind one request, one at a time, in-process (FastAPI's TestClient),
against PostgreSQL + Redis on localhost: 4 tiny checkpoints and a dataset are set up through the API, then
``--n`` POSTs of a 4-candidate ranking (5 tasks with the control) after 20 warm-up ones, then ``--n``
GETs of the last, still queued, ranking. Nothing consumes the queue; it is deleted at the end.

    .venv/bin/python bench/request_cost.py        # about 30 s
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="requests of each kind (%(default)s)")
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    from api import make_settings  # bench/api.py: the same throwaway database, queue and key prefix
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.api.auth import create_key
    from service.core.db import Database, migrate
    from tests.engine.volumes import write_nnunet_dataset
    from tests.service.conftest import make_checkpoint

    root = Path(tempfile.mkdtemp(prefix="bnrank-cost-"))
    (root / "data").mkdir()
    settings, cleanup = make_settings("postgres", root / "home", root / "data")
    settings.ensure_folders()
    migrate(settings)
    db = Database(settings)
    try:
        with db.session() as session:
            _, key = create_key(session, "bench")
        dataset_dir = write_nnunet_dataset(root / "data" / "D", n_cases=4, shape=(24, 24, 24), n_labels=2)
        with TestClient(create_app(settings)) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            ids = []
            for seed in range(4):
                path = make_checkpoint(root / f"c{seed}.safetensors", seed=seed)
                with path.open("rb") as f:
                    response = client.post("/v1/checkpoints", files={"file": (path.name, f)}, data={"name": path.stem})
                ids.append(response.json()["id"])
            dataset = client.post("/v1/datasets", json={"name": "d", "uri": str(dataset_dir)}).json()["id"]
            body = {"dataset_id": dataset, "checkpoint_ids": ids}
            for _ in range(20):
                client.post("/v1/rankings", json=body)
            started = time.perf_counter()
            for _ in range(args.n):
                response = client.post("/v1/rankings", json=body)
                assert response.status_code == 202, response.text
            post_ms = 1000 * (time.perf_counter() - started) / args.n
            job = response.json()["id"]
            started = time.perf_counter()
            for _ in range(args.n):
                assert client.get(f"/v1/rankings/{job}").status_code == 200
            get_ms = 1000 * (time.perf_counter() - started) / args.n
    finally:
        db.dispose()
        cleanup()
    print(f"one request at a time, in-process, PostgreSQL + Redis; {args.n} of each")
    print(f"POST /v1/rankings (5 tasks)        {post_ms:6.1f} ms")
    print(f"GET /v1/rankings/{{id}} (queued)     {get_ms:6.1f} ms")


if __name__ == "__main__":
    main()
