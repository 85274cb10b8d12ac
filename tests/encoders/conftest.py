"""Fixtures for encoder tests: the packaged MiniLM (loaded once), real CT-RATE reports, real CT cases with
annotation-derived captions written here, and tiny Hugging Face BERT folders created in temporary directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ctrag.data.case import Case
from ctrag.data.transforms import PreprocessConfig
from ctrag.encoders.ctvit import CTViTConfig
from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"

# Captions derived from the shipped annotations/descriptions (sample_data/README.md, ct/extra/README.md).
# They are NOT radiologist reports, and the cases say so (report_source="annotation-derived").
CT_CAPTIONS: dict[str, tuple[str, str, str]] = {
    "lung_pet_ct_dx_A0001": (
        "ct/lowres/lung_pet_ct_dx_A0001_ct_128.nii.gz",
        "train",
        "Chest CT. Mass in the posterior left lung next to the spine at the level of the carina; adenocarcinoma.",
    ),
    "lung_pet_ct_dx_A0002": (
        "ct/lowres/lung_pet_ct_dx_A0002_ct_128.nii.gz",
        "train",
        "Chest CT. Right hilar and perihilar lung mass; adenocarcinoma.",
    ),
    "ts_chest_crop": (
        "ct/lowres/ts_chest_crop_ct_3mm.nii.gz",
        "train",
        "Contrast-enhanced CT angiography cropped around the heart and aorta with the brachiocephalic trunk and "
        "the left subclavian and left common carotid arteries.",
    ),
    "ts_example_ct": (
        "ct/ts_example_ct_3mm.nii.gz",
        "train",
        "Non-contrast CT of the lung bases, the upper abdomen and the pelvis.",
    ),
    "lidc_idri_0314": (
        "ct/extra/lidc_idri_0314_ct_lowres.nii.gz",
        "test",
        "Non-contrast chest CT of the whole thorax with a single lesion in the right lung.",
    ),
}


@pytest.fixture(scope="session")
def minilm():
    from ctrag.encoders import create_encoder

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return create_encoder("minilm")


@pytest.fixture(scope="session")
def minilm_chunk():
    from ctrag.encoders import create_encoder

    return create_encoder("minilm", long_text="chunk-mean")


@pytest.fixture(scope="session")
def ct_rate_reports() -> list[str]:
    """Real CT-RATE reports (the first 24 of the shipped train.csv: enough variety, fast to encode)."""
    path = SAMPLE / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "train.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r["report_text"] for r in csv.DictReader(fh)]
    return rows[:24]


@pytest.fixture(scope="session")
def ct_cases() -> list[Case]:
    """The shipped real CTs as cases, each with the annotation-derived caption above."""
    cases = []
    for case_id, (rel, split, caption) in CT_CAPTIONS.items():
        cases.append(
            Case(
                case_id=case_id,
                patient_id=case_id,
                split=split,
                report_findings=caption,
                report_source="annotation-derived",
                volume_path=str(SAMPLE / rel),
                dataset="sample",
            )
        )
    return cases


TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "lung", "left", "right", "mass", "nodule", ".", ",",
    "no", "effusion", "pleural", "is", "present", "not", "chest", "ct", "in", "of", "with", "heart", "normal",
]  # fmt: skip


def write_tiny_bert(folder: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0, save_weights: bool = True):
    """A 2-layer BERT with a 27-word vocabulary (tokenizer + config [+ weights]) written with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(TINY_VOCAB)}, do_lower_case=True)
    tok.save_pretrained(str(folder))
    cfg = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(cfg)
    if save_weights:
        model.save_pretrained(str(folder))
    else:
        cfg.save_pretrained(str(folder))
    return model, tok


