"""``ctrag train reporter --method adarag|diffvp``: train a report model on the train split of a corpus.

Merge note: the Reg2RG branch registers its own ``train reporter``; at merge keep one command and call
:func:`train_adarag_cli` / :func:`train_diffvp_cli` from its ``--method`` dispatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctrag.cli import _shared
from ctrag.cli._app import train_app
from ctrag.errors import InvalidInputError


def train_adarag_cli(corpus: Path, out: Path, steps: int, base_lm: str | None, max_cases: int | None) -> dict:
    from ctrag.reporting.training.adarag import AdaRAGTrainConfig, save_adarag, train_adarag

    cases = [c for c in _shared.load_corpus(corpus) if c.split == "train"]
    model, bank, summary = train_adarag(cases, AdaRAGTrainConfig(steps=steps, max_cases=max_cases), base_lm=base_lm)
    save_adarag(model, bank, summary, out)
    return summary


def train_diffvp_cli(
    corpus: Path, out: Path, steps: int, text_steps: int, base_lm: str | None, pairing: str, max_cases: int | None
) -> dict:
    from ctrag.reporting.diffvp import DiffVPConfig, choose_pairing
    from ctrag.reporting.training.diffvp import DiffVPTrainConfig, save_diffvp, train_diffvp

    cases = [c for c in _shared.load_corpus(corpus) if c.split == "train"]
    pairs = [c for c in cases if c.has_volume and c.has_report]
    texts = [c for c in cases if c.has_report and not c.has_volume][:max_cases]
    cfg = DiffVPTrainConfig(steps=steps, text_steps=text_steps, model=DiffVPConfig(pairing=choose_pairing(pairing)))
    model, refs, summary = train_diffvp(pairs, texts, cfg, base_lm=base_lm)
    save_diffvp(model, refs, summary, out)
    return summary


@train_app.command("reporter")
def train_reporter_command(
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus manifest (train cases are used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    method: Annotated[str, typer.Option("--method", help="adarag or diffvp.")] = "adarag",
    steps: Annotated[int, typer.Option("--steps", help="Training steps (diffvp: paired steps).")] = 200,
    text_steps: Annotated[int, typer.Option("--text-steps", help="diffvp: text warm-up steps.")] = 100,
    pairing: Annotated[str, typer.Option("--pairing", help="diffvp: random (paper) or nearest.")] = "random",
    base_lm: Annotated[str | None, typer.Option("--base-lm", help="Local HF causal LM folder (else tiny).")] = None,
    max_cases: Annotated[int | None, typer.Option("--max-cases", help="Use at most this many report cases.")] = None,
) -> None:
    """Train an AdaRAG-CT or DiffVP report model (train split only)."""
    if method == "adarag":
        summary = train_adarag_cli(corpus, out, steps, base_lm, max_cases)
    elif method == "diffvp":
        summary = train_diffvp_cli(corpus, out, steps, text_steps, base_lm, pairing, max_cases)
    else:
        raise InvalidInputError(f"--method {method!r}: this command trains adarag or diffvp")
    summary.pop("config", None)
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
