"""Log probabilities of generated tokens, from the model's raw logits.

They are the model's own distribution at each position (a log-softmax of the logits
row), before temperature, top-k/top-p and any grammar: what OpenAI's API reports.
Computed only for requests that ask, since each costs a pass over the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    token_bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token, its log probability and the most likely alternatives."""

    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[TopLogprob, ...] = ()


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def token_logprob(
    row: npt.NDArray[np.float32], token: int, top: int, pieces: list[bytes]
) -> TokenLogprob:
    """The entry for ``token`` sampled from logits ``row`` with ``top`` alternatives."""
    values = row.astype(np.float64)
    peak = float(values.max())
    log_total = peak + float(np.log(np.exp(values - peak).sum()))
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(values, -top)[-top:]
        best = best[np.argsort(-values[best], kind="stable")]
        alternatives = tuple(
            TopLogprob(_text(pieces[i]), float(values[i] - log_total), pieces[i])
            for i in (int(b) for b in best)
        )
    piece = pieces[token]
    return TokenLogprob(_text(piece), float(values[token] - log_total), piece, alternatives)
