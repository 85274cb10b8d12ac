"""The three trainings: interrupted + resumed runs repeat the uninterrupted loss curve; ControlNet training learns;
nothing the evaluation evaluates is trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.errors import CheckpointMismatchError, ConfigError, LeakageError
from ctrag.generation.config import load_generator_config
from ctrag.generation.training import LOG_FILE, STATE_FILE, train_controlnet, train_diffusion
from ctrag.generation.training.data import select_training_cases
from tests.generation.conftest import tiny_config


def test_diffusion_resume_is_exact(tmp_path: Path, trained_run: Path, training_cases, text_encoder) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config(
        "train_diffusion.steps_per_epoch=4",
        "train_diffusion.batch_size=2",
        "train_diffusion.bank_crops=8",
        "train_diffusion.save_every=1",
    )
    runs = {}
    for name in ("straight", "resumed"):
        run = tmp_path / name
        shutil.copytree(trained_run / "vae", run / "vae")
        kwargs = dict(cases=training_cases, encoder=text_encoder)
        if name == "resumed":
            train_diffusion(None, cfg, run, stop_after=2, **kwargs)
        runs[name] = train_diffusion(None, cfg, run, **kwargs)
    assert runs["resumed"].resumed_from == 2
    assert runs["straight"].losses == runs["resumed"].losses and len(runs["straight"].losses) == 4
    with pytest.raises(CheckpointMismatchError, match="other settings"):
        train_diffusion(None, tiny_config("train_diffusion.steps_per_epoch=4", "train_diffusion.lr=0.1",
                        "train_diffusion.batch_size=2", "train_diffusion.bank_crops=8"),
                        tmp_path / "resumed", cases=training_cases, encoder=text_encoder)  # fmt: skip


def test_short_controlnet_training_on_real_ct_and_masks_lowers_its_loss(trained_run: Path, training_cases) -> None:  # type: ignore[no-untyped-def]
    """Fixed evaluation batch (same latents, noise, timesteps): zero-init ControlNet vs after 60 steps."""
    from ctrag.data.labels import num_labels
    from ctrag.generation.run_folder import fresh_controlnet, load_controlnet_component, load_unet_component
    from ctrag.generation.sampler import RectifiedFlowSampler
    from ctrag.generation.training.data import bank_batches, latent_bank, text_contexts
    from ctrag.generation.training.engine import sample_generator
    from ctrag.generation.training.objectives import FlowObjective, flow_prepare_batch

    cfg = tiny_config()
    tc = cfg.train_controlnet
    unet, null, scale, _ = load_unet_component(trained_run / "unet", cfg, "cpu")
    from ctrag.generation.run_folder import load_vae_component

    vae, _ = load_vae_component(trained_run / "vae", cfg, "cpu")
    bank = latent_bank(trained_run, vae, trained_run / "vae", training_cases, tc, tc.bank_crops,
                 {"label_set": "coarse", "mask_from": "segment"}, torch.device("cpu"), False)  # fmt: skip
    assert bank.labels is not None and set(torch.unique(bank.labels).tolist()) >= {0, 1, 2, 3}
    contexts = text_contexts(training_cases, 384)
    has_text = torch.tensor([c.context is not None for c in training_cases])
    sampler = RectifiedFlowSampler.from_config(cfg.sampler.scheduler)
    make = bank_batches(bank, True)
    prepare = flow_prepare_batch(cfg, tc, contexts, has_text, sampler, scale, True, torch.contiguous_format)
    gens = [[sample_generator(99, step, i) for i in range(tc.batch_size)] for step in range(4)]
    batches = [prepare(make(step, g), torch.device("cpu"), g) for step, g in enumerate(gens)]
    trained, _ = load_controlnet_component(trained_run / "controlnet", cfg, "cpu")
    losses = {}
    for name, cn in (("zero-init", fresh_controlnet(unet, cfg)), ("trained", trained)):
        objective = FlowObjective(unet, null, False, "l1", controlnet=cn).eval()
        with torch.no_grad():
            losses[name] = sum(float(objective(**b)) for b in batches) / len(batches)
    assert num_labels("coarse") == 5
    assert losses["trained"] < losses["zero-init"] - 0.005, losses
    log = json.loads((trained_run / "controlnet" / LOG_FILE).read_text())
    assert len(log["losses"]) == cfg.train_controlnet.total_steps


def test_test_split_is_never_trained_on(gen_corpus) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LeakageError, match="held out"):
        select_training_cases(gen_corpus, ("train", "test"))
    chosen = {c.case_id for c in select_training_cases(gen_corpus, ("train",))}
    assert "lidc_idri_0314" not in chosen and "lung_pet_ct_dx_A0001" in chosen
    with pytest.raises(ConfigError, match="test"):
        load_generator_config("tiny-cpu", ["train_vae.splits=[train,test]"])


@pytest.mark.slow
def test_torchrun_two_processes_train_with_ddp(tmp_path: Path, gen_corpus) -> None:  # type: ignore[no-untyped-def]
    """`torchrun --nproc-per-node 2 ctrag train vae ...` runs DDP (gloo on CPU) with no code change."""
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    sets = ["train_vae.steps_per_epoch=2", "train_vae.batch_size=2", "train_vae.crop_shape=[32,32,16]"]
    cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2", str(bin_dir / "ctrag"), "train", "vae",
           "--corpus", str(gen_corpus.root), "--out", str(tmp_path / "ddp"), "--threads", "1", "--no-progress",
           *[a for o in sets for a in ("--set", o)]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = json.loads((tmp_path / "ddp" / "vae" / LOG_FILE).read_text())
    assert log["world_size"] == 2 and len(log["losses"]) == 2
    assert (tmp_path / "ddp" / "vae" / "model.pt").is_file()


def test_controlnet_training_updates_only_the_controlnet(trained_run: Path) -> None:
    state = torch.load(trained_run / "controlnet" / STATE_FILE, weights_only=True)
    names = list(state["params"])
    assert names and all(n.startswith("controlnet.") for n in names)  # UNet (and VAE) stay frozen
    assert any(n.startswith("controlnet.controlnet_cond_embedding.") for n in names)
    assert any(n.startswith("controlnet.controlnet_down_blocks.") for n in names)


def test_learned_null_embedding_is_trained_saved_and_loaded(
    tmp_path: Path, trained_run: Path, training_cases, text_encoder
) -> None:  # type: ignore[no-untyped-def]
    from ctrag.generation.run_folder import load_unet_component

    cfg = tiny_config(
        "diffusion.null_embedding=learned",
        "train_diffusion.steps_per_epoch=3",
        "train_diffusion.batch_size=2",
        "train_diffusion.bank_crops=8",
        "train_diffusion.text_dropout=0.5",
    )
    shutil.copytree(trained_run / "vae", tmp_path / "vae")
    train_diffusion(None, cfg, tmp_path, cases=training_cases, encoder=text_encoder)
    assert (tmp_path / "unet" / "null_embedding.pt").is_file()
    _, null, _, info = load_unet_component(tmp_path / "unet", cfg, "cpu")
    assert info["null_embedding"] == "learned" and null.shape == (1, 1, 384)
    assert float(null.abs().max()) > 0  # moved away from its zero start by the dropped-text samples


def test_generator_training_refuses_what_the_evaluation_evaluates(tmp_path: Path, gen_corpus, training_cases) -> None:  # type: ignore[no-untyped-def]
    """Bug 2f: training refused only ``test`` while the tiny evaluation evaluates ``val`` reports."""
    from ctrag.generation.training import train_vae

    cfg = tiny_config("train_vae.splits=[train,val]", "train_vae.steps_per_epoch=1", "train_vae.batch_size=1")
    assert cfg.held_out.splits == ("test", "val")
    with pytest.raises(LeakageError, match=r"\['val'\].*evaluation section of tiny-cpu"):
        train_vae(gen_corpus, cfg, tmp_path / "run")
    # a case the evaluation names is refused even inside the train split, also when the cases come preloaded
    named = load_generator_config(
        {"evaluation": {"split": "test", "case_ids": ["lung_pet_ct_dx_A0001"]}},
        ["train_vae.steps_per_epoch=1", "train_vae.batch_size=1", "train_vae.crop_shape=[32,32,16]"],
    )
    with pytest.raises(LeakageError, match="lung_pet_ct_dx_A0001"):
        select_training_cases(gen_corpus, ("train",), held_out=named.held_out)
    with pytest.raises(LeakageError, match="lung_pet_ct_dx_A0001"):
        train_vae(None, named, tmp_path / "run2", cases=training_cases)


CN_SHORT = (
    "train_controlnet.steps_per_epoch=4",
    "train_controlnet.batch_size=2",
    "train_controlnet.bank_crops=8",
    "train_controlnet.save_every=1",
    "train_controlnet.log_every=1",
)


def _frozen_parts(trained_run: Path, dest: Path) -> Path:
    for part in ("vae", "unet"):
        shutil.copytree(trained_run / part, dest / part)
    shutil.copy(trained_run / "pipeline.json", dest / "pipeline.json")
    return dest


def _state_params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "controlnet" / STATE_FILE, weights_only=True)["params"]


def test_accumulated_checkpointed_controlnet_steps_repeat_the_plain_ones(
    tmp_path: Path, trained_run: Path, training_cases
) -> None:  # type: ignore[no-untyped-def]
    """Batch 2 as 2 micro-batches of 1, with the UNet and ControlNet blocks recomputed in the backward pass: the
    same (global mean) losses and the same ControlNet weights as plain batch-2 steps."""
    sets = (*CN_SHORT[1:], "train_controlnet.steps_per_epoch=3")
    plain = train_controlnet(None, tiny_config(*sets), _frozen_parts(trained_run, tmp_path / "plain"),
                             cases=training_cases)  # fmt: skip
    cfg = tiny_config(*sets, "train_controlnet.grad_accum_steps=2", "train_controlnet.grad_checkpointing=true")
    other = train_controlnet(None, cfg, _frozen_parts(trained_run, tmp_path / "other"), cases=training_cases)
    assert len(set(plain.losses)) == 3 and other.info["grad_accum_steps"] == 2 and other.info["grad_checkpointing"]
    np.testing.assert_allclose(other.losses, plain.losses, rtol=1e-5)
    a, b = _state_params(tmp_path / "plain"), _state_params(tmp_path / "other")
    assert set(a) == set(b)
    # AdamW divides each update by the gradient's running RMS, so where a gradient is ~0 (the zero-initialised
    # output convs) the rounding of the reordered micro-batch sums becomes an update difference near 1e-6 (this
    # machine's fresh venv: 1.08e-6 on 0.1 % of one block's elements); 2e-6 still fails any real divergence.
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=2e-6, msg=k)


@pytest.mark.slow  # ~50 s on two shared cores: two spawned interpreters import torch, MONAI and ctrag
def test_run_started_on_one_process_and_resumed_on_two_gloo_processes_repeats_the_curve(
    tmp_path: Path, trained_run: Path, training_cases
) -> None:  # type: ignore[no-untyped-def]
    """Steps 0-1 on one process, 2-3 on two (each takes half of the same global batch): the whole curve equals an
    uninterrupted one-process run, and the log records both world sizes."""
    import torch.multiprocessing as mp
    from testsupport.ddp_training import controlnet_worker, free_port

    from ctrag.generation.training.engine import RUN_LOG_FILE, read_run_log

    straight = train_controlnet(None, tiny_config(*CN_SHORT), _frozen_parts(trained_run, tmp_path / "one"),
                                cases=training_cases)  # fmt: skip
    run = _frozen_parts(trained_run, tmp_path / "moved")
    first = train_controlnet(None, tiny_config(*CN_SHORT), run, cases=training_cases, stop_after=2)
    assert first.steps == 2 and first.losses == straight.losses[:2]
    mp.spawn(controlnet_worker, args=(2, free_port(), str(run), CN_SHORT, training_cases), nprocs=2, join=True)
    log = json.loads((run / "controlnet" / LOG_FILE).read_text())
    assert log["resumed_from"] == 2 and log["world_size"] == 2 and len(set(straight.losses)) == 4
    np.testing.assert_allclose(log["losses"], straight.losses, rtol=1e-5)
    assert log["world_sizes"] == [{"from_step": 0, "world_size": 1}, {"from_step": 2, "world_size": 2}]
    lines = read_run_log(run / "controlnet" / RUN_LOG_FILE)
    assert [(r["step"], r["world_size"]) for r in lines] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    for k, v in _state_params(tmp_path / "one").items():
        torch.testing.assert_close(_state_params(run)[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert (run / "controlnet" / "model.pt").is_file() and (run / "controlnet" / "train_curve.png").is_file()
