"""Linear and Poisson regression trained by the coordinated protocol (protocols/objectives.py).

Each federated run must equal the numpy reference trainer on the joined data (vfl/models/reference.py)
to 1e-6, with the matrices each party really multiplied (its quantized columns); messages must be the
declared ones, and the hosts' ledgers must not claim anything about labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vfl
from tests.lr.helpers import training_blocks
from tests.test_declared_messages import _run, assert_all_declared
from vfl.crypto import generate_keypair
from vfl.errors import ConfigError, DataError
from vfl.models.kinds import from_name
from vfl.models.reference import train_linear_reference, train_poisson_reference
from vfl.options import TrainOptions
from vfl.parties.common import Job


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


def _frames(fate, name: str, rows: int | None = None):
    guest = pd.read_csv(fate / f"{name}_hetero_guest.csv")
    host = pd.read_csv(fate / f"{name}_hetero_host.csv")
    if rows is not None:
        guest, host = guest.iloc[:rows], host.iloc[:rows]
    return guest, host


def _blocks(result, frames, id_column, label, exposure=None):
    """Each party's training matrix as it quantized it (tests/lr/helpers.py), labels and the exposure."""
    blocks, y, names, _ = training_blocks(result, frames, id_column, label)
    train = ~result.scores["held_out"].to_numpy()
    guest = frames[0].set_index(id_column).loc[result.scores[id_column]]
    e = guest[exposure].to_numpy(float)[train] if exposure else None
    return blocks, y, e, names


def test_linear_regression_equals_the_reference(fate, keypair):
    guest, host = _frames(fate, "student")
    opts = dict(model="linear", optimizer="sgd", learning_rate=0.5, batch_size=0, max_epochs=3, tol=0.0)
    result = vfl.simulate(guest, host, id="id", label="y", key_bits=1024, keypair=keypair, workers=1, **opts)
    blocks, y, _, names = _blocks(result, [guest, host], "id", "y")
    weights, losses = train_linear_reference(blocks, y, TrainOptions(**opts), names)
    np.testing.assert_allclose(result.shards["guest"].weight_vector, weights[0], atol=1e-6)
    np.testing.assert_allclose(result.shards["host1"].weight_vector, weights[1], atol=1e-6)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    assert result.shards["guest"].model_kind == "linear" == result.shards["host1"].model_kind
    assert {"rmse", "mae", "r2"} <= set(result.metrics)
    # The guest's predictions are X w over all parties: identical to the reference's on the same rows.
    seen = assert_all_declared(result.network, Job("t", "guest", ("host1",), "arbiter"))
    assert {"lr.u", "lr.d", "lr.wg", "lr.masked", "lr.loss"} <= seen and "lr.expu" not in seen
    assert "labels" in result.ledgers["host1"].never_learns


def test_poisson_regression_with_exposure_equals_the_reference(fate, keypair):
    guest, host = _frames(fate, "dvisits", rows=700)
    guest = guest.assign(months=1.0 + (guest["id"] % 3))  # a synthetic exposure column at the guest
    opts = dict(model="poisson", exposure="months", optimizer="sgd", learning_rate=0.3, batch_size=0,
                max_epochs=3, tol=0.0)  # fmt: skip
    result = vfl.simulate(
        guest, host, id="id", label="doctorco", key_bits=1024, keypair=keypair, workers=1, **opts
    )
    blocks, y, e, names = _blocks(result, [guest, host], "id", "doctorco", exposure="months")
    assert result.shards["guest"].columns[1:] == ["hscore", "chcond1", "chcond2"]  # exposure is no feature
    weights, losses = train_poisson_reference(blocks, y, TrainOptions(**opts), names, exposure=e)
    np.testing.assert_allclose(result.shards["guest"].weight_vector, weights[0], atol=1e-6)
    np.testing.assert_allclose(result.shards["host1"].weight_vector, weights[1], atol=1e-6)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    seen = assert_all_declared(result.network, Job("t", "guest", ("host1",), "arbiter"))
    assert {"lr.u", "lr.expu", "lr.d"} <= seen and "lr.wg" not in seen
    assert {"mean_poisson_deviance", "mae"} <= set(result.metrics)

    # Scoring new rows with the model: exp(z + log exposure), the exposure read from the guest's data.
    job = Job("p", "guest", ("host1",), "arbiter", kind="predict", model="t")
    network, outcome = _run(job, {"guest": guest, "host1": host}, model_of=result.shards)
    scores = outcome["guest"].result.set_index("id")["score"]
    trained = result.scores.set_index("id")["score"]
    np.testing.assert_allclose(scores.loc[trained.index], trained, rtol=1e-6)
    assert "predict.partial" in assert_all_declared(network, job)


