"""Curation of the shipped CT-RATE train reports (real labels): coverage, budget, determinism, rarity bias."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.curation import curate, random_subset, tfidf_embeddings
from ctrag.errors import InvalidInputError
from ctrag.labels.ct_rate import read_split


@pytest.fixture(scope="module")
def train(ct_rate_dir):
    data = read_split(ct_rate_dir, "train")
    return data, tfidf_embeddings(data.texts, dims=32)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3])
def test_subset_covers_every_label_of_the_full_set(train, fraction):
    data, emb = train
    result = curate(data.labels, fraction, embeddings=emb, seed=0)
    full = data.labels.sum(axis=0) > 0
    sub = data.labels[result.indices].sum(axis=0) > 0
    assert (sub >= full).all()
    assert len(set(result.indices)) == len(result.indices) == max(result.budget, result.coverage_rows)
    assert result.budget == int(np.ceil(fraction * len(data.texts)))


def test_coverage_survives_a_label_seen_once():
    labels = np.zeros((50, 3), dtype=int)
    labels[:40, 0] = 1
    labels[10:30, 1] = 1
    labels[47, 2] = 1  # the only positive of label 2
    result = curate(labels, 0.04, seed=3)  # budget 2 rows
    assert 47 in result.indices and result.label_counts_subset[2] == 1
    assert all(c > 0 for c in result.label_counts_subset)


def test_same_seed_same_subset_and_seed_matters_for_ties(train):
    data, emb = train
    a = curate(data.labels, 0.2, embeddings=emb, seed=5)
    b = curate(data.labels, 0.2, embeddings=emb, seed=5)
    assert a.indices == b.indices
    ties = np.zeros((30, 2), dtype=int)  # every row alike: only the seed decides
    assert curate(ties, 0.2, seed=0).indices != curate(ties, 0.2, seed=1).indices


def test_rare_labels_are_enriched_against_a_random_subset(train):
    data, emb = train
    result = curate(data.labels, 0.2, embeddings=emb, seed=0)
    rand = random_subset(len(data.texts), len(result.indices), seed=0)
    counts = data.labels.sum(axis=0)
    rarest = np.argsort(counts)[:4]
    assert data.labels[result.indices][:, rarest].sum() > data.labels[rand][:, rarest].sum()


def test_bad_input_is_refused():
    with pytest.raises(InvalidInputError, match="fraction"):
        curate(np.zeros((4, 2)), 0.0)
    with pytest.raises(InvalidInputError, match="0/1"):
        curate(np.full((4, 2), 2), 0.5)
    with pytest.raises(InvalidInputError, match="embeddings"):
        curate(np.zeros((4, 2)), 0.5, embeddings=np.zeros((3, 5)))
