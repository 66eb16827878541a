"""The command line's flags are generated from the engine's option declarations and follow them."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from bnrank.cli import build_parser, main, remote
from bnrank.cli.options import add_flags, build, local_options, remote_options, values
from bnrank.engine.alchemy import FINETUNE_DEFAULTS, AlchemyConfig
from bnrank.engine.configs.pretrain import PretrainConfig
from bnrank.engine.configs.probe import ProbeConfig
from bnrank.engine.configs.ranking import RANKING_DEFAULTS, RankConfig, ranking_config
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import BNRankError
from bnrank.engine.options import option


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_alchemy_help_shows_the_declared_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["alchemy", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    declared = AlchemyConfig()
    assert declared.identify_steps == 60
    assert "--identify-steps IDENTIFY_STEPS BN-only steps of the identification phase (default: 60)" in shown
    assert (
        "--identify-lr IDENTIFY_LR learning rate of identification (gentler than a ranking's 0.03, so γ settles) "
        f"(default: {declared.identify_lr})" in shown
    )
    assert f"--max-steps MAX_STEPS training steps per candidate (default: {FINETUNE_DEFAULTS['max_steps']})" in shown


def test_local_flags_parse_to_the_declared_defaults() -> None:
    parser = build_parser()
    args = parser.parse_args(["alchemy", "--dataset", "d", "--checkpoint", "c", "--out", "o"])
    assert build(AlchemyConfig, args) == AlchemyConfig()
    assert build(TrainConfig, args) == TrainConfig(**FINETUNE_DEFAULTS)
    args = parser.parse_args(["probe", "--dataset", "d", "--checkpoint", "c"])
    assert build(ProbeConfig, args) == ProbeConfig()
    assert build(TrainConfig, args) == TrainConfig()
    args = parser.parse_args(["rank", "--dataset", "d", "--patch-size", "16", "--no-control", "x.safetensors"])
    assert ranking_config(**values(args, local_options(TrainConfig))) == ranking_config(patch_size=(16, 16, 16))
    assert args.max_steps == RANKING_DEFAULTS["max_steps"] and args.lr == RANKING_DEFAULTS["lr"]


def test_every_declared_option_has_its_flag_and_keeps_its_name() -> None:
    parser = build_parser()
    for path, classes in (
        (("rank",), [TrainConfig]),
        (("alchemy",), [TrainConfig, AlchemyConfig]),
        (("probe",), [TrainConfig, ProbeConfig]),
        (("pretrain",), [PretrainConfig]),
    ):
        flags = _flags(_subparser(parser, *path))
        for cls in classes:
            for opt in local_options(cls):
                switch = "--no-" + opt.flag[2:] if opt.base_type is bool and opt.default else opt.flag
                assert switch in flags, (path, switch)
    for path, classes in (
        (("remote", "alchemy"), [TrainConfig, AlchemyConfig]),
        (("remote", "probe"), [ProbeConfig]),
        (("remote", "rank"), [TrainConfig, RankConfig]),
    ):
        flags = _flags(_subparser(parser, *path))
        assert {o.flag for cls in classes for o in remote_options(cls) if o.base_type is not bool} <= flags
    # the names the docs and scripts use
    assert {"--no-identification", "--no-modification", "--maximization", "--no-maximization"} <= _flags(
        _subparser(parser, "alchemy")
    )
    assert {"--thresholds", "--draws", "--max-steps", "--patch-size"} <= _flags(_subparser(parser, "probe"))
    assert {"--volumes", "--width", "--steps", "--modality", "--out"} <= _flags(_subparser(parser, "pretrain"))


def test_pretrain_flags_parse_to_the_declared_defaults_and_steps_must_be_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    args = parser.parse_args(["pretrain", "--volumes", "v", "--out", "o", "--steps", "200"])
    assert build(PretrainConfig, args) == PretrainConfig()
    args = parser.parse_args(["pretrain", "--volumes", "v", "--out", "o", "--steps", "5", "--patch-size", "16"])
    assert build(PretrainConfig, args) == PretrainConfig(steps=5, patch_size=(16, 16, 16))
    assert main(["pretrain", "--volumes", "v", "--out", "o"]) == 2
    assert "error: --steps: steps is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a choice is argparse's own check
        main(["pretrain", "--volumes", "v", "--out", "o", "--steps", "1", "--modality", "PET"])
    assert refused.value.code == 2 and "invalid choice: 'PET'" in capsys.readouterr().err


def test_bad_values_are_refused_with_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["alchemy", "--dataset", "nowhere", "--checkpoint", "c", "--out", "o", "--threads", "1"]
    assert main([*base, "--identify-steps", "0"]) == 2
    assert "error: --identify-steps: identify_steps must be at least 1" in capsys.readouterr().err
    assert main([*base, "--patch-size", "16", "16"]) == 2
    assert "error: --patch-size: patch_size takes 1 or 3 numbers, got 2" in capsys.readouterr().err


@dataclass
class Sample:
    on: bool = option(True, help="on unless switched off")
    off: bool = option(False, help="off unless switched on")
    auto: bool | None = option(None, help="decided by another option")
    sides: tuple[int, int, int] = option((8, 8, 8), help="three sides", ge=4)
    cuts: tuple[float, ...] = option((0.1, 0.2), help="cut-offs", gt=0, max_items=3)
    kind: str = option("a", help="a kind", choices=("a", "b"))
    hidden: int = option(1, help="not on the command line", cli=False)


def _parse(argv: list[str], *, service_default: bool = False) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_flags(parser, local_options(Sample), service_default=service_default)
    return values(parser.parse_args(argv), local_options(Sample), service_default=service_default)


def test_the_generator_follows_types_defaults_and_bounds() -> None:
    assert _parse([]) == {f.name: f.default for f in dataclasses.fields(Sample) if f.name != "hidden"}
    given = _parse(["--no-on", "--off", "--no-auto", "--sides", "16", "--cuts", "0.5", "--kind", "b"])
    assert given == {"on": False, "off": True, "auto": False, "sides": (16, 16, 16), "cuts": (0.5,), "kind": "b"}
    with pytest.raises(SystemExit):
        _parse(["--hidden", "2"])
    with pytest.raises(SystemExit):
        _parse(["--kind", "c"])
    with pytest.raises(BNRankError, match="--sides: sides must be at least 4"):
        _parse(["--sides", "2"])
    with pytest.raises(BNRankError, match="--cuts: cuts takes at most 3 values"):
        _parse(["--cuts", "1", "2", "3", "4"])
    # remote: nothing is sent unless given, sequences go as JSON lists
    assert _parse([], service_default=True) == {}
    assert _parse(["--no-on", "--sides", "4", "5", "6"], service_default=True) == {"on": False, "sides": [4, 5, 6]}


class _Recorder:
    """Stands in for the HTTP client: records what a remote command would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.sent.append((path, body))
        return {"id": "job_1"}

    def rank(self, dataset: str, ids: list[str], **kwargs: Any) -> dict[str, Any]:
        self.sent.append(("/v1/rankings", {"dataset_id": dataset, "checkpoint_ids": ids, **kwargs}))
        return {"id": "job_2"}


