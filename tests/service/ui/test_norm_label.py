"""The dashboard names a checkpoint's normalisation from what its upload measured, not from a BatchNorm count."""

from bnrank.engine.gamma import gamma_stats
from service.ui.views import norm_kind
from tests.engine.norm_nets import norm_model


def test_instance_norm_checkpoint_is_not_labelled_batch() -> None:
    summary = gamma_stats(norm_model("instance"))["summary"]
    assert norm_kind(summary) == "instance"


def test_inserted_affines_known_only_from_rankings() -> None:
    assert norm_kind({"count": 0}, [["instance+affine-inserted"]]) == "instance+affine-inserted"
    assert norm_kind(None).startswith("unknown")
