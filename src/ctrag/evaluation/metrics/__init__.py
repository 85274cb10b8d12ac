"""Metrics as pure functions on arrays, one module per job: retrieval (label agreement at k), text (ROUGE),
segmentation (Dice / HD95), classification (AUC, precision...), controllability (generated CT vs its proxy)."""
