"""The options tables (vfl/constraints.py) and the checking of every job.toml section (DESIGN.md §11)."""

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import pytest

from vfl import config as config_module
from vfl.config import JOB_SECTIONS, JobConfig, options_class
from vfl.constraints import (
    Boolean,
    Bytes,
    FolderName,
    InstanceOf,
    Interval,
    Options,
    OptionsTable,
    Sentinel,
    String,
    check_table,
    check_value,
    describe,
)
from vfl.errors import ConfigError
from vfl.options import PredictOptions, TrainOptions
from vfl.psi.ids import Normalization
from vfl.psi.options import PsiOptions

#: sha256 of the default TrainOptions (it was a4c6c600... before min_intersection and calibration, 5e4b569a... before
#: topology, model and exposure were added, 2210bd57... before the defaults averaged rounds of half a pass): parties
#: compare checkpoints by this digest, so a change to it must be deliberate.
DEFAULT_DIGEST = "3044cbdc28a6c58fe5f3a5dd3d5a7642926f4171331b13d9d6fe8f1df82602e3"


def ok(constraints, value):
    try:
        check_value("option", "x", value, constraints)
    except ConfigError:
        return False
    return True


def fails(constraints, value, message):
    with pytest.raises(ConfigError) as info:
        check_value("job option", "x", value, constraints)
    assert str(info.value) == message


# --- each kind of constraint ---------------------------------------------------------------------


def test_interval_int():
    c = [Interval(int, 1, None, closed="left")]
    assert ok(c, 1) and ok(c, 10**30)
    assert not ok(c, 0) and not ok(c, -5)
    fails(c, 2.0, "job option x must be an int in [1, inf), got 2.0")  # a float where an int is required
    fails(c, True, "job option x must be an int in [1, inf), got True")  # booleans are not ints
    fails(c, "3", "job option x must be an int in [1, inf), got '3'")
    fails(c, 1e308, "job option x must be an int in [1, inf), got 1e+308")
    assert describe([Interval(int, 0, 10, closed="both")]) == "an int in [0, 10]"
    assert describe([Interval(int, None, None)]) == "an int"


def test_interval_float_bounds_and_closedness():
    assert describe([Interval(float, 0, 1, closed="neither")]) == "a float in (0, 1)"
    assert describe([Interval(float, 0, 1, closed="left")]) == "a float in [0, 1)"
    assert describe([Interval(float, 0, 1, closed="right")]) == "a float in (0, 1]"
    assert describe([Interval(float, None, 0, closed="right")]) == "a float in (-inf, 0]"
    for closed, zero, one in (("neither", False, False), ("left", True, False), ("right", False, True), ("both", True, True)):  # fmt: skip
        c = [Interval(float, 0, 1, closed=closed)]
        assert ok(c, 0.5) and ok(c, 0) is zero and ok(c, 1) is one and ok(c, 1.0) is one
        assert not ok(c, -1e-300) and not ok(c, 1.0000001)
    c = [Interval(float, 0, None, closed="neither")]
    assert ok(c, 1) and ok(c, 0.1) and ok(c, 1e308)  # an int is a float too
    fails(c, -1, "job option x must be a float in (0, inf), got -1")


def test_interval_float_refuses_nan_inf_and_huge_ints():
    for c in ([Interval(float, 0, None, closed="left")], [Interval(float, None, None)]):
        for value in (math.nan, math.inf, -math.inf, 10**400, False):
            assert not ok(c, value), value
    assert describe([Interval(float, None, None)]) == "a finite float"
    fails(
        [Interval(float, 0, 1, closed="neither")], math.nan, "job option x must be a float in (0, 1), got nan"
    )


def test_interval_rejects_bad_declarations():
    with pytest.raises(TypeError):
        Interval(str, 0, 1)
    with pytest.raises(ValueError):
        Interval(int, 0, 1, closed="open")
    with pytest.raises(ValueError):
        Interval(int, 2, 1)


