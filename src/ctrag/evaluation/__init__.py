"""ctrag.evaluation: one home per job.

``metrics/`` (pure functions: retrieval, text, segmentation, classification, controllability), ``stats`` (Wilcoxon,
the one bootstrap), ``features`` / ``fid`` / ``classifier`` / ``volumes`` (image fidelity and clinical
consistency), ``retrieval_eval`` + ``retrieval_report`` (``ctrag evaluate retrieval``), ``generation_config``
+ ``ablation`` + ``external`` + ``generation_eval`` + ``generation_cache`` + ``tables`` + ``figures``
(``ctrag evaluate generation``).
"""
