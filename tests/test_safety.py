"""No command deletes a file it did not write; a step whose workflow is gone writes nothing; a
killed step's temporaries are removed by the next write of the same output."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from dpruner.cli import main
from dpruner.errors import ConfigError
from dpruner.io import (
    FILES_LEDGER,
    OUTPUT_MARKER,
    RESULTS_MARKER,
    OutputError,
    atomic_output,
    check_output_file,
    check_output_folder,
    mark_results_folder,
    output_folder,
    remove_stale_temporaries,
    write_json,
    write_text,
)
from dpruner.lifecycle import ORPHANED_EXIT, WORKFLOW_PID_ENV
from dpruner.models import ModelError, load_model, save_model
from dpruner.preflight import check_results_owner
from dpruner.published import publish

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def user_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_a_non_empty_folder_dpruner_did_not_write_is_refused(user_folder):
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="non-empty folder that dpruner did not write"):
            check_output_folder(user_folder, overwrite=overwrite)
    assert (user_folder / "notes.txt").read_text() == "keep me"


def test_the_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / OUTPUT_MARKER).write_text("{}")  # even a folder that looks like an output
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(OutputError, match="current folder or one of its parents"):
            check_output_folder(out, overwrite=True)


def test_an_input_or_a_folder_holding_it_is_refused(tmp_path):
    model = tmp_path / "models" / "dense"
    model.mkdir(parents=True)
    (tmp_path / "models" / OUTPUT_MARKER).write_text("{}")
    for out in (model, tmp_path / "models"):
        with pytest.raises(OutputError, match="would replace the input"):
            check_output_folder(out, overwrite=True, inputs=(model,))


def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "pruned"
    with output_folder(out) as tmp:
        (tmp / "weights").write_text("first")
    assert (out / OUTPUT_MARKER).is_file()
    with pytest.raises(OutputError, match="pass --overwrite"), output_folder(out):
        pass
    with output_folder(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("second")
    assert (out / "weights").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temporaries left


def test_a_failed_write_leaves_the_earlier_output_and_no_temporary(tmp_path):
    out = tmp_path / "pruned"
    with output_folder(out) as tmp:
        (tmp / "weights").write_text("first")
    with pytest.raises(RuntimeError), output_folder(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed half-way")
    assert (out / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


@pytest.fixture()
def dense(tmp_path):
    tokenizer = tiny_tokenizer(["a small text"] * 4, 64, ["<eos>"], eos_token="<eos>")
    return save_model(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, tmp_path / "dense")


def test_prune_refuses_user_files_and_the_current_folder(tmp_path, dense, user_folder, monkeypatch):
    args = ["prune", "--model", str(dense), "--method", "magnitude", "--sparsity", "0.5"]
    assert main([*args, "--out", str(user_folder)]) == 2
    assert main([*args, "--out", str(user_folder), "--overwrite"]) == 2
    assert (user_folder / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", "."]) == 2
    assert main([*args, "--out", str(dense), "--overwrite"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "mine"]
    assert main([*args, "--out", "pruned"]) == 0
    assert main([*args, "--out", "pruned"]) == 2
    assert main([*args, "--out", "pruned", "--overwrite"]) == 0
    load_model(tmp_path / "pruned")


def test_overwrite_refuses_files_a_user_added_to_an_earlier_output(tmp_path, dense):
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(dense), "--method", "magnitude", "--sparsity", "0.5"]
    assert main([*args, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    assert main([*args, "--out", str(out), "--overwrite"]) == 2
    assert (out / "notes.txt").read_text() == "keep me" and (out / "mine").is_dir()
    with pytest.raises(OutputError, match=r"did not write \(mine, notes\.txt\)"):
        check_output_folder(out, overwrite=True)
    (out / "notes.txt").unlink()
    (out / "mine").rmdir()
    # prune.json, written after the weights, is the step's own: --overwrite replaces it.
    assert main([*args, "--out", str(out), "--overwrite"]) == 0


@pytest.fixture()
def tokens(tmp_path):
    path = tmp_path / "tokens.pt"
    torch.save(torch.randint(0, 20, (2, 16)), path)
    return path


def test_file_outputs_never_replace_an_input(tmp_path, dense, tokens):
    weights = dense / "model.safetensors"
    before = weights.read_bytes()
    importance = ["general-importance", "--model", str(dense), "--calibration", str(tokens)]
    importance += ["--sparsity", "0.5", "--nsamples", "2", "--seqlen", "16"]
    for out in (weights, dense / "scores.safetensors", tokens):
        assert main([*importance, "--out", str(out)]) == 2
    perplexity = ["perplexity", "--model", str(dense), "--data", str(tokens), "--window", "8"]
    assert main([*perplexity, "--out", str(tokens)]) == 2
    assert main([*perplexity, "--out", str(tokens), "--overwrite"]) == 2
    assert weights.read_bytes() == before and torch.load(tokens).shape == (2, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "tokens.pt"]
    assert main([*importance, "--out", str(tmp_path / "g.safetensors")]) == 0
    assert main([*importance, "--out", str(tmp_path / "g.json")]) == 2


def test_a_file_output_replaces_only_an_earlier_dpruner_output(tmp_path, dense, tokens):
    perplexity = ["perplexity", "--model", str(dense), "--data", str(tokens), "--window", "8"]
    user = tmp_path / "mine.json"
    user.write_text('{"mine": 1}')
    for flags in ([], ["--overwrite"]):
        assert main([*perplexity, "--out", str(user), *flags]) == 2
    assert user.read_text() == '{"mine": 1}'
    out = tmp_path / "ppl.json"
    assert main([*perplexity, "--out", str(out)]) == 0
    assert main([*perplexity, "--out", str(out)]) == 2
    assert main([*perplexity, "--out", str(out), "--overwrite"]) == 0
    # Edited since dpruner wrote it: the user's now.
    out.write_text('{"edited": 1}')
    with pytest.raises(OutputError, match="dpruner did not write it"):
        check_output_file(out, overwrite=True)
    with pytest.raises(OutputError, match="dpruner did not write it"):
        write_json({}, out)
    assert out.read_text() == '{"edited": 1}'


def test_report_writers_never_replace_a_users_file(tmp_path, user_folder):
    page = user_folder / "summary.md"
    page.write_text("my summary")
    assert main(["summary", "--tables", "t", "--plots", "p", "--out", str(page)]) == 2
    with pytest.raises(OutputError, match="dpruner did not write it"):
        write_text(page, "the benchmark's summary")
    run = tmp_path / "run"
    (run / "tables").mkdir(parents=True)
    (run / "summary.md").write_text("# results\n")
    with pytest.raises(OutputError, match="did not create"):
        publish(run, user_folder)
    assert page.read_text() == "my summary"
    assert sorted(p.name for p in user_folder.iterdir()) == ["notes.txt", "summary.md"]
    publish(run, tmp_path / "published")
    publish(run, tmp_path / "published")  # its own folder since the first publish
    assert (tmp_path / "published" / RESULTS_MARKER).is_file()


def test_results_must_be_new_empty_or_a_results_folder(tmp_path, user_folder):
    with pytest.raises(ConfigError, match=f"results: '{user_folder}' is a non-empty folder"):
        check_results_owner(str(user_folder), tmp_path)
    (tmp_path / "a file").write_text("")
    with pytest.raises(ConfigError, match="results: 'a file' exists and is not a folder"):
        check_results_owner("a file", tmp_path)
    (tmp_path / "empty").mkdir()
    for results in ("new/run", "empty"):
        check_results_owner(results, tmp_path)
    mark_results_folder(tmp_path / "new" / "run")
    (tmp_path / "new" / "run" / "summary.md").write_text("")
    check_results_owner("new/run", tmp_path)
    # A run folder from before the marker: its dense model is an output folder.
    legacy = tmp_path / "old" / "models" / "m" / "dense"
    legacy.mkdir(parents=True)
    (legacy / OUTPUT_MARKER).write_text("{}")
    check_results_owner("old", tmp_path)


def test_check_config_refuses_a_results_folder_of_the_user(tmp_path, user_folder):
    config = tmp_path / "config.yaml"
    text = (REPO / "config" / "config.yaml").read_text()
    config.write_text(text.replace("results: results/run", f"results: {user_folder}"))
    assert f"results: {user_folder}" in config.read_text()
    assert main(["check-config", str(config)]) == 2


def test_a_truncated_weight_file_is_named(dense):
    weights = dense / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(dense)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead_pid = _dead_pid()
    target = tmp_path / "model"
    stale_dir = tmp_path / f".model.{dead_pid}.abc"
    stale_dir.mkdir()
    (stale_dir / OUTPUT_MARKER).write_text("{}")
    stale_file = tmp_path / f".model.{dead_pid}.xyz.tmp"
    stale_file.write_text("half")
    users = tmp_path / f".model.{dead_pid}.keep"  # no marker: not ours
    users.mkdir()
    live = tmp_path / f".model.{os.getpid()}.abc"  # a step still running
    live.mkdir()
    (live / OUTPUT_MARKER).write_text("{}")
    assert set(remove_stale_temporaries(target)) == {stale_dir, stale_file}
    assert users.is_dir() and live.is_dir()


def test_an_atomic_write_cleans_up_after_an_earlier_killed_write(tmp_path):
    stale = tmp_path / f".out.json.{_dead_pid()}.abc.tmp"
    stale.write_text("half")
    with atomic_output(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILES_LEDGER, "out.json"]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# A step under a workflow: writes a folder output slowly; the test kills its workflow.
STEP = textwrap.dedent(
    """
    import sys, time
    from dpruner.io import output_folder
    from dpruner.lifecycle import start_step

    start_step("test")
    with output_folder(sys.argv[1]) as tmp:
        (tmp / "part").write_text("x")
        print("saving", flush=True)
        time.sleep(float(sys.argv[2]))
    print("finished", flush=True)
    """
)


def _start_step(tmp_path, workflow_pid: int, wrapper: bool, sleep: float = 30):
    out = tmp_path / "out"
    command = [sys.executable, "-c", STEP, str(out), str(sleep)]
    if wrapper:
        # As Snakemake runs a job: a shell that waits for the step (not exec).
        command = ["bash", "-c", 'set -e; "$@"; true', "bash", *command]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, WORKFLOW_PID_ENV: str(workflow_pid)},
        start_new_session=True,
    )
    assert process.stdout.readline().strip() == "saving"
    return process, out


def test_a_step_whose_workflow_was_killed_stops_and_writes_nothing(tmp_path):
    workflow = subprocess.Popen(["sleep", "60"])
    process, out = _start_step(tmp_path, workflow.pid, wrapper=False)
    workflow.kill()
    workflow.wait()
    started = time.monotonic()
    assert process.wait(timeout=20) == ORPHANED_EXIT
    assert time.monotonic() - started < 10
    assert "the workflow process" in process.stderr.read()
    assert not out.exists()
    # Its temporary stays until the next write of the same output removes it.
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".out.")
    with output_folder(out) as tmp:
        (tmp / "part").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_step_whose_shell_wrapper_was_killed_stops_and_writes_nothing(tmp_path):
    workflow = subprocess.Popen(["sleep", "60"])
    try:
        wrapper, out = _start_step(tmp_path, workflow.pid, wrapper=True)
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait()
        deadline = time.monotonic() + 20
        while _step_running(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _step_running(tmp_path)
        assert not out.exists()
    finally:
        workflow.kill()


def _step_running(tmp_path) -> bool:
    result = subprocess.run(["pgrep", "-f", str(tmp_path / "out")], capture_output=True)
    return result.returncode == 0
