"""Network alchemy (thesis §3.2.2): adapt a pretrained checkpoint to a target task in three steps.

* :func:`identify` (identification.py): BN-only training, the ranking's own procedure, until the γ have settled;
  channels with |γ| under a threshold, or the lowest fraction of all channels, are marked redundant
  (:func:`select_redundant`).
* :func:`modify` (modification.py): each marked channel's filter in the convolution feeding its BN is re-drawn
  with Kaiming init and the channel's BN parameters are reset; which convolution feeds which BN is traced
  (:func:`find_conv_bn_pairs`, pairs.py).
* :func:`maximize` (maximization.py): fine-tune all parameters with L + λ·R_γ, R_γ = −α·mean(Γ) + β·std(Γ)
  (:func:`r_gamma`).

:func:`run_alchemy` (run.py) calls the three in that order, each behind its switch of
:class:`AlchemyConfig` (config.py, every option declared once); checkpoint.py runs it from and to files,
kfold.py cross-validates it. The names below are the package's public surface.
"""

from bnrank.engine.alchemy.checkpoint import alchemy_checkpoint, metadata, prepare_model, write_json
from bnrank.engine.alchemy.identification import Identification, Selection, identify, mark_redundant, select_redundant
from bnrank.engine.alchemy.kfold import FoldsResult, alchemy_kfold, fold_path
from bnrank.engine.alchemy.maximization import Tuning, fine_tune, gamma_regulariser, maximize, r_gamma
from bnrank.engine.alchemy.modification import modify
from bnrank.engine.alchemy.pairs import ConvBNPair, SkippedBN, find_conv_bn_pairs
from bnrank.engine.alchemy.run import (
    AlchemyResult,
    gamma_steps,
    no_own_affine_message,
    planned_steps,
    require_batchnorm,
    require_norms,
    require_own_affines,
    run_alchemy,
)
from bnrank.engine.configs.alchemy import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_LAMBDA,
    DEFAULT_MAX_SHARE,
    FINETUNE_DEFAULTS,
    MODES,
    AlchemyConfig,
    AlchemyError,
    finetune_config,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_LAMBDA",
    "DEFAULT_MAX_SHARE",
    "FINETUNE_DEFAULTS",
    "MODES",
    "AlchemyConfig",
    "AlchemyError",
    "AlchemyResult",
    "ConvBNPair",
    "FoldsResult",
    "Identification",
    "Selection",
    "SkippedBN",
    "Tuning",
    "alchemy_checkpoint",
    "alchemy_kfold",
    "find_conv_bn_pairs",
    "fine_tune",
    "finetune_config",
    "fold_path",
    "gamma_regulariser",
    "gamma_steps",
    "identify",
    "mark_redundant",
    "maximize",
    "metadata",
    "modify",
    "no_own_affine_message",
    "planned_steps",
    "prepare_model",
    "r_gamma",
    "require_batchnorm",
    "require_norms",
    "require_own_affines",
    "run_alchemy",
    "select_redundant",
    "write_json",
]
