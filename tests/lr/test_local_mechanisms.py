"""Options, optimizers, batching, preprocessing and metrics: the local parts every party runs."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from tests.lr.reference import train_reference
from vfl.data import Preprocessor, binary_labels, load_table, require_columns
from vfl.errors import ConfigError, DataError
from vfl.metrics import evaluate, lift_table
from vfl.optim import ShardOptimizer, epoch_batches
from vfl.options import TrainOptions


def test_options_validate_and_hash():
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, momentum, adam, got 'adagrad'"):
        TrainOptions(optimizer="adagrad")
    with pytest.raises(ConfigError, match="unknown job option.*learnin_rate"):
        TrainOptions.from_dict({"learnin_rate": 0.1})
    a, b = TrainOptions(), TrainOptions(learning_rate=0.1)
    assert a.digest() != b.digest() and a.digest() == TrainOptions().digest()
    assert a.differences(b.to_dict()) == ["learning_rate"]


def test_batches_cover_every_row_once_and_repeat_by_seed():
    o = TrainOptions(batch_size=64, seed=3, loss_checks=1)
    batches = epoch_batches(1000, o, epoch=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert min(len(b) for b in batches) >= 32
    assert all(np.array_equal(x, y) for x, y in zip(batches, epoch_batches(1000, o, 2), strict=True))
    assert not np.array_equal(batches[0], epoch_batches(1000, o, 3)[0])
    assert len(epoch_batches(50, TrainOptions(batch_size=None), 0)) == 1


def test_l1_proximal_step_zeroes_small_weights_but_not_intercept():
    o = TrainOptions(optimizer="sgd", penalty="l1", alpha=1.0, learning_rate=0.1)
    opt = ShardOptimizer(o, 3, intercept_index=0)
    w = opt.update(np.array([0.05, 0.05, 1.0]), np.zeros(3), epoch=0)
    np.testing.assert_allclose(w, [0.05, 0.0, 0.9])


def test_reference_trainer_matches_sklearn_auc_on_breast(fate):
    g = pd.read_csv(fate / "breast_hetero_guest.csv")
    h = pd.read_csv(fate / "breast_hetero_host.csv")
    y = g["y"].to_numpy(float)
    xg = Preprocessor.fit(g.drop(columns=["id", "y"])).transform(g.drop(columns=["id", "y"]))
    xh = Preprocessor.fit(h.drop(columns=["id"])).transform(h.drop(columns=["id"]))
    blocks = [np.hstack([np.ones((len(y), 1)), xg]), xh]
    weights, losses = train_reference(blocks, y, TrainOptions(batch_size=128), ["g", "h"])
    scores = sum(b @ w for b, w in zip(blocks, weights, strict=True))
    sk = LogisticRegression(max_iter=1000).fit(np.hstack([xg, xh]), y)
    assert losses[-1] < losses[0]
    assert roc_auc_score(y, scores) > roc_auc_score(y, sk.decision_function(np.hstack([xg, xh]))) - 0.005


def test_preprocessor_imputes_encodes_scales_clips_and_round_trips():
    frame = pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, 100.0] * 5,
            "color": ["red", "blue", None, "red"] * 5,
            "n": ["1", "2", "3", "4"] * 5,
        }
    )
    pre = Preprocessor.fit(frame, clip_sigma=1.5)
    assert pre.imputed == {"a": 5}
    assert pre.output_names == ["a", "color=blue", "color=red", "n"]
    x = pre.transform(frame)
    assert x.shape == (20, 4) and np.abs(x).max() <= 1.5
    np.testing.assert_allclose(Preprocessor.from_dict(pre.to_dict()).transform(frame), x)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"a": [np.nan, np.nan]}), "column 'a' has no values"),
        (pd.DataFrame({"a": [1.0, 1.0, 1.0]}), "'a' are constant"),
        (pd.DataFrame({"t": [f"v{i}" for i in range(50)]}), "'t' \\(50 values\\)"),
        (pd.DataFrame({"a": [1.0, np.inf]}), "column 'a' has 1 infinite"),
    ],
)
def test_preprocessor_rejects_unusable_columns(frame, message):
    with pytest.raises(DataError, match=message):
        Preprocessor.fit(frame)


def test_labels_and_columns_and_files(tmp_path):
    # Two words: the positive class must be named (vfl does not guess which word is the outcome).
    with pytest.raises(
        DataError, match=r"label column 'y' has the values no, yes: say which one is the positive"
    ):
        binary_labels(pd.Series(["no", "yes", "no"]), column="y")
    assert binary_labels(pd.Series(["no", "yes", "no"]), column="y", positive="yes").tolist() == [0, 1, 0]
    assert binary_labels(pd.Series([True, False]), column="y").tolist() == [1, 0]
    assert binary_labels(pd.Series([1, 0, 1]), column="y").tolist() == [1, 0, 1]
    with pytest.raises(DataError, match=r"positive class 'maybe' is not a value of label column 'y'"):
        binary_labels(pd.Series(["no", "yes"]), column="y", positive="maybe")
    with pytest.raises(DataError, match="label column 'y' must have exactly two distinct values, found 3"):
        binary_labels(pd.Series([0, 1, 2]), column="y")
    with pytest.raises(DataError, match="has no column 'yy'; columns present: id, y"):
        require_columns(pd.DataFrame(columns=["id", "y"]), ["yy"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_table(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown type '.xlsx'"):
        (tmp_path / "a.xlsx").write_text("x")
        load_table(tmp_path / "a.xlsx")


def test_metrics_against_known_values():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    ev = evaluate(labels, scores)
    assert ev.metrics["auc"] == pytest.approx(0.75)
    assert ev.metrics["ks"] == pytest.approx(0.5)
    assert ev.metrics["accuracy"] == pytest.approx(0.75)
    table = lift_table(np.array([1, 0] * 50), np.linspace(1, 0, 100), bins=10)
    assert table["rows"].sum() == 100 and table["cumulative_gain"].iloc[-1] == pytest.approx(1.0)