def test_remote_jobs_send_only_the_options_given(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    client = _Recorder()
    argv = ["remote", "--key", "k", "alchemy", "--dataset", "ds_1", "--checkpoint", "ck_1"]
    argv += ["--no-identification", "--identify-steps", "30", "--patch-size", "16", "--max-steps", "5"]
    assert remote._remote(parser.parse_args(argv), client) == 0
    assert client.sent.pop() == (
        "/v1/alchemy",
        {
            "dataset_id": "ds_1",
            "checkpoint_id": "ck_1",
            "folds": 1,
            "budget": {"max_steps": 5, "patch_size": [16, 16, 16]},
            "identification": False,
            "identify_steps": 30,
        },
    )
    argv = ["remote", "--key", "k", "probe", "--dataset", "ds_1", "--checkpoint", "ck_1", "--thresholds", "0.2", "0.1"]
    assert remote._remote(parser.parse_args(argv), client) == 0
    path, body = client.sent.pop()
    assert path == "/v1/probes" and body["thresholds"] == [0.2, 0.1] and "draws" not in body and body["budget"] == {}
    assert remote._remote(parser.parse_args(["remote", "--key", "k", "rank", "--dataset", "ds_1", "ck_1"]), client) == 0
    assert client.sent.pop() == (
        "/v1/rankings",
        {"dataset_id": "ds_1", "checkpoint_ids": ["ck_1"], "budget": {}, "seed": None, "control": True, "ranking": {}},
    )
    argv = ["remote", "--key", "k", "rank", "--dataset", "ds_1", "ck_1", "ck_2", "--halving-rounds", "2"]
    assert remote._remote(parser.parse_args([*argv, "--max-steps", "40"]), client) == 0
    _, body = client.sent.pop()
    assert (body["ranking"], body["budget"]) == ({"halving_rounds": 2}, {"max_steps": 40})
    assert capsys.readouterr().out.split() == ["job_1", "job_1", "job_2", "job_2"]
