"""The training loop shared by BN-only evaluation, fine-tuning and alchemy.

Fairness is the point of a ranking: every candidate is trained on the same cases, the same patches in the
same order (a schedule drawn from the seed and the data alone) and validated on the same cases. What
differs between two candidates' runs is their weights, nothing else.

`patches.py` holds the cases and the seeded patch schedule, `precision.py` the device and bf16 autocast,
`validation.py` how a network is validated and scored, `trainer.py` the resumable loop, `batched.py`
several candidates of one architecture trained in one vmapped network. The budget, `TrainConfig`, is
declared in `bnrank.engine.configs.training`, which imports no torch.
"""