def test_options_keep_their_order_and_types():
    c = [Options(str, ("sgd", "momentum", "adam"))]
    assert ok(c, "adam") and not ok(c, "Adam")
    fails(c, "adagrad", "job option x must be one of sgd, momentum, adam, got 'adagrad'")
    assert describe([Options(str, {"b", "a"})]) == "one of a, b"  # a set is sorted
    bits = [Options(int, (1024, 2048))]
    assert ok(bits, 1024) and not ok(bits, 1024.0) and not ok(bits, "1024")
    assert not ok([Options(int, (0, 1))], True)  # True == 1 but is not an int option
    with pytest.raises(TypeError):
        Options(str, ())


def test_boolean_string_folder_name():
    assert ok([Boolean()], True) and ok([Boolean()], False)
    fails([Boolean()], 1, "job option x must be true or false, got 1")
    assert ok([String()], "") and not ok([String(1)], "") and not ok([String(1)], 3)
    assert describe([String(1)]) == "a non-empty string" and describe([String(3)]).endswith("3 characters")
    name = [FolderName()]
    assert ok(name, "train-1") and ok(name, "job.v2_final")
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "c:d", " x", "x ", "a\0b", 7):
        assert not ok(name, bad), bad


def test_bytes_hex_and_secret_values():
    c = [Bytes(16, hex=True), None]
    assert check_value("PSI option", "salt", "ab" * 16, c) == b"\xab" * 16  # hex is converted
    assert check_value("PSI option", "salt", b"k" * 16, c) == b"k" * 16
    assert check_value("PSI option", "salt", None, c) is None
    assert not ok([Bytes(16)], "ab" * 16)  # hex only where the constraint allows it
    with pytest.raises(ConfigError) as info:
        check_value("PSI option", "salt", "zz" * 16, c)
    message = str(info.value)
    assert message.startswith(
        "PSI option salt must be at least 16 bytes (or a hex string of at least 32 digits)"
    )
    assert "zz" not in message and "a string of 32 characters" in message  # a would-be secret is not printed
    with pytest.raises(ConfigError, match="got 4 bytes$"):
        check_value("PSI option", "salt", b"abcd", c)


def test_sentinel_instance_of_and_none():
    c = [Interval(int, 1, None, closed="left"), Sentinel(0, None, "full batch"), None]
    assert check_value("job option", "batch_size", 0, c) is None
    assert check_value("job option", "batch_size", None, c) is None
    assert check_value("job option", "batch_size", 64, c) == 64
    assert not ok(c, False) and not ok(c, 0.0)
    fails(c, -1, "job option x must be an int in [1, inf), 0 (full batch) or None, got -1")
    norm = [InstanceOf(Normalization, "a Normalization")]
    assert ok(norm, Normalization()) and not ok(norm, {"strip": True})
    assert not ok([Interval(int, 1, None)], None)  # None only where the list says so


def test_check_table_names_unknown_and_missing_keys():
    table = {"id": [String(1)], "kind": [Options(str, ("a", "b"))]}
    assert check_table({"id": "x", "kind": "a"}, table, "key", required=table) == {"id": "x", "kind": "a"}
    with pytest.raises(ConfigError, match=r"^unknown key\(s\) colour; known keys: id, kind$"):
        check_table({"id": "x", "colour": 1}, table, "key")
    with pytest.raises(ConfigError, match=r"^missing key kind; it must be one of a, b$"):
        check_table({"id": "x"}, table, "key", required=table)


# --- the options classes -------------------------------------------------------------------------


def test_default_digest_is_unchanged():
    assert TrainOptions().digest() == DEFAULT_DIGEST
    assert TrainOptions.from_dict({}).digest() == DEFAULT_DIGEST
    assert TrainOptions(**TrainOptions().to_dict()).digest() == DEFAULT_DIGEST
    assert TrainOptions(learning_rate=0.1).differences(TrainOptions().to_dict()) == ["learning_rate"]