def _equals_the_reference(reference, guest, hosts, label, opts, loss_rtol, **simulate):
    """Train federated, then check every party's weights (1e-6) and the losses against ``reference``."""
    result = vfl.simulate(guest, hosts, id="id", label=label, key_bits=1024, workers=1, **opts, **simulate)
    blocks, y, _, names = _blocks(result, [guest, *hosts], "id", label)
    weights, losses = reference(blocks, y, TrainOptions(**opts), names)
    for name, w in zip(names, weights, strict=True):
        np.testing.assert_allclose(result.shards[name].weight_vector, w, atol=1e-6)
    np.testing.assert_allclose(result.losses, losses, rtol=loss_rtol)
    return result


def test_poisson_with_two_hosts_chains_their_exponentials(fate, keypair):
    """Two hosts: host 1 sends [[exp(u_1)]] to host 2 (lr.chain), host 2 raises it to exp(u_2) and sends the
    product to the guest; the weights equal the reference on the three blocks."""
    guest, host = _frames(fate, "dvisits", rows=500)
    first = host[["id", "sex", "age", "agesq", "income"]]
    second = host[["id", "levyplus", "freepoor", "freerepa", "illness", "actdays"]]
    opts = dict(model="poisson", optimizer="sgd", learning_rate=0.3, batch_size=0, max_epochs=3, tol=0.0)
    result = _equals_the_reference(
        train_poisson_reference, guest, [first, second], "doctorco", opts, 1e-6, keypair=keypair
    )
    job = Job("t", "guest", ("host1", "host2"), "arbiter")
    seen = assert_all_declared(result.network, job)
    assert {"lr.u", "lr.expu", "lr.chain", "lr.d"} <= seen
    sent = {(t.sender, t.receiver, t.tag.rsplit("/", 1)[1]) for t in result.network.transcript}
    assert ("host1", "host2", "chain") in sent and ("host2", "guest", "expu") in sent
    assert ("host1", "guest", "expu") not in sent and ("host2", "host1", "chain") not in sent
    assert "labels" in result.ledgers["host2"].never_learns
    assert any("exp(partial score)" in item for item in result.ledgers["host2"].learns)


def test_regression_targets_are_checked_before_any_peer_is_contacted(fate, keypair):
    guest, host = _frames(fate, "student", rows=200)
    text = guest.assign(y=guest["y"].astype(str).where(guest.index != 3, "n/a"))
    with pytest.raises(DataError, match=r"label column 'y'.*numeric"):
        vfl.simulate(text, host, id="id", label="y", key_bits=1024, keypair=keypair, model="linear")
    negative = guest.assign(y=guest["y"] - 5)
    with pytest.raises(DataError, match=r"counts, but row \d+ holds the negative value"):
        vfl.simulate(negative, host, id="id", label="y", key_bits=1024, keypair=keypair, model="poisson")
    with pytest.raises(DataError, match="exposure column 'x0' must hold a positive number"):
        vfl.simulate(
            guest.assign(x0=guest["x0"] - 100), host, id="id", label="y", key_bits=1024, keypair=keypair,
            model="poisson", exposure="x0",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="exposure is only for model"):
        TrainOptions(model="linear", exposure="x0")
    with pytest.raises(ConfigError, match="model must be one of"):
        TrainOptions(model="ridge")
    hosts = [host.rename(columns=lambda c, i=i: c if c == "id" else f"{c}_{i}") for i in range(5)]
    with pytest.raises(ConfigError, match="at most 4 hosts"):
        vfl.simulate(guest.assign(y=guest["y"].round()), hosts, id="id", label="y", key_bits=1024, keypair=keypair,
                     model="poisson")  # fmt: skip


