"""Generation test support: the shipped corpus, its CTs in image space, and one short training run.

The expensive pieces (ingest, segmentation of the training CTs, text encoder, a VAE/UNet/ControlNet trained for a
few dozen steps, a small retrieval index) are session-scoped and shared by every test that needs trained weights.
Imported as ``testsupport.generation_data``; its fixtures are registered once, in the root ``tests/conftest.py``, so
tests/generation and tests/cli (``ctrag generate`` / ``ctrag train``) share one trained run per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ctrag.data.case import Corpus
from ctrag.generation.config import DiffusionConfig, GeneratorConfig, load_generator_config

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"

#: A two-level UNet with cross-attention that unit tests of the networks, sampler and objectives build in ms.
TINY_UNET = DiffusionConfig(
    channels=(16, 32),
    attention_levels=(False, True),
    num_res_blocks=(1, 1),
    num_head_channels=(0, 16),
    norm_num_groups=8,
    cross_attention_dim=24,
)

#: The tiny-cpu preset shortened so the whole session run trains in well under a minute on two cores.
TEST_OVERRIDES: tuple[str, ...] = (
    "train_vae.steps_per_epoch=60",
    "train_vae.save_every=30",
    "train_diffusion.steps_per_epoch=40",
    "train_diffusion.bank_crops=48",
    "train_diffusion.batch_size=4",
    "train_controlnet.steps_per_epoch=60",
    "train_controlnet.bank_crops=48",
    "train_controlnet.batch_size=4",
    "train_controlnet.lr=2.0e-3",
    "sampler.steps=12",
)


def tiny_config(*extra: str) -> GeneratorConfig:
    return load_generator_config("tiny-cpu", [*TEST_OVERRIDES, *extra])


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    # Tests share two cores with other work; one intra-op thread keeps timings predictable.
    torch.set_num_threads(int(os.environ.get("CTRAG_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def gen_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The shipped CTs (and CT-RATE report/mask rows) ingested into a manifest."""
    from ctrag.data.ingest import ingest

    out = tmp_path_factory.mktemp("gen_corpus")
    result = ingest([SAMPLE / "ct", SAMPLE / "ct_rate_nc_sa"], out)
    return result.corpus


@pytest.fixture(scope="session")
def text_encoder():  # type: ignore[no-untyped-def]
    from ctrag.generation.run_folder import create_text_encoder

    return create_text_encoder({"name_or_path": "minilm", "weights": None}, "cpu")


@pytest.fixture(scope="session")
def training_cases(gen_corpus: Corpus, text_encoder):  # type: ignore[no-untyped-def]
    from ctrag.generation.training.data import load_training_cases

    cfg = tiny_config()
    return load_training_cases(
        gen_corpus, cfg.preprocess, min_shape=(64, 64, 32), label_set="coarse", encoder=text_encoder
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, training_cases, text_encoder) -> Path:  # type: ignore[no-untyped-def]
    """VAE + UNet + ControlNet trained briefly on the real training CTs (coarse masks from ctrag.segment)."""
    from ctrag.generation.training import train_controlnet, train_diffusion, train_vae

    run = tmp_path_factory.mktemp("gen_run")
    cfg = tiny_config()
    train_vae(None, cfg, run, cases=training_cases)
    train_diffusion(None, cfg, run, cases=training_cases, encoder=text_encoder, encoder_spec={"name_or_path": "minilm"})
    train_controlnet(None, cfg, run, cases=training_cases, encoder=text_encoder)
    return run


@pytest.fixture(scope="session")
def gen_index(tmp_path_factory: pytest.TempPathFactory, gen_corpus: Corpus, text_encoder) -> Path:  # type: ignore[no-untyped-def]
    """Retrieval index over the training cases that can give a proxy (a CT or a mask)."""
    from ctrag.index.build import build_text_index

    cases = [c for c in gen_corpus if c.split == "train" and (c.has_volume or c.has_mask)]
    index, _ = build_text_index(cases, text_encoder, encoder_spec={"name_or_path": "minilm", "weights": None})
    out = tmp_path_factory.mktemp("gen_index") / "index"
    index.save(out)
    return out


@pytest.fixture(scope="session")
def pipeline(trained_run: Path, gen_index: Path, text_encoder):  # type: ignore[no-untyped-def]
    from ctrag.generation.pipeline import GenerationPipeline

    return GenerationPipeline.from_pretrained(trained_run, encoder=text_encoder, index_dir=gen_index)


@pytest.fixture(scope="session")
def val_reports() -> list[str]:
    """Real CT-RATE reports of the validation CSV (their CTs are not in the repository)."""
    import pandas as pd

    frame = pd.read_csv(SAMPLE / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv")
    return [str(t) for t in frame["report_text"].head(4)]
