"""BNRank: rank pretrained 3D segmentation checkpoints by BN-only evaluation."""

__version__ = "0.1.0"