@pytest.mark.slow
def test_federated_linear_regression_reaches_scikit_learns_rmse(fate, keypair):
    """student: held-out RMSE within 1 % of LinearRegression on the same split."""
    from sklearn.linear_model import LinearRegression

    guest, host = _frames(fate, "student")
    result = vfl.simulate(
        guest, host, id="id", label="y", key_bits=1024, keypair=keypair, model="linear", optimizer="sgd",
        learning_rate=0.5, batch_size=0, max_epochs=30, tol=0.0, workers=1,
    )  # fmt: skip
    joined = guest.merge(host, on="id").set_index("id").loc[result.scores["id"]]
    held = result.scores["held_out"].to_numpy()
    x = joined.drop(columns=["y"]).to_numpy(float)
    sk = LinearRegression().fit(x[~held], joined["y"].to_numpy()[~held])
    theirs = from_name("linear").evaluate(joined["y"].to_numpy()[held], sk.predict(x[held]))["rmse"]
    # Not worse than 1 % above scikit-learn's (clipping and the L2 penalty may make it a little better).
    assert result.metrics["rmse"] <= 1.01 * theirs, (result.metrics["rmse"], theirs)


@pytest.mark.slow
def test_federated_poisson_regression_reaches_scikit_learns_deviance(fate, keypair):
    """dvisits: held-out mean Poisson deviance within 2 % of PoissonRegressor on the same split.

    It was 4 % worse while the intercept started at 0 (a rate of 1 where the mean is 0.3): 30 epochs did
    not get there. The numpy reference on the parties' own (log-compressed, clipped) columns matches
    scikit-learn on them to 0.01 % when run to convergence, so the preprocessing was not the cause; the
    guest's intercept now starts at log(mean y) (``null_intercept``), as scikit-learn's does."""
    from sklearn.linear_model import PoissonRegressor

    guest, host = _frames(fate, "dvisits")
    result = vfl.simulate(
        guest, host, id="id", label="doctorco", key_bits=1024, keypair=keypair, model="poisson",
        optimizer="sgd", learning_rate=0.5, batch_size=0, max_epochs=30, tol=0.0, workers=1,
    )  # fmt: skip
    joined = guest.merge(host, on="id").set_index("id").loc[result.scores["id"]]
    held = result.scores["held_out"].to_numpy()
    x = joined.drop(columns=["doctorco"]).to_numpy(float)
    x = (x - x[~held].mean(axis=0)) / x[~held].std(axis=0)
    y = joined["doctorco"].to_numpy()
    sk = PoissonRegressor(alpha=1e-4, max_iter=1000).fit(x[~held], y[~held])
    theirs = from_name("poisson").evaluate(y[held], sk.predict(x[held]))["mean_poisson_deviance"]
    ours = result.metrics["mean_poisson_deviance"]
    assert ours <= 1.02 * theirs, (ours, theirs)


def _four_classes(n=600, seed=0):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=10, n_informative=6, n_classes=4, random_state=seed)
    ids = np.arange(n) * 7 + 3
    guest = pd.DataFrame(x[:, :4], columns=[f"g{i}" for i in range(4)]).assign(id=ids, y=y)
    host = pd.DataFrame(x[:, 4:], columns=[f"h{i}" for i in range(6)]).assign(id=ids)
    return guest, host


