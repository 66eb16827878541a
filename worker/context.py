"""Per-process worker resources: the database, the blob store, the device and a small dataset cache.

Created on first use, after a prefork child has forked, so no connection or CUDA context is shared
across processes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from bnrank.engine import sandbox
from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset, preprocess
from bnrank.engine.errors import DatasetError
from bnrank.engine.task import make_task
from bnrank.engine.threads import configure_threads
from bnrank.engine.training.patches import TaskData
from service.core.config import Settings, get_settings
from service.core.db import Database
from service.core.errors import Invalid
from service.core.objectstore import open_blob_store
from service.core.paths import PathRefused, resolve_in_roots
from service.core.queues import QueueRouter, child_device, gpu_count, worker_concurrency
from service.core.s3datasets import is_s3, remote_datasets

log = logging.getLogger(__name__)

TASK_CACHE_SIZE = 2  # preprocessed datasets kept in memory per process (a ranking uses one)


class WorkerContext:
    """Per-process resources, created on first use (after a prefork child has forked)."""

    def __init__(self, settings: Settings) -> None:
        import torch

        self.settings = settings
        sandbox.configure(settings.sandbox)  # TorchScript archives BNRank cannot rebuild are converted in the box
        self.db = Database(settings, pool_size=2)
        self.blobs = open_blob_store(settings)
        self.remote_datasets = remote_datasets(settings)
        self.queues = QueueRouter(settings)
        gpus = gpu_count(settings) if torch.cuda.is_available() else 0
        self.device = child_device(settings, gpus, _pool_index())
        self.threads = configure_threads(
            concurrent_jobs=worker_concurrency(settings, gpus), threads=settings.torch_threads or None
        )
        self._tasks: OrderedDict[tuple[str, int], TaskData] = OrderedDict()
        self._tasks_lock = threading.Lock()
        log.info("worker process ready: device %s, %d torch thread(s)", self.device, self.threads)

    def task_data(self, uri: str, skip_cases: set[str], seed: int) -> TaskData:
        """The dataset as training volumes; preprocessing is cached on disk (shared) and in memory (here)."""
        try:
            if is_s3(uri):
                if self.remote_datasets is None:
                    raise PathRefused(f"{uri} is in an object store, and BNRANK_DATASET_BUCKETS is empty here")
                folder = self.remote_datasets.sync(uri)  # once per host and listing
            else:
                folder = resolve_in_roots(uri, self.settings.data_roots)
        except (PathRefused, Invalid) as exc:
            raise DatasetError(f"dataset is no longer usable: {exc}") from exc
        dataset = open_dataset(folder, check=False)
        # Cases the registration check refused stay out; the others were read in full back then.
        dataset.cases = [c for c in dataset.cases if c.case_id not in skip_cases]
        config = PreprocessConfig()
        key = (compute_fingerprint(dataset, config), seed)
        with self._tasks_lock:
            if key in self._tasks:
                self._tasks.move_to_end(key)
                return self._tasks[key]
        pre = preprocess(dataset, config, cache_root=self.settings.preprocess_cache)
        data = make_task(pre, seed=seed)
        with self._tasks_lock:
            self._tasks[key] = data
            while len(self._tasks) > TASK_CACHE_SIZE:
                self._tasks.popitem(last=False)
        return data


def _pool_index() -> int:
    """This pool child's index (0 in a solo or threads pool): which of several GPUs it takes."""
    try:
        from billiard.process import current_process

        return int(getattr(current_process(), "index", 0) or 0)
    except Exception:
        return 0


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            _context = WorkerContext(get_settings())
        return _context
