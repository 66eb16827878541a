"""Every option set of the engine, declared once (`bnrank.engine.options.option`), in modules that import no torch.

The CLI's flags, the API's request schemas and the parameters stored with a job are generated from these
dataclasses; keeping them apart from the code that runs them lets `bnrank --help` and `bnrank remote` start
without loading torch. `training.py` the budget every candidate shares, `ranking.py` how candidates are
ranked, `alchemy.py` network alchemy, `probe.py` the γ-clipping probe, `pretrain.py` Models Genesis
pretraining, `gamma.py` the γ threshold they share, `candidate.py` what a user says about one checkpoint (a
converted graph's head).
"""