def _multiclass_equals_the_reference(guest, host, keypair, k, opts):
    """Train K classes federated, check weights and losses against the one-vs-rest reference (1e-6)."""
    from vfl.models.reference import train_ovr_reference

    result = vfl.simulate(guest, host, id="id", label="y", key_bits=1024, keypair=keypair, workers=1, **opts)
    blocks, y, _, names = _blocks(result, [guest, host], "id", "y")
    weights, losses = train_ovr_reference(blocks, y.astype(int), k, TrainOptions(**opts), names)
    np.testing.assert_allclose(np.asarray(result.shards["guest"].weights), weights[0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(result.shards["host1"].weights), weights[1], atol=1e-6)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    return result, y


def test_multiclass_packed_training_equals_the_one_vs_rest_reference(keypair):

    guest, host = _four_classes()
    opts = dict(model="multiclass-lr", max_epochs=3, batch_size=150, learning_rate=0.1, tol=0.0)
    result, y = _multiclass_equals_the_reference(guest, host, keypair, 4, opts)
    m = result.metrics
    assert {"accuracy", "f1_macro", "f1_micro", "log_loss", "auc_ovr"} <= set(m)
    assert (
        np.asarray(m["confusion_matrix"]).shape == (4, 4)
        and np.sum(m["confusion_matrix"]) == m["held_out_rows"]
    )

    # One packed ciphertext per row and batch from the host, one masked gradient message per party and batch.
    job = Job("t", "guest", ("host1",), "arbiter")
    seen = assert_all_declared(result.network, job)
    assert {"lr.classes", "lr.kloss", "lr.u", "lr.d", "lr.masked"} <= seen and "lr.loss" not in seen
    u = [t for t in result.network.transcript if t.tag.endswith("/u") and t.sender == "host1"]
    assert len(u) == 3 * 3  # 3 epochs x batches of 150, 150 and 180 (the rest folded in) of 480 rows
    from vfl.transport import decode_table

    assert decode_table(u[0].payload).num_rows == 150  # K = 4 partial scores per row in one ciphertext
    assert "the number of classes of a multi-class model" in result.ledgers["host1"].learns

    # Scoring: K masked partial scores per row; the predicted class and one probability per class.
    pjob = Job("p", "guest", ("host1",), "arbiter", kind="predict", model="t")
    network, outcome = _run(pjob, {"guest": guest, "host1": host}, model_of=result.shards)
    scored = outcome["guest"].result.set_index("id")
    trained = result.scores.set_index("id")
    np.testing.assert_allclose(scored.loc[trained.index, "p_2"], trained["p_2"], rtol=1e-6)
    assert (scored.loc[trained.index, "score"] == trained["score"]).all()


def test_multiclass_bad_labels_are_refused(keypair):
    guest, host = _four_classes(300)
    with pytest.raises(DataError, match="one class only"):
        vfl.simulate(guest.assign(y=2), host, id="id", label="y", key_bits=1024, keypair=keypair,
                     model="multiclass-lr")  # fmt: skip
    many = guest.assign(y=np.arange(len(guest)) % 17)
    with pytest.raises(DataError, match="supports at most 16"):
        vfl.simulate(many, host, id="id", label="y", key_bits=1024, keypair=keypair, model="multiclass-lr")
    words = guest.assign(y=np.where(guest["y"] == 0, "cat", "dog"))
    with pytest.raises(DataError, match="numeric class codes"):
        vfl.simulate(words, host, id="id", label="y", key_bits=1024, keypair=keypair, model="multiclass-lr")


def test_outputs_per_kind_metrics_json_and_report(keypair, tmp_path):
    import json

    guest, host = _four_classes(400)
    vfl.simulate(
        guest, host, id="id", label="y", key_bits=1024, keypair=keypair, workers=1, model="multiclass-lr",
        max_epochs=2, batch_size=0, output_dir=tmp_path / "mc",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "mc" / "guest" / "metrics.json").read_text())
    assert metrics["model"] == "multiclass-lr" and len(metrics["metrics"]["confusion_matrix"]) == 4
    html = (tmp_path / "mc" / "guest" / "report.html").read_text()
    assert "Confusion matrix" in html and "One-vs-rest AUC" in html and "data:image/png;base64," in html
    scores = pd.read_csv(tmp_path / "mc" / "guest" / "scores.csv")
    assert {"score", "p_0", "p_3", "target", "held_out"} <= set(scores.columns)
    shard = json.loads((tmp_path / "mc" / "host1" / "model.json").read_text())
    assert shard["model_kind"] == "multiclass-lr" and np.asarray(shard["weights"]).shape == (6, 4)

    lin = guest.assign(y=guest["g0"] * 3 + 1)
    vfl.simulate(
        lin, host, id="id", label="y", key_bits=1024, keypair=keypair, workers=1, model="linear",
        max_epochs=2, batch_size=0, output_dir=tmp_path / "lin",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "lin" / "guest" / "metrics.json").read_text())
    assert {"rmse", "mae", "r2"} <= set(metrics["metrics"]) and len(metrics["losses"]) == 2
    assert "Predicted against actual" in (tmp_path / "lin" / "guest" / "report.html").read_text()