def test_every_field_of_every_options_class_has_a_table_entry():
    classes = {
        options_class(kind, section) for kind, sections in JOB_SECTIONS.items() for section in sections
    }
    assert {TrainOptions, PsiOptions, PredictOptions} <= classes
    for cls in classes:
        assert issubclass(cls, OptionsTable)
        assert set(cls._parameter_constraints) == {f.name for f in dataclasses.fields(cls)}, cls


def test_train_options_errors_name_option_value_and_allowed_values():
    cases = {
        "learning_rate": (-1, "job option learning_rate must be a float in (0, inf), got -1"),
        "max_epochs": (2.5, "job option max_epochs must be an int in [1, inf), got 2.5"),
        "patience": (True, "job option patience must be an int in [1, inf), got True"),
        "tol": (math.nan, "job option tol must be a float in [0, inf), got nan"),
        "alpha": (math.inf, "job option alpha must be a float in [0, inf), got inf"),
        "test_size": (1e308, "job option test_size must be a float in (0, 1), got 1e+308"),
        "beta2": (1.0, "job option beta2 must be a float in [0, 1), got 1.0"),
        "key_bits": (4096, "job option key_bits must be one of 1024, 2048, 3072, got 4096"),
        "clip_sigma": (
            -1,
            "job option clip_sigma must be a float in [0, inf) (0 turns clipping off), got -1",
        ),
        "seed": (-3, "job option seed must be an int in [0, inf), got -3"),
        "schedule": (
            "cosine",
            "job option schedule must be one of constant, step, inverse-time, got 'cosine'",
        ),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ConfigError) as info:
            TrainOptions(**{name: value})  # direct construction (vfl.simulate(..., options=...)) is checked
        assert str(info.value) == message
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainOptions.from_dict({name: value})


def test_batch_size_zero_means_full_batch():
    assert TrainOptions(batch_size=0).batch_size is None
    assert TrainOptions.from_dict({"batch_size": 0}) == TrainOptions(batch_size=None)
    assert TrainOptions(batch_size=1).batch_size == 1


def test_unknown_train_option_lists_known_ones():
    with pytest.raises(
        ConfigError,
        match=r"^unknown job option\(s\) lerning_rate; known options: alpha, averaging, batch_size",
    ):
        TrainOptions.from_dict({"lerning_rate": 0.1})


