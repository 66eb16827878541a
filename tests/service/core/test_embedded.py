"""The embedded default end to end: `bnrank serve` with no settings (SQLite + filesystem broker + its own
worker process) in a fresh folder, driven by `bnrank keys` and the `bnrank remote` client commands.

`serve` and `keys` run as subprocesses in that folder (their defaults come from it); the `remote` commands
only speak HTTP, so they run in-process (`bnrank.cli.main`), sparing a CLI start-up each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bnrank.cli import main
from service.core.launcher import free_port
from tests.engine.volumes import write_nnunet_dataset
from tests.service.conftest import wait_for


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc), except multiprocessing's helpers (the forkserver that
    inspects uploads, bnrank.engine.inspect_isolated, and its resource tracker): they are no workers, and
    leave on their own once their parent has gone."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"from multiprocessing" not in command:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_serve_with_no_settings_ranks_end_to_end(
    tmp_path: Path, checkpoint_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lab = tmp_path / "lab"
    write_nnunet_dataset(lab / "Dataset001_Tiny", n_cases=4, shape=(24, 24, 24), n_labels=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNRANK_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Not a storage or broker setting: one torch thread, because this test's processes share 2 cores.
    env["BNRANK_TORCH_THREADS"] = "1"

    created = subprocess.run(
        [sys.executable, "-m", "bnrank.cli", "keys", "create", "--owner", "lab"],
        cwd=lab,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bnr_") and "\n" not in key

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "bnrank.cli", "serve", "--port", str(port)],
        cwd=lab,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "bnrank serve to be ready", interval_s=0.2)
        workers = _children(serve.pid)
        assert workers, "bnrank serve started no worker process"
        assert (lab / ".bnrank" / "bnrank.sqlite3").is_file()
        assert (lab / ".bnrank" / "broker" / "queue").is_dir()

        def remote(*args: str, key: str = key) -> tuple[int, str, str]:
            capsys.readouterr()
            code = main(["remote", "--url", url, "--key", key, *args])
            out, err = capsys.readouterr()
            return code, out, err

        code, out, err = remote("upload", str(checkpoint_files["good_a"]), str(checkpoint_files["good_b"]))
        assert code == 0, err
        ids = [line.split()[0] for line in out.splitlines()]
        assert len(ids) == 2 and all(i.startswith("ck_") for i in ids)

        # A root-relative path: the data root defaults to the folder `bnrank serve` runs in.
        code, out, err = remote("datasets", "add", "Dataset001_Tiny")
        assert code == 0, err
        dataset_id = out.split()[0]

        budget = ("--max-steps", "4", "--patch-size", "16", "--val-every", "2", "--precision", "fp32")
        code, out, err = remote("rank", "--dataset", dataset_id, *ids, *budget, "--wait")
        assert code == 0, out + err
        job_id = out.splitlines()[0]
        assert "rank" in out and "good_a" in out and "good_b" in out
        assert "control: random init (unet3d)" in out
        assert "100% succeeded" in err  # the progress line's last state

        code, out, _ = remote("results", job_id, "--json")
        body = json.loads(out)
        assert body["job"]["status"] == "succeeded"
        assert [e["rank"] for e in body["entries"]] == [1, 2, 3]

        code, _, err = remote("status", job_id)
        assert code == 0 and "succeeded" in err

        # The γ-clipping probe through the same client: a table of Dice clipped by |γ| vs at random.
        probe = ("--thresholds", "0.05", "2", "--draws", "1")
        code, out, err = remote("probe", "--dataset", dataset_id, "--checkpoint", ids[0], *probe, *budget, "--wait")
        assert code == 0, out + err
        assert out.splitlines()[0].startswith("job_") and "Dice (by γ)" in out
        assert "100.0%" in out  # every |γ| is under 2: the whole network clipped

        code, _, err = remote("checkpoints", key="bnr_wrong")
        assert code == 2 and "HTTP 401" in err
    finally:
        serve.send_signal(signal.SIGTERM)
        returncode = serve.wait(timeout=60)
        log.close()
    assert returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    # It said where the dashboard is, and the dashboard's session secret was generated beside the database.
    assert f"dashboard: {url}/ui/" in (tmp_path / "serve.log").read_text()
    assert (lab / ".bnrank" / "session_secret").stat().st_mode & 0o777 == 0o600
    # The worker `bnrank serve` started is stopped with it.
    assert not [pid for pid in workers if _alive(pid)]
