"""``ctrag generate`` and ``ctrag import-weights`` in-process: a report file through the session-trained tiny run
and its index (root conftest), MAISI-style checkpoints imported into a run folder and generated from with a real
TotalSegmentator mask, and the exit codes of bad input, missing weights and checkpoints of another architecture.

The real checkpoints are gigabytes and not on this machine, so the import test builds networks with the *same
classes and structure options* as text2ct-512 (MAISI VAE/UNet/ControlNet, spacing + modality inputs, binary 8-bit
masks of TotalSegmentator ids) at a small size (``SHRINK``), saves them the way the MAISI/Text2CT scripts do and
imports them with ``ctrag import-weights``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.cli import main
from ctrag.errors import CheckpointMismatchError
from ctrag.generation.config import load_generator_config
from ctrag.generation.controlnet import CONTROL_ONLY_PREFIXES
from ctrag.generation.networks import build_controlnet, build_unet, build_vae
from ctrag.generation.pipeline import GenerationPipeline
from tests.generation.conftest import SAMPLE


def test_cli_generate_end_to_end(trained_run: Path, gen_index: Path, tmp_path: Path, val_reports) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.txt"
    report.write_text(val_reports[3], encoding="utf-8")
    out = tmp_path / "gen" / "ct.nii.gz"
    args = ["generate", "--report-file", str(report), "--weights", str(trained_run), "--index", str(gen_index),
            "--out", str(out), "--steps", "4", "--seed", "5", "--no-progress", "--dice"]  # fmt: skip
    assert main(args) == 0
    prov = json.loads(out.with_name("ct.provenance.json").read_text())
    assert prov["seed"] == 5 and prov["steps"] == 4 and prov["strategy"] == "nearest"
    assert set(prov["dice_vs_proxy"]) >= {"body", "lungs"}
    assert main(["generate", "--report", "", "--weights", str(trained_run), "--out", str(out)]) == 2
    assert main(["generate", "--report", "x", "--weights", str(trained_run), "--out", str(tmp_path / "ct.txt")]) == 2


def test_generate_with_missing_weights_exits_2(tmp_path: Path) -> None:
    """A run folder that does not exist is a clear usage error (exit 2), not a traceback."""
    missing = ["generate", "--report", "Normal.", "--weights", str(tmp_path / "nothing")]
    assert main([*missing, "--out", str(tmp_path / "x.nii.gz"), "--strategy", "none"]) == 2


SHRINK = [
    "vae.channels=[8,16,16]",
    "vae.num_res_blocks=[1,1,1]",
    "vae.norm_num_groups=8",
    "vae.num_splits=1",
    "vae.norm_float16=false",
    "preprocess.spacing=[5.0,5.0,7.5]",
    "diffusion.channels=[16,32,32,32]",
    "diffusion.num_res_blocks=[1,1,1,1]",
    "diffusion.num_head_channels=[0,0,16,16]",
    "diffusion.norm_num_groups=8",
    "diffusion.cross_attention_dim=384",
    "diffusion.use_flash_attention=false",
    "controlnet.conditioning_embedding_num_channels=[8,16,16]",
    "sampler.output_shape=[64,64,32]",
    "sampler.device=cpu",
    "sampler.precision=fp32",
    "sampler.steps=3",
]


def _save_like_maisi(tmp: Path) -> dict[str, Path]:
    cfg = load_generator_config("text2ct-512", SHRINK)
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae), build_unet(cfg.diffusion)
    cn = build_controlnet(cfg.diffusion, cfg.controlnet, 117)
    with torch.no_grad():
        for p in list(unet.out.parameters()):
            p.normal_(std=0.05)
        for name, p in cn.named_parameters():
            if name.startswith(CONTROL_ONLY_PREFIXES):
                p.normal_(std=0.05)
    files = {"vae": tmp / "autoencoder_epoch273.pt", "unet": tmp / "diff_unet_ckpt.pt", "cn": tmp / "controlnet.pt"}
    torch.save(vae.state_dict(), files["vae"])
    wrapped = {f"module.{k}": v for k, v in unet.state_dict().items()}  # saved from DDP
    torch.save({"unet_state_dict": wrapped, "scale_factor": torch.tensor(0.8)}, files["unet"])
    torch.save({"controlnet_state_dict": cn.state_dict(), "epoch": 10}, files["cn"])
    return files


def test_import_external_checkpoints_and_generate(tmp_path: Path, text_encoder) -> None:  # type: ignore[no-untyped-def]
    files = _save_like_maisi(tmp_path)
    sets = [a for o in SHRINK for a in ("--set", o)]
    args = [
        "import-weights",
        "--config",
        "text2ct-512",
        *sets,
        "--vae",
        str(files["vae"]),
        "--unet",
        str(files["unet"]),
    ]
    assert main([*args, "--controlnet", str(files["cn"]), "--out", str(tmp_path / "run")]) == 0
    index = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert index["components"]["controlnet"] == "controlnet"
    assert index["encoder"]["name_or_path"] == "hf-text"  # the preset's encoder, not the MiniLM fallback (bug 2a)
    assert json.loads((tmp_path / "run" / "unet" / "config.json").read_text())["scale_factor"] == pytest.approx(0.8)
    pipe = GenerationPipeline.from_pretrained(tmp_path / "run", encoder=text_encoder)
    mask = SAMPLE / "ct_rate_nc_sa" / "lowres" / "ragtext2ct_ctrate_chest_mask_total_128.nii.gz"
    guided = pipe("Bilateral pleural effusion.", mask=mask, seed=0)
    assert guided.label_set == "totalseg" and guided.mask is not None and int(guided.mask.max()) > 5
    free = pipe("Bilateral pleural effusion.", strategy="none", seed=0)
    assert guided.volume.shape == (64, 64, 32) and not np.allclose(guided.volume, free.volume)
    # a checkpoint of another architecture is refused with the offending keys named
    wrong = [*args[:-4], "--set", "diffusion.channels=[16,32,64,64]", *args[-4:]]  # same files, other architecture
    assert main([*wrong, "--out", str(tmp_path / "bad")]) == 3
    with pytest.raises(CheckpointMismatchError, match="scale_factor"):
        from ctrag.generation.run_folder import import_external_weights

        torch.save(
            build_unet(load_generator_config("text2ct-512", SHRINK).diffusion).state_dict(), tmp_path / "bare.pt"
        )
        import_external_weights(
            load_generator_config("text2ct-512", SHRINK), tmp_path / "bad2", vae=files["vae"], unet=tmp_path / "bare.pt"
        )


def test_cli_generate_reports_csv_batches_resumes_and_refuses_bad_tables(  # type: ignore[no-untyped-def]
    trained_run: Path, gen_index: Path, pipeline, tmp_path: Path, val_reports
) -> None:
    import csv

    import nibabel as nib

    from ctrag.generation.batch import derive_seed

    table = tmp_path / "reports.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["id", "report_text"], *[[f"val_{i}", val_reports[i]] for i in range(3)]])
    out = tmp_path / "many"
    base = ["generate", "--weights", str(trained_run), "--index", str(gen_index), "--out", str(out), "--steps", "2"]
    assert main([*base, "--reports-csv", str(table), "--batch-size", "2", "--seed", "9", "--no-progress"]) == 0
    for i in range(3):
        folder = out / f"val_{i}"
        assert {p.name for p in folder.iterdir()} == {"ct.nii.gz", "ct.provenance.json", "ct.png"}
        prov = json.loads((folder / "ct.provenance.json").read_text())
        assert prov["seed"] == derive_seed(9, f"val_{i}") and prov["batch"]["size"] == (2 if i < 2 else 1)
    # the batched CT equals a single generation with the report's seed (int16 HU; batched kernels round apart)
    single = pipeline(val_reports[2], seed=derive_seed(9, "val_2"), steps=2)
    written = np.asarray(nib.load(out / "val_2" / "ct.nii.gz").dataobj)
    assert np.abs(written.astype(np.int32) - np.rint(single.volume).astype(np.int32)).max() <= 1
    # a rerun skips everything already done
    stamp = (out / "val_0" / "ct.nii.gz").stat().st_mtime_ns
    assert main([*base, "--reports-csv", str(table), "--seed", "9", "--no-progress"]) == 0
    assert (out / "val_0" / "ct.nii.gz").stat().st_mtime_ns == stamp
    assert json.loads((out / "batch_summary.json").read_text())["skipped"] == ["val_0", "val_1", "val_2"]
    # bad tables and option mixes are usage errors (exit 2) before any model is loaded
    dup = tmp_path / "dup.csv"
    dup.write_text("id,report_text\na,Normal.\na,Effusion.\n", encoding="utf-8")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("case,text\na,Normal.\n", encoding="utf-8")
    assert main([*base, "--reports-csv", str(dup)]) == 2
    assert main([*base, "--reports-csv", str(nocol)]) == 2
    assert (
        main([*base, "--reports-csv", str(nocol), "--id-column", "case", "--text-column", "text", "--shard", "2/2"])
        == 2
    )
    assert main([*base, "--reports-csv", str(table), "--report", "Normal."]) == 2