def test_multiclass_beyond_one_ciphertext_equals_the_reference(keypair):
    """K = 6 with a 1024-bit key (8 slots, but the loss of c classes needs 2c - 1 of them, so at most 4 per
    ciphertext): two ciphertexts of 3 classes per row, every message still one per party and batch."""
    from vfl.optim import epoch_batches
    from vfl.protocols.lr_multiclass import slot_layout
    from vfl.transport import decode_table

    guest, host = _four_classes(500)
    guest = guest.assign(y=np.where(guest["g0"] > 1.0, 4, np.where(guest["g1"] > 1.0, 5, guest["y"])))
    opts = dict(model="multiclass-lr", max_epochs=2, batch_size=150, learning_rate=0.1, tol=0.0)
    groups = slot_layout(TrainOptions(**opts), 400, 6, 1024)
    assert (groups.groups, groups.per, groups.layout.k_classes) == (2, 3, 6)
    result, y = _multiclass_equals_the_reference(guest, host, keypair, 6, opts)
    seen = assert_all_declared(result.network, Job("t", "guest", ("host1",), "arbiter"))
    assert {"lr.classes", "lr.kloss", "lr.u", "lr.d", "lr.masked"} <= seen
    sent = [t for t in result.network.transcript if t.sender == "host1"]
    u = [t for t in sent if t.tag.endswith("/u")]
    masked = [t for t in sent if t.tag.endswith("/g/masked")]
    batches = len(epoch_batches(len(y), TrainOptions(**opts), 0))
    assert len(u) == len(masked) == 2 * batches  # one of each per epoch and batch
    assert decode_table(u[0].payload).num_rows == 2 * 150  # two ciphertexts per row
    assert decode_table(masked[0].payload).num_rows == 2 * 6  # two per column of the host's 6


def test_arbiter_free_linear_regression_equals_the_reference(fate, keypair):
    """Two keys, no arbiter (DESIGN.md §15): the guest's part is a = u_g - y, the gradient X^T d / m; the
    weights and losses equal the reference, and the kinds it cannot train are refused before PSI."""
    guest, host = _frames(fate, "student", rows=300)
    first, second = host.iloc[:, :6], host[["id", *host.columns[6:]]]
    keys = {"guest": keypair, "host1": generate_keypair(1024), "host2": generate_keypair(1024)}
    opts = dict(model="linear", optimizer="sgd", learning_rate=0.3, batch_size=100, max_epochs=2, tol=0.0)
    result = _equals_the_reference(  # the loss goes through the two-key fixed-point sums: 1e-4
        train_linear_reference,
        guest,
        [first, second],
        "y",
        opts,
        1e-4,
        topology="arbiter-free",
        keypairs=keys,
    )
    assert "arbiter" not in result.ledgers and {"rmse", "mae", "r2"} <= set(result.metrics)
    seen = assert_all_declared(result.network, Job("t", "guest", ("host1", "host2"), None))
    assert {"lr2.a", "lr2.u", "lr2.masked", "lr2.loss-part"} <= seen
    with pytest.raises(
        ConfigError, match="arbiter-free training fits model = 'binary-lr', 'linear', 'multiclass"
    ):
        vfl.simulate(guest.assign(y=guest["y"].round() % 3), host, id="id", label="y", key_bits=1024,
                     topology="arbiter-free", keypairs=keys, model="poisson")  # fmt: skip
