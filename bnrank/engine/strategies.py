"""Which ranking strategy runs: the one dispatch `bnrank rank` and the service's ranking share.

``norm_only`` is the thesis's BN-only evaluation (ranking.py), ``cascade`` the staged ranking of cascade.py; both
are declared in `RankConfig.strategy` (configs/ranking.py), from which the CLI's flag and the API's field come.
"""

from __future__ import annotations

from collections.abc import Sequence

from bnrank.engine.cascade import rank_cascade
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankingResult
from bnrank.engine.errors import BNRankError
from bnrank.engine.ranking import Candidate, rank_candidates
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn


def rank_by_strategy(
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    rank: RankConfig,
    *,
    dataset_name: str = "",
    control: bool = True,
    on_progress: ProgressFn | None = None,
    prepare_seconds: float = 0.0,
) -> RankingResult:
    """Rank ``candidates`` by ``rank.strategy``; ``prepare_seconds`` (the data's measured loading and preprocessing)
    counts in the cascade's cost."""
    if rank.strategy == "cascade":
        if not control:
            raise BNRankError("the cascade scores candidates against their random-init controls: keep the controls")
        return rank_cascade(
            candidates,
            data,
            config,
            rank,
            dataset_name=dataset_name,
            on_progress=on_progress,
            prepare_seconds=prepare_seconds,
        )
    return rank_candidates(
        candidates, data, config, dataset_name=dataset_name, control=control, on_progress=on_progress, rank=rank
    )
