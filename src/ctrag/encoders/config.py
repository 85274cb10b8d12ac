"""Typed config of the ``encoder:`` section of a preset (``load_config(EncoderConfig, "tiny-cpu", section="encoder")``).

``text``/``text_weights``/``long_text`` pick the text encoder used for reports everywhere (index, search, the frozen
side of contrastive training). ``volume_model`` names the architecture JSON of the volume tower; the
preprocessing comes from the preset's ``preprocess:`` section (one definition for the whole project) and is
recorded in every trained encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOFT_TARGETS = ("none", "label_jaccard")


@dataclass
class EncoderTrainConfig:
    """Contrastive volume<->report training (``ctrag train encoder``)."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    init_temperature: float = 0.07
    #: Random crop size as a fraction of the preprocessed grid (per axis); 1.0 disables cropping.
    crop_fraction: float = 0.875
    flip_prob: float = 0.5
    #: Tensor axes (0 = I left-right, 1 = J posterior-anterior, 2 = K inferior-superior) that may be flipped.
    #: Left-right is off by default: captions state laterality ("left upper zone mass"), so a mirrored CT would
    #: contradict its own text.
    flip_axes: tuple[int, ...] = (1,)
    #: Augmented views of each case per epoch (views of one case are positives for the same caption).
    views_per_case: int = 1
    #: Manifest split to train on; cases need both a volume and a report.
    split: str = "train"
    seed: int = 0
    grad_clip: float = 1.0
    checkpoint_every: int = 1
    device: str = "cpu"
    #: Weight of a modality-gap penalty added to InfoNCE: the squared distance between the batch's CT centroid
    #: and its report centroid (``ctrag.evaluation.modality_gap``). 0 turns it off. InfoNCE alone only asks
    #: pairs to be closer than non-pairs, so the CT cloud can stay offset from the (frozen) report cloud.
    gap_weight: float = 0.0
    #: Soft contrastive targets (after PRIMA's soft labels): ``none`` keeps one-hot InfoNCE; ``label_jaccard``
    #: mixes in targets from the 18-label Jaccard between the batch's cases (``clip.soft_contrastive_targets``),
    #: so two CTs with the same findings are not pushed apart as hard as unrelated ones. Needs case labels.
    soft_targets: str = "none"
    #: Share of the soft target in the mix (0 = exactly the one-hot loss, 1 = soft targets only).
    soft_target_weight: float = 0.5
    #: Sharpens the Jaccard weights (``jaccard ** (1 / T)``); lower keeps only near-identical label sets.
    soft_target_temperature: float = 1.0
    #: ``Case.extra`` keys (e.g. scanner, sex): in-batch negatives are kept only among cases that agree on them
    #: (a key missing on either case does not restrict), so the tower cannot separate pairs by those shortcuts.
    same_metadata_negatives_only: tuple[str, ...] = ()
    #: Weight of the SigVLP chunk <-> region-sentence sigmoid loss (``ctrag.encoders.chunk_align``) added to the
    #: global loss; 0 turns it off. Only a SigVLP volume model has chunks; other towers refuse a weight > 0.
    chunk_align_weight: float = 0.0
    #: Voxels of a region's structures a K-slice needs (on the encoder grid) before a chunk counts as covering it.
    chunk_min_voxels: int = 8

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 2:
            raise ValueError(
                f"EncoderTrainConfig: epochs >= 0 and batch_size >= 2 required (got {self.epochs}, "
                f"{self.batch_size}); one pair per batch has no negatives"
            )
        if not 0.0 < self.crop_fraction <= 1.0 or not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError("EncoderTrainConfig: crop_fraction must be in (0, 1] and flip_prob in [0, 1]")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"EncoderTrainConfig: flip_axes must be among 0, 1, 2, got {self.flip_axes}")
        if self.gap_weight < 0:
            raise ValueError(f"EncoderTrainConfig: gap_weight must be >= 0, got {self.gap_weight}")
        if self.soft_targets not in SOFT_TARGETS:
            raise ValueError(
                f"EncoderTrainConfig: soft_targets must be one of {SOFT_TARGETS}, got {self.soft_targets!r}"
            )
        if not 0.0 <= self.soft_target_weight <= 1.0 or self.soft_target_temperature <= 0:
            raise ValueError(
                "EncoderTrainConfig: soft_target_weight must be in [0, 1] and soft_target_temperature > 0 "
                f"(got {self.soft_target_weight}, {self.soft_target_temperature})"
            )
        if self.chunk_align_weight < 0 or self.chunk_min_voxels < 1:
            raise ValueError(
                f"EncoderTrainConfig: chunk_align_weight must be >= 0 and chunk_min_voxels >= 1 (got "
                f"{self.chunk_align_weight}, {self.chunk_min_voxels})"
            )
        if self.views_per_case < 1 or self.checkpoint_every < 1:
            raise ValueError("EncoderTrainConfig: views_per_case and checkpoint_every must be >= 1")


@dataclass
class EncoderConfig:
    """The ``encoder:`` preset section."""

    text: str = "minilm"
    text_weights: str | None = None
    long_text: str = "truncate"
    text_batch_size: int = 64
    volume_model: str = "ctrag-volume-tiny"
    train: EncoderTrainConfig = field(default_factory=EncoderTrainConfig)