@pytest.fixture()
def tiny_bert_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-bert"
    write_tiny_bert(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tower_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny volume-tower architecture (same schema as model_configs/ctrag-volume-tiny.json) for fast tests."""
    path = tmp_path_factory.mktemp("arch") / "tower-test.json"
    arch = {
        "type": "shared-space",
        "description": "test-size tower",
        "embed_dim": 384,
        "default_pretrained": None,
        "tower": {
            "channels": [8, 16, 32],
            "strides": [2, 2, 2],
            "subunits": 1,
            "num_groups": 4,
            "head_hidden": 64,
            "dropout": 0.0,
            "in_channels": 1,
        },
        "preprocess": {"spacing": [4.0, 4.0, 4.0], "size": [64, 64, 32]},
    }
    path.write_text(json.dumps(arch), encoding="utf-8")
    return path


# A CTViT small enough for CPU tests; shared by the CT-CLIP and CTViT tests.
VISION = CTViTConfig(
    dim=16, image_size=24, frames=8, patch_size=6, temporal_patch_size=4, spatial_depth=2, temporal_depth=1,
    dim_head=8, heads=2, codebook_size=12,
)  # fmt: skip


def upstream_ctvit_state(cfg: CTViTConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A CTViT state dict with transformer_maskgit's key names (encoder + parts CT-CLIP never uses)."""

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.3

    d, inner, ff = cfg.dim, cfg.dim_head * cfg.heads, cfg.ff_inner
    patch = cfg.channels * cfg.temporal_patch_size * cfg.patch_size**2
    sd = {
        "spatial_rel_pos_bias.net.0.0.weight": r(d, 2), "spatial_rel_pos_bias.net.0.0.bias": r(d),
        "spatial_rel_pos_bias.net.1.0.weight": r(d, d), "spatial_rel_pos_bias.net.1.0.bias": r(d),
        "spatial_rel_pos_bias.net.2.weight": r(cfg.heads, d), "spatial_rel_pos_bias.net.2.bias": r(cfg.heads),
        "to_patch_emb.1.weight": 1 + r(patch), "to_patch_emb.1.bias": r(patch),
        "to_patch_emb.2.weight": r(d, patch), "to_patch_emb.2.bias": r(d),
        "to_patch_emb.3.weight": 1 + r(d), "to_patch_emb.3.bias": r(d),
        "to_patch_emb_first_frame.1.weight": r(36), "to_patch_emb_first_frame.2.weight": r(d, 36),
        "vq._codebook.initted": torch.ones(1), "vq._codebook.cluster_size": r(1, cfg.codebook_size),
        "vq._codebook.embed": r(1, cfg.codebook_size, d),
        "to_pixels.0.weight": r(patch, d), "to_pixels.0.bias": r(patch),
    }  # fmt: skip
    for tower, depth in (
        ("enc_spatial_transformer", cfg.spatial_depth),
        ("enc_temporal_transformer", cfg.temporal_depth),
        ("dec_spatial_transformer", 1),
    ):
        for i in range(depth):
            p = f"{tower}.layers.{i}"
            sd |= {
                f"{p}.0.dsconv.weight": r(d, 1, 3, 3, 3), f"{p}.0.dsconv.bias": r(d),
                f"{p}.1.norm.gamma": 1 + r(d), f"{p}.1.norm.beta": r(d),
                f"{p}.1.context_norm.gamma": torch.ones(d), f"{p}.1.context_norm.beta": torch.zeros(d),
                f"{p}.1.null_kv": torch.zeros(cfg.heads, 0, cfg.dim_head),
                f"{p}.1.to_q.weight": r(inner, d), f"{p}.1.to_kv.weight": r(2 * inner, d),
                f"{p}.1.q_scale": 1 + r(cfg.dim_head), f"{p}.1.k_scale": 1 + r(cfg.dim_head),
                f"{p}.1.to_out.weight": r(d, inner),
                f"{p}.3.0.weight": 1 + r(d), f"{p}.3.0.bias": r(d),
                f"{p}.3.1.weight": r(2 * ff, d), f"{p}.3.4.weight": r(d, ff),
            }  # fmt: skip
        sd |= {f"{tower}.norm_out.gamma": 1 + r(d), f"{tower}.norm_out.beta": r(d)}
    return sd


# Volume towers: the preprocessing grid and a small tower shared by the tower, CLIP and preprocess tests.
PRE = PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 32))
SMALL = VolumeTowerConfig(channels=(8, 16, 32), strides=(2, 2, 2), subunits=1, num_groups=4, head_hidden=64,
                          embed_dim=384)  # fmt: skip


@pytest.fixture(scope="session")
def real_ct():
    """The shipped Lung-PET-CT-Dx A0002 chest CT, preprocessed to the ``PRE`` grid."""
    from ctrag.encoders.preprocess import load_prepared

    return load_prepared(SAMPLE / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz", PRE)


def make_tower(seed: int = 0, cfg: VolumeTowerConfig = SMALL) -> VolumeTower:
    """A small volume tower with seeded weights (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VolumeTower(cfg).eval()