def test_psi_options_table():
    o = PsiOptions.from_mapping({"salt": "ab" * 16, "casefold": True, "timeout": 30})
    assert o.salt == b"\xab" * 16 and o.normalization.casefold and o.timeout == 30
    assert PsiOptions(salt="cd" * 16).salt == b"\xcd" * 16
    assert PsiOptions.from_dict({"normalization": {"nfkc": True}}).normalization == Normalization(nfkc=True)
    assert PsiOptions().settings()["reveal"] == "all"
    for values, message in (
        ({"reveal": "host-only"}, "PSI option reveal must be one of all, guest-only, got 'host-only'"),
        ({"workers": 0}, "PSI option workers must be an int in [1, inf) or None, got 0"),
        ({"timeout": -1}, "PSI option timeout must be a float in (0, inf) (seconds) or None, got -1"),
        ({"chunk_size": 1.5}, "PSI option chunk_size must be an int in [1, inf), got 1.5"),
        ({"casefold": "yes"}, "PSI option casefold must be true or false, got 'yes'"),
        ({"normalization": {"strip": 1}}, "normalization setting strip must be true or false, got 1"),
        ({"normalization": {"lower": True}}, "unknown normalization setting(s) lower; known settings: casefold, nfkc, strip"),
        ({"tag": ""}, "PSI option tag must be a non-empty string, got ''"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            PsiOptions.from_mapping(values)
        assert str(info.value) == message


def test_predict_options():
    assert PredictOptions.from_dict({"model": "train-1"}) == PredictOptions("train-1", None)
    assert PredictOptions(model="m", reveal="partial").reveal == "partial"
    with pytest.raises(
        ConfigError, match=r"^predict option reveal must be one of sum, partial or None, got 'all'$"
    ):
        PredictOptions(model="m", reveal="all")
    with pytest.raises(
        ConfigError,
        match=r"^missing predict option model; it must be a folder name .*\(the id of the training job\)$",
    ):
        PredictOptions.from_dict({"reveal": "sum"})
    with pytest.raises(ConfigError, match=r"predict option model must be a folder name .*, got '\.\./other'"):
        PredictOptions.from_dict({"model": "../other"})


# --- job.toml: every section against its table ---------------------------------------------------


def write(tmp_path, text):
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def load_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        JobConfig.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message.removeprefix(str(path))


TRAIN = '[job]\nid = "j1"\nkind = "train"\n'
PREDICT = '[job]\nid = "p1"\nkind = "predict"\n'


def test_a_good_job_file_round_trips(tmp_path):
    text = TRAIN + "[psi]\ncasefold = true\n[train]\nbatch_size = 0\nlearning_rate = 1\n"
    config = JobConfig.load(write(tmp_path, text))
    assert config.train == {"batch_size": 0, "learning_rate": 1} and config.psi == {"casefold": True}
    assert JobConfig.load(write(tmp_path, config.to_toml())) == config
    assert config.options("train").batch_size is None and config.options("psi").normalization.casefold
    predict = JobConfig.load(write(tmp_path, PREDICT + '[predict]\nmodel = "j1"\nreveal = "sum"\n'))
    assert predict.options("predict") == PredictOptions("j1", "sum")
    with pytest.raises(ConfigError, match=r"a job of kind predict has no \[train\] section"):
        predict.options("train")


def test_job_section_errors_name_file_section_and_key(tmp_path):
    cases = [
        ('[job]\nid = "j1"\nkind = "train"\nowner = "me"\n', r" \[job\]: unknown key\(s\) owner; known keys: id, kind"),
        ('[job]\nid = "j1"\nkind = "stats"\n', r" \[job\]: key kind must be one of psi, train, predict(, [a-z-]+)*, got 'stats'"),
        ('[job]\nid = "a/b"\nkind = "psi"\n', r" \[job\]: key id must be a folder name .*got 'a/b'"),
        ('[job]\nkind = "psi"\n', r" \[job\]: missing key id; it must be a folder name"),
        (TRAIN + "[psi]\nlowercase = true\n", r" \[psi\]: unknown PSI option\(s\) lowercase; known options: casefold, chunk_size"),
        (TRAIN + '[psi]\ndedupe = "last"\n', r" \[psi\]: PSI option dedupe must be one of error, first, got 'last'"),
        (TRAIN + "[train]\nlerning_rate = 0.1\n", r" \[train\]: unknown job option\(s\) lerning_rate; known options: alpha"),
        (TRAIN + "[train]\nlearning_rate = -1\n", r" \[train\]: job option learning_rate must be a float in \(0, inf\), got -1$"),
        (PREDICT + '[predict]\nmodel = "j1"\nformat = "csv"\n', r" \[predict\]: unknown predict option\(s\) format; known options: model, reveal$"),
        (PREDICT + '[predict]\nmodel = "j1"\nreveal = "everything"\n', r" \[predict\]: predict option reveal must be one of sum, partial or None, got 'everything'$"),
        (PREDICT + '[predict]\nmodel = 3\n', r" \[predict\]: predict option model must be a folder name .*got 3$"),
        (PREDICT, r" \[predict\]: missing predict option model; it must be a folder name"),
    ]  # fmt: skip
    for text, pattern in cases:
        assert re.match(pattern, load_error(tmp_path, text)), (text, pattern)


def test_toml_specials_ints_floats_and_booleans(tmp_path):
    cases = [
        ("learning_rate = nan", r"learning_rate must be a float in \(0, inf\), got nan"),
        ("learning_rate = inf", r"learning_rate must be a float in \(0, inf\), got inf"),
        ("tol = -inf", r"tol must be a float in \[0, inf\), got -inf"),
        ("max_epochs = 10.0", r"max_epochs must be an int in \[1, inf\), got 10\.0"),
        ("max_epochs = true", r"max_epochs must be an int in \[1, inf\), got True"),
        ("test_size = 1e308", r"test_size must be a float in \(0, 1\), got 1e\+308"),
        (
            "batch_size = 1e308",
            r"batch_size must be an int in \[1, inf\), 0 \(full batch\) or None, got 1e\+308",
        ),
        ("key_bits = 2048.0", r"key_bits must be one of 1024, 2048, 3072, got 2048\.0"),
        ('optimizer = ["adam"]', r"optimizer must be one of sgd, momentum, adam, got \['adam'\]"),
    ]
    for line, pattern in cases:
        assert re.search(
            r"^ \[train\]: job option " + pattern + "$", load_error(tmp_path, f"{TRAIN}[train]\n{line}\n")
        )


def test_unknown_and_misplaced_sections(tmp_path):
    assert load_error(tmp_path, TRAIN + "[model]\nlayers = 3\n") == (
        ": unknown section(s) model; expected job, psi, train"
    )
    assert load_error(tmp_path, PREDICT + '[predict]\nmodel = "m"\n[train]\nseed = 1\n') == (
        ": a job of kind predict has no section(s) train; its sections are job, psi, predict"
    )
    assert load_error(tmp_path, '[job]\nid = "j"\nkind = "psi"\n[predict]\nmodel = "m"\n') == (
        ": a job of kind psi has no section(s) predict; its sections are job, psi"
    )
    assert "'train' must be a dict" in load_error(tmp_path, "train = 3\n" + TRAIN)


def test_cross_section_rule_training_needs_every_row(tmp_path):
    message = load_error(tmp_path, TRAIN + '[psi]\nreveal = "guest-only"\n')
    assert message.startswith(' [psi]: a training job needs reveal = "all"')
    JobConfig.load(write(tmp_path, '[job]\nid = "j"\nkind = "psi"\n[psi]\nreveal = "guest-only"\n'))


def test_check_validates_a_config_built_in_python():
    JobConfig(id="p", kind="predict", predict={"model": "m"}).check()
    with pytest.raises(ConfigError, match=r"^job\.toml \[predict\]: predict option reveal must be one of"):
        JobConfig(id="p", kind="predict", predict={"model": "m", "reveal": "x"}).check()
    with pytest.raises(ConfigError, match=r"^job\.toml: a job of kind psi has no section\(s\) train"):
        JobConfig(id="p", kind="psi", train={"seed": 1}).check()
    with pytest.raises(ConfigError, match=r"^job\.toml \[job\]: key kind must be one of"):
        JobConfig(id="p", kind="deep").check()


@dataclass(frozen=True)
class AudienceOptions(OptionsTable):
    size: int = 10

    _option_label: ClassVar[str] = "audience option"
    _parameter_constraints: ClassVar[dict] = {"size": [Interval(int, 1, None, closed="left")]}


def test_a_new_kind_of_job_is_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(
        config_module.JOB_SECTIONS, "audience", {"psi": PsiOptions, "audience": AudienceOptions}
    )
    head = '[job]\nid = "a1"\nkind = "audience"\n'
    config = JobConfig.load(write(tmp_path, head + "[audience]\nsize = 5\n"))
    assert config.section("audience") == {"size": 5} and config.options("audience") == AudienceOptions(5)
    assert JobConfig.load(write(tmp_path, config.to_toml())) == config
    assert re.match(
        r" \[audience\]: audience option size must be an int in \[1, inf\), got 0$",
        load_error(tmp_path, head + "[audience]\nsize = 0\n"),
    )
    assert load_error(tmp_path, head + "[train]\nseed = 1\n") == (
        ": a job of kind audience has no section(s) train; its sections are job, psi, audience"
    )
