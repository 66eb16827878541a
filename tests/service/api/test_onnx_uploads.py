"""ONNX uploads and the sandboxed TorchScript conversion through the REST API: the source format and the
conversion report come back with the checkpoint; hostile graphs and archives are refused with the reason."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bnrank.cli.table import print_sources
from bnrank.engine import sandbox
from bnrank.engine.entries import entry_from_view
from tests.engine.formats import onnx_makers as om
from tests.service.conftest import TINY_BUDGET, Stack, key_of, upload, wait_job
from tests.service.ui.conftest import signed_in_client


def test_an_onnx_export_is_recognised_with_its_conversion_report(alice: httpx.Client, tmp_path: Path) -> None:
    path = om.export(om.network("unet3d", seed=5), tmp_path / "exported")
    response = upload(alice, path, name="onnx-unet3d")
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert body["format"] == "onnx" and body["architecture"].startswith("onnx:")
    conversion = body["load_report"]["source"]["conversion"]
    assert conversion["norms"] == {"BatchNormalization": 14} and conversion["head"]
    assert body["load_report"]["matched_fraction"] == 1.0


def test_a_named_head_is_checked_against_the_graph_and_stored(alice: httpx.Client, tmp_path: Path) -> None:
    path = om.export(om.network("unet3d", seed=6), tmp_path / "named.onnx")
    unknown = upload(alice, path, name="onnx-named", head="decoder.final")
    assert unknown.status_code == 422, unknown.text
    detail = unknown.json()["detail"]
    assert "'decoder.final' names no convolution" in detail and "out_tr.final_conv, " not in detail
    assert "up_tr64.ops.1.conv1, out_tr.final_conv" in detail  # the graph's convolutions, the last ones last
    with path.open("rb") as f:  # the raw body takes it as a query parameter
        named = alice.post(
            "/v1/checkpoints", params={"name": "onnx-named", "head": "/up_tr64/ops/ops.1/conv1/Conv"}, content=f.read(),
            headers={"Content-Type": "application/octet-stream"},
        )
    assert named.status_code == 201, named.text
    body = named.json()
    assert body["head"] == "/up_tr64/ops/ops.1/conv1/Conv"
    assert body["load_report"]["source"]["conversion"]["head"] == [
        "out_tr_final_conv", "up_tr64_ops_1_bn1", "up_tr64_ops_1_conv1"
    ]
    again = upload(alice, path, name="onnx-named", head="out_tr.final_conv")
    assert again.status_code == 409 and "/up_tr64/ops/ops.1/conv1/Conv" in again.json()["detail"], again.text
    weights = tmp_path / "plain.safetensors"
    from bnrank.engine.checkpoints import save_weights

    save_weights(om.network("unet3d", seed=6), weights)
    refused = upload(alice, weights, name="plain", head="out_tr.final_conv")
    assert refused.status_code == 422 and "only a converted graph" in refused.json()["detail"], refused.text


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (om.unknown_operator, 422, "Einsum"),
        (lambda p: om.external_data(p, "/etc/shadow"), 422, "external file"),
        (om.huge_initializer, 413, "1,000,000,000,000 elements"),
        (om.custom_domain, 422, "com.example.shell"),
    ],
)
def test_hostile_onnx_uploads_are_refused_with_the_reason(
    alice: httpx.Client, tmp_path: Path, make, status: int, words: str
) -> None:
    response = upload(alice, make(tmp_path / "hostile.onnx"), name="hostile-onnx")
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_an_unknown_torchscript_archive_is_refused_without_the_sandbox(alice: httpx.Client, tmp_path: Path) -> None:
    path, _ = om.unregistered_torchscript(tmp_path / "linknet.pt")
    response = upload(alice, path, name="linknet")
    assert response.status_code == 422, response.text
    assert "export it to ONNX" in response.json()["detail"]


def test_with_the_sandbox_an_unknown_archive_is_converted_and_a_greedy_one_refused(
    alice: httpx.Client, stack: Stack, serve_app: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    assert sandbox.available() is None, sandbox.available()
    boxed = stack.settings.model_copy(update={"sandbox": "bwrap", "inspect_time_limit_s": 300.0})
    linknet, _ = om.unregistered_torchscript(tmp_path / "linknet.pt", seed=2)
    greedy = om.greedy_torchscript(tmp_path / "greedy.pt")
    with serve_app(boxed) as url:
        client = httpx.Client(base_url=url, headers=dict(alice.headers), timeout=300)
        accepted = upload(client, linknet, name="linknet-boxed")
        assert accepted.status_code in (200, 201), accepted.text
        body = accepted.json()
        assert body["format"] == "torchscript" and body["architecture"].startswith("onnx:")
        assert "sandbox" in body["load_report"]["source"]["converted"]
        refused = upload(client, greedy, name="greedy")
        assert refused.status_code == 422, refused.text
        assert "allocate more than" in refused.json()["detail"]


def test_an_onnx_candidate_ranks_through_the_worker_with_its_control(
    worker: Any, api: str, alice: httpx.Client, dataset_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = om.export(om.network("unet3d", seed=21), tmp_path / "ranked.onnx")
    uploaded = upload(alice, path, name="onnx-ranked", head="up_tr64.ops.1.conv1")  # the head a user names
    assert uploaded.status_code in (200, 201), uploaded.text
    assert uploaded.json()["head"] == "up_tr64.ops.1.conv1"
    response = alice.post(
        "/v1/rankings",
        json={"dataset_id": dataset_id, "checkpoint_ids": [uploaded.json()["id"]], "budget": TINY_BUDGET, "seed": 0},
    )
    assert response.status_code == 202, response.text
    job = wait_job(alice, response.json()["id"], timeout_s=300)
    entries = alice.get(f"/v1/rankings/{job['id']}").json()["entries"]
    assert all(e["status"] == "ok" for e in entries), [(e["name"], e["error"]) for e in entries]
    control = next(e for e in entries if e["is_control"])
    assert control["architecture"] == uploaded.json()["architecture"]  # the graph with the named head
    candidate = next(e for e in entries if not e["is_control"])
    conversion = candidate["conversion"]  # every candidate's source and conversion report, in the ranking too
    assert candidate["format"] == "onnx" and conversion["norms"] == {"BatchNormalization": 14}
    assert "up_tr64_ops_1_conv1" in conversion["head"] and "named by the user" in conversion["head_rule"]
    assert control["conversion"] is None
    print_sources([entry_from_view(e) for e in entries])  # what `bnrank remote` prints under the table
    printed = capsys.readouterr().out
    assert "formats: onnx ×1" in printed and "conversion of onnx-ranked: ONNX graph, op set 17" in printed
    assert "norms: BatchNormalization 14" in printed and "up_tr64_ops_1_conv1" in printed
    ui = signed_in_client(api, key_of(alice))  # the dashboard's ranking page shows the same report
    try:
        page = ui.get(f"/ui/rankings/{job['id']}").text
    finally:
        ui.close()
    row = page.split('data-name="onnx-ranked"', 1)[1].split("</tr>", 1)[0]
    assert "· onnx" in row and "ONNX graph, op set 17" in row and "norms: BatchNormalization 14" in row
