"""Resume and fine-tune (issue 15 item 6): a run stopped after k epochs (cancel, or killed) and resumed from its
checkpoint ends with the same weights and loss history as the uninterrupted run of the same seed; a checkpoint
of another dataset or configuration, and an INIT_MODEL with another factor set, are refused naming what differs;
INIT_MODEL keeps or re-fits the normalisation."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ismoe_qgis.core_callbacks import Callbacks  # noqa: E402
from ismoe_qgis.model.io import CheckpointError, load_checkpoint, load_model, resume_path  # noqa: E402
from ismoe_qgis.model.train import TrainConfig, train  # noqa: E402

from test_model import small_cube  # noqa: E402

OPTS = {"conv_channels": 4, "hidden": 8}


def config(**kw):
    base = dict(epochs=4, batch_size=32, samples_per_epoch=128, val_samples=150, device="cpu", seed=3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


class Stopper:
    """Callbacks that cancel (or raise, like a killed process) at the first batch of epoch `at`."""

    def __init__(self, at, kill=False):
        self.at, self.kill, self.lines = at, kill, []

    def log(self, msg):
        self.lines.append(msg)

    def cancelled(self):
        done = sum(1 for line in self.lines if line.startswith("epoch "))
        if done >= self.at - 1:
            if self.kill:
                raise KeyboardInterrupt("killed")
            return True
        return False

    def callbacks(self):
        return Callbacks(log=self.log, is_cancelled=self.cancelled)


def states_equal(a, b, tol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_allclose(sa[k].numpy(), sb[k].numpy(), rtol=0, atol=tol, err_msg=k)


def log_epochs(path):
    with open(path) as f:
        return [json.loads(line)["epoch"] for line in f]


def losses(history):
    return [(r["epoch"], r["train_loss"], r["val_loss"]) for r in history]


@pytest.mark.parametrize("members,kill", [(1, False), (2, True)])
def test_resume_equals_the_uninterrupted_run(tmp_path, members, kill):
    """1 model stopped by cancel; an ensemble of 2 (bootstrap weights, per-member early stopping with patience 2)
    killed mid-run: resumed, both end as the uninterrupted run (weights within 1e-6, identical loss history)."""
    cube = small_cube(T=40)
    opts = {**OPTS, "members": members}
    cfg = config(epochs=5, patience=2 if members > 1 else 6, lr=2e-2)
    ref_path = str(tmp_path / "ref.pt")
    ref = train(cube, ref_path, cfg=cfg, model_options=opts, log_path=str(tmp_path / "ref.jsonl"))
    assert not os.path.exists(resume_path(ref_path)), "the checkpoint is removed when training completes"

    path = str(tmp_path / "m.pt")
    log = str(tmp_path / "m.jsonl")
    stop = Stopper(at=3, kill=kill)
    if kill:
        with pytest.raises(KeyboardInterrupt):
            train(cube, path, cfg=cfg, model_options=opts, callbacks=stop.callbacks(), log_path=log)
    else:
        res = train(cube, path, cfg=cfg, model_options=opts, callbacks=stop.callbacks(), log_path=log)
        assert res["cancelled"] and res["resume_checkpoint"] == resume_path(path)
        assert any("run again with RESUME" in line for line in stop.lines)
    ck = resume_path(path)
    assert ck == path + ".resume" and os.path.exists(ck)
    header, blob = load_checkpoint(ck)
    assert header["epoch"] == 2 and len(header["history"]) == 2 and "optimizer" in blob and "numpy_rng" in header

    lines = []
    res = train(cube, path, cfg=config(epochs=5, patience=cfg.patience, lr=2e-2, resume=True), model_options=opts,
                callbacks=Callbacks(log=lines.append), log_path=log)
    assert any(line.startswith("RESUME: continuing from") and "after epoch 2/5" in line for line in lines)
    assert res["resumed_from_epoch"] == 2 and not res["cancelled"]
    assert losses(res["history"]) == losses(ref["history"])
    assert res["best_epoch"] == ref["best_epoch"]
    if members > 1:
        assert res["member_best_epochs"] == ref["member_best_epochs"]
        assert [r["member_val_loss"] for r in res["history"]] == [r["member_val_loss"] for r in ref["history"]]
    assert res["val_cc"] == pytest.approx(ref["val_cc"], abs=1e-6)
    a, _, info_a = load_model(ref_path)
    b, _, info_b = load_model(path)
    states_equal(a, b)
    assert info_b["resumed_from_epoch"] == 2
    assert log_epochs(log) == [r["epoch"] for r in ref["history"]]
    assert not os.path.exists(ck)


def test_resume_refuses_another_configuration_or_dataset(tmp_path):
    cube = small_cube(T=40)
    path = str(tmp_path / "m.pt")
    stop = Stopper(at=2)
    train(cube, path, cfg=config(), model_options=OPTS, callbacks=stop.callbacks())
    assert os.path.exists(resume_path(path))
    with pytest.raises(CheckpointError, match=r"another configuration .*LEARNING_RATE: 0\.004 there, 0\.01 here"):
        train(cube, path, cfg=config(resume=True, lr=0.01), model_options=OPTS)
    with pytest.raises(CheckpointError, match=r"another configuration .*hidden: 8 there, 12 here"):
        train(cube, path, cfg=config(resume=True), model_options={**OPTS, "hidden": 12})
    other = small_cube(T=40, seed=1)
    with pytest.raises(CheckpointError, match=r"another dataset .*target values"):
        train(other, path, cfg=config(resume=True), model_options=OPTS)
    with pytest.raises(CheckpointError, match="another dataset .*cube shape"):
        train(small_cube(T=41), path, cfg=config(resume=True), model_options=OPTS)
    # a given checkpoint file that is not one
    bad = tmp_path / "bad.resume"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.resume is not a resume checkpoint"):
        train(cube, path, cfg=config(resume=str(bad)), model_options=OPTS)
    with pytest.raises(FileNotFoundError, match="resume checkpoint not found"):
        train(cube, path, cfg=config(resume=str(tmp_path / "none.resume")), model_options=OPTS)
    # the device may change (where it runs, not what it computes): accepted
    res = train(cube, path, cfg=config(resume=True, device="auto"), model_options=OPTS)
    assert res["resumed_from_epoch"] == 1 and len(res["history"]) == 4


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    lines = []
    res = train(small_cube(T=40), str(tmp_path / "m.pt"), cfg=config(epochs=1, resume=True), model_options=OPTS,
                callbacks=Callbacks(log=lines.append))
    assert any(line.startswith("RESUME: no checkpoint at") for line in lines)
    assert len(res["history"]) == 1 and "resumed_from_epoch" not in res


def test_init_model_fine_tunes_keeping_or_refitting_the_normalisation(tmp_path):
    cube = small_cube(T=40)
    base = str(tmp_path / "base.pt")
    train(cube, base, cfg=config(epochs=1), model_options=OPTS)
    m0, cfg0, _ = load_model(base)
    new = small_cube(T=40, seed=4)
    new.x = new.x * 3.0 + 1.0
    new.compute_stats()
    assert abs(new.x_mean[2] - cfg0.x_mean[2]) > 0.5
    lines = []
    kept = str(tmp_path / "kept.pt")
    # a tiny learning rate: the fine-tuned weights stay next to the initial ones (a new model's would not)
    res = train(new, kept, cfg=config(epochs=1, lr=1e-7, schedule="constant", init_model=base),
                model_options={**OPTS, "hidden": 16}, callbacks=Callbacks(log=lines.append))
    m1, cfg1, info1 = load_model(kept)
    assert cfg1.x_mean == cfg0.x_mean and cfg1.y_std == cfg0.y_std and cfg1.hidden == 8
    assert info1["init_model"]["path"] == base and info1["init_model"]["refit_normalisation"] is False
    assert any("HIDDEN 16 (model: 8)" in line for line in lines)
    w0, w1 = m0.experts.w_hh.detach(), m1.experts.w_hh.detach()
    assert float((w1 - w0).abs().max()) < 1e-4
    assert np.isfinite(res["val_cc"])
    refit = str(tmp_path / "refit.pt")
    train(new, refit, cfg=config(epochs=1, init_model=base, refit_normalisation=True), model_options=OPTS)
    _, cfg2, info2 = load_model(refit)
    assert cfg2.x_mean == pytest.approx(new.x_mean) and cfg2.y_mean == pytest.approx(new.y_mean)
    assert info2["init_model"]["refit_normalisation"] is True


def test_init_model_with_another_factor_set_is_refused(tmp_path):
    cube = small_cube(T=40)
    base = str(tmp_path / "base.pt")
    train(cube, base, cfg=config(epochs=1), model_options=OPTS)
    other = small_cube(T=40)
    other.factors = {"snow": ["sd", "sc"], "radiation": ["ssr"], "wind": ["u10", "str"]}
    with pytest.raises(ValueError, match=r"another factor set than DATASET: factor 'radiation' has variables "
                                         r"ssr, str in the model but ssr in the dataset; factor 'wind'"):
        train(other, str(tmp_path / "x.pt"), cfg=config(epochs=1, init_model=base), model_options=OPTS)
    other.factors = {"snow": ["sd", "sc"], "rad": ["ssr", "str"], "wind": ["u10"]}
    with pytest.raises(ValueError, match="factor.s. radiation only in the model; factor.s. rad only in the dataset"):
        train(other, str(tmp_path / "x.pt"), cfg=config(epochs=1, init_model=base), model_options=OPTS)
    with pytest.raises(ValueError, match="INIT_MODEL .* has PATCH_SIZE 5 but DATASET has 3"):
        train(small_cube(T=40, k=3), str(tmp_path / "x.pt"), cfg=config(epochs=1, init_model=base),
              model_options=OPTS)
    assert not os.path.exists(tmp_path / "x.pt")


# ------------------------------------------------------------------ ismoe:train (Processing, qgis_process)
ALG_TRAIN = {"EPOCHS": 2, "SAMPLES_PER_EPOCH": 512, "BATCH_SIZE": 128, "HIDDEN": 16, "CONV_CHANNELS": 4,
             "VAL_START": "2018-07-01", "TEST_START": "2018-10-01", "DEVICE": 2, "THREADS": 1, "SEED": 5}


@pytest.fixture(scope="module")
def demo_dataset(demo_region, run_alg, tmp_path_factory):
    man = demo_region.manifest
    layers = [os.path.join(demo_region.path, man["layers"][v]) for f in man["factors"] for v in man["factors"][f]]
    groups = ";".join(f"{f}={','.join(v)}" for f, v in man["factors"].items())
    ds = str(tmp_path_factory.mktemp("resume_ds") / "ds.npz")
    run_alg("ismoe:preparedataset", {"FACTORS": layers, "FACTOR_GROUPS": groups, "PATCH_SIZE": 5, "SEQ_LEN": 7,
                                     "TARGET": os.path.join(demo_region.path, man["target"]), "OUTPUT": ds})
    return ds


def test_processing_resume_after_cancel_and_fine_tune(demo_dataset, run_alg, recording_feedback, qgis_process,
                                                      tmp_path):
    """Cancel ismoe:train in epoch 2 (the checkpoint of epoch 1 stays), resume it with the real qgis_process
    (RESUME=true): the same history and weights as the uninterrupted run; RESUME with another LEARNING_RATE is
    refused naming it; INIT_MODEL with REFIT_NORMALISATION fine-tunes the result."""
    ref = str(tmp_path / "ref.pt")
    run_alg("ismoe:train", {"DATASET": demo_dataset, "OUTPUT": ref, **ALG_TRAIN})
    model, log = str(tmp_path / "m.pt"), str(tmp_path / "m.jsonl")
    fb = recording_feedback(cancel_at_progress=60)
    res, fb = run_alg("ismoe:train", {"DATASET": demo_dataset, "OUTPUT": model, "LOG": log, **ALG_TRAIN}, feedback=fb)
    assert res["BEST_EPOCH"] == 1 and os.path.exists(model + ".resume")
    assert "run again with RESUME to continue" in fb.text

    bad = qgis_process.run("ismoe:train", {"DATASET": demo_dataset, "OUTPUT": model, "RESUME": True,
                                           **ALG_TRAIN, "LEARNING_RATE": 0.01})
    assert bad.returncode != 0 and "another configuration" in bad.stderr + bad.stdout
    assert "LEARNING_RATE: 0.004 there, 0.01 here" in bad.stderr + bad.stdout
    r = qgis_process.run("ismoe:train", {"DATASET": demo_dataset, "OUTPUT": model, "LOG": log, "RESUME": True,
                                         **ALG_TRAIN})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not os.path.exists(model + ".resume")
    a, _, info_a = load_model(ref)
    b, _, info_b = load_model(model)
    assert info_b["resumed_from_epoch"] == 1
    assert losses(info_b["history"]) == losses(info_a["history"])
    states_equal(a, b)
    assert r.json["results"]["TEST_CC"] == pytest.approx(info_a["test_cc"], abs=1e-6)
    assert log_epochs(log) == [1, 2]

    tuned = str(tmp_path / "tuned.pt")
    r = qgis_process.run("ismoe:train", {"DATASET": demo_dataset, "OUTPUT": tuned, "INIT_MODEL": model,
                                         "REFIT_NORMALISATION": True, **ALG_TRAIN, "EPOCHS": 1})
    assert r.returncode == 0, r.stderr[-2000:]
    _, cfg_t, info_t = load_model(tuned)
    assert info_t["init_model"] == {"path": model, "refit_normalisation": True, "source_best_epoch": 2}
    assert cfg_t.hidden == 16
    missing = qgis_process.run("ismoe:train", {"DATASET": demo_dataset, "OUTPUT": str(tmp_path / "x.pt"),
                                               "INIT_MODEL": str(tmp_path / "none.pt"), **ALG_TRAIN})
    assert missing.returncode != 0 and "INIT_MODEL" in missing.stderr + missing.stdout
    assert not os.path.exists(tmp_path / "x.pt")
