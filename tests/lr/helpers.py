"""What the coordinated (test_training.py) and the arbiter-free (test_two_key.py) LR tests share: each
party's training matrix as the party prepared it, transcript decoding, and option sets."""

from __future__ import annotations

import numpy as np

from vfl.crypto import prepare_matrix
from vfl.data import Whitening
from vfl.options import FAST_CONVERGENCE, TrainOptions

SGD_L1_STEP = dict(max_epochs=3, batch_size=150, tol=0.0, optimizer="sgd", learning_rate=0.3, penalty="l1",
                   alpha=0.01, schedule="step", decay_epochs=1, init="random")  # fmt: skip
MOMENTUM_L2_FULLBATCH = dict(max_epochs=2, batch_size=None, tol=0.0, optimizer="momentum", learning_rate=0.2,
                             penalty="l2", alpha=0.1, schedule="inverse-time", decay=0.3)  # fmt: skip
#: The fast-convergence profile (whitened, SGD, round averaging, two loss checks), two fixed passes.
FAST_TWO_PASSES = {**FAST_CONVERGENCE, "max_epochs": 2, "batch_size": 128, "tol": 0.0}


def training_blocks(result, frames, id_column="id", label="y"):
    """Each party's training matrix as the party quantized it, in the shared order, plus training labels."""
    order = result.scores[id_column]
    train = ~result.scores["held_out"].to_numpy()
    names = ["guest", *[f"host{i}" for i in range(1, len(frames))]]
    blocks, maps = [], []
    for name, frame in zip(names, frames, strict=True):
        aligned = frame.set_index(id_column).loc[order].reset_index()
        shard = result.shards[name]
        x = shard.scaler().transform(aligned)
        if shard.has_intercept:
            x = np.hstack([np.ones((len(x), 1)), x])
        # The party's own preconditioner, fitted on its training rows as the party does (DESIGN.md §6).
        whitening = Whitening.fit(x[train], skip=1 if shard.has_intercept else 0)
        if TrainOptions(**shard.options).at_rows(int(train.sum())).precondition == "none":
            whitening = Whitening(np.eye(x.shape[1]))
        blocks.append(prepare_matrix(whitening.apply(x[train])).dequantized)
        maps.append(whitening)
    y = frames[0].set_index(id_column).loc[order, label].to_numpy(float)[train]
    return blocks, y, names, maps


def decoded(transcript):
    from vfl.transport import decode_table

    return [(m, decode_table(m.payload)) for m in transcript]


def float_values(table):
    values = []
    for column in table.columns:
        if column.type in ("double", "float"):
            values.extend(column.to_pylist())
    return values


def declared(tag: str) -> str:
    from vfl.protocols.catalog import ALL_PROTOCOLS, find

    found = find(ALL_PROTOCOLS, tag)
    assert found is not None, f"undeclared message {tag}"
    return found[1].name
