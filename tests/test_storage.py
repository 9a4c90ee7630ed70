"""A full or read-only disk is the run's problem, named in one line; a lost worker is the
cluster's, and its training starts again from its checkpoint."""
import errno
from types import SimpleNamespace

import optuna
import pytest
import torch

import nas.workers as workers
from evaluators.train import save_checkpoint
from nas.dispatch import lost_because
from nas.search import MAX_RELAUNCHES, settle
from nas.storage import StorageError, check_writable, storage_problem

NODE_DIED = ("Task failed because the node it was running on is dead or unavailable. Node IP: 10.1.2.3, node ID: "
             "5e35b3. This can happen if the node was preempted.")


def test_a_disk_problem_is_found_in_the_errors_it_caused():
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/study.db")
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("An exception is raised during the commit") from e
    except RuntimeError as wrapped:
        assert storage_problem(wrapped) == "is full"
    assert storage_problem(Exception("(sqlite3.OperationalError) attempt to write a readonly database")) \
        == "is read-only"
    assert storage_problem(Exception("(sqlite3.OperationalError) database or disk is full")) == "is full"
    assert storage_problem(OSError(errno.EACCES, "Permission denied")) is None
    assert storage_problem(ValueError("loss became nan")) is None and storage_problem(None) is None


def test_a_read_only_run_directory_is_refused_in_one_line(tmp_path, monkeypatch):
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing

    def refuse(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr("pathlib.Path.write_bytes", refuse)
    with pytest.raises(StorageError, match=r"run directory .* is read-only; nothing recorded is lost: .* re-run"):
        check_writable(tmp_path)

    def deny(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.write_bytes", deny)
    with pytest.raises(PermissionError) as denied:
        check_writable(tmp_path)
    assert denied.value.filename == str(tmp_path)  # the folder given, not the probe inside it


def test_an_atomic_write_that_fails_leaves_the_file_as_it_was_and_no_tmp(tmp_path, monkeypatch):
    from nas.records import atomic_write

    atomic_write(tmp_path / "front.json", "[1]")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr("os.replace", full)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "front.json", "[2]")
    assert [p.name for p in tmp_path.iterdir()] == ["front.json"] and (tmp_path / "front.json").read_text() == "[1]"


def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    save_checkpoint(path, {"step": 8})

    def half_write(obj, f):
        open(f, "wb").write(b"trunc")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 16})
    assert torch.load(path, weights_only=True) == {"step": 8}


def test_a_worker_reports_a_full_disk_instead_of_failing_the_candidate(monkeypatch):
    monkeypatch.setattr(workers, "data_on_device", lambda holder, device: ())

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/a.pt.tmp")

    monkeypatch.setattr(workers, "evaluate_rung", full_disk)
    res = workers.evaluate_on_worker("{}", ["ref"], SimpleNamespace(device="cpu"), "/runs/x/checkpoints/a.pt", 1.0)
    assert res["storage"] == "is full" and res["path"] == "/runs/x/checkpoints/a.pt.tmp" and "failure" not in res
    monkeypatch.setattr(workers, "evaluate_rung", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    assert workers.evaluate_on_worker("{}", ["ref"], SimpleNamespace(device="cpu"), None, 1.0)["failure"] \
        == "OSError: [Errno 5] I/O error"


def test_a_checkpoint_a_worker_sets_aside_is_told_to_the_driver(monkeypatch, tmp_path):
    from evaluators.train import TrainConfig
    from search_space import ArchSpec, StageSpec

    x, y = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8), torch.arange(32) % 10
    monkeypatch.setattr(workers, "data_on_device", lambda holder, device: (x, y, x, y, [0.5], [0.25]))
    spec = ArchSpec((StageSpec(width=16, depth=1, heads=2, key_dim=8),), img_size=8, in_chans=1, patch=2)
    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(b"not a checkpoint")
    res = workers.evaluate_on_worker(spec.to_json(), ["ref"], TrainConfig(epochs=1, batch_size=16), str(ckpt), None)
    assert res["val_acc"] is not None and (tmp_path / "a.pt.corrupt").read_bytes() == b"not a checkpoint"
    (note,) = res["notes"]
    assert note.startswith(f"checkpoint {ckpt} is unreadable (") and note.endswith("training from scratch")

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("arch_id", "a")
    said = []  # not said again at the search's end
    run = SimpleNamespace(study=study, dispatcher=SimpleNamespace(checkpoint=lambda arch_id: tmp_path / f"{arch_id}.pt"),
                          note_set_aside=said.append)
    monkeypatch.setattr("nas.search.share_fate", lambda run, trial: None)
    monkeypatch.setattr("nas.search.release_presets", lambda run: "")
    with pytest.warns(UserWarning, match=f"trial {trial.number}: checkpoint {ckpt} is unreadable"):
        settle(run, trial, 0, {"failure": "diverged", "notes": [note]})
    assert said == ["a"]


def test_a_lost_node_is_named_in_a_few_words():
    class NodeDiedError(Exception):
        pass

    assert lost_because(NodeDiedError(NODE_DIED)) == ("NodeDiedError on node 10.1.2.3: Task failed because the node it "
                                                      "was running on is dead or unavailable")


def test_a_lost_training_starts_again_until_it_has_lost_its_worker_too_often(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    submitted = []
    dispatcher = SimpleNamespace(submit=lambda trial, rung: submitted.append((trial.number, rung)),
                                 checkpoint=lambda arch_id: tmp_path / f"{arch_id}.pt")
    run = SimpleNamespace(study=study, dispatcher=dispatcher, waiting={}, held=[], train=dispatcher.submit)
    trial = study.ask()
    trial.set_user_attr("arch_id", "a")
    for n in range(1, MAX_RELAUNCHES + 1):
        with pytest.warns(UserWarning, match="trial 0 lost its worker at rung 1"):
            line = settle(run, trial, 1, {"lost": "NodeDiedError on node 10.1.2.3: gone"})
        assert line == ("trial 0 lost its worker at rung 1 (NodeDiedError on node 10.1.2.3: gone): started again "
                        "from its checkpoint")
        assert submitted[-1] == (0, 1) and trial.user_attrs["relaunches"] == n
    line = settle(run, trial, 1, {"lost": "WorkerCrashedError: crashed"})
    assert line.startswith("trial 0 failed at rung 1: its worker was lost 3 times, last: WorkerCrashedError")
    assert len(submitted) == MAX_RELAUNCHES and study.trials[0].state == optuna.trial.TrialState.FAIL
