"""Id canonicalization, normalization, validation and hashing for PSI."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl.errors import ConfigError, DataError
from vfl.psi import POINT_DTYPE, Normalization, hash_id, hash_ids, prepare_ids


def normalized(values, **kwargs) -> list[str]:
    return prepare_ids(values, **kwargs).normalized.to_pylist()


def test_default_normalization_strips_only():
    assert Normalization() == Normalization(strip=True, casefold=False, nfkc=False)
    assert normalized([" Alice ", "\tBOB\n"]) == ["Alice", "BOB"]


def test_casefold_and_nfkc():
    norm = Normalization(casefold=True, nfkc=True)
    assert norm.apply(" ＭÜLLER ") == "müller"  # fullwidth M, then case folding
    assert norm.apply("Straße") == "strasse"
    assert norm.apply("ﬁle") == "file"  # ligature
    assert Normalization(strip=False).apply(" a ") == " a "
    assert Normalization().apply("ﬁle") == "ﬁle"


def test_settings_are_named():
    assert Normalization(casefold=True).settings() == {
        "normalization.strip": "true",
        "normalization.casefold": "true",
        "normalization.nfkc": "false",
    }
    with pytest.raises(ConfigError, match="casefold"):
        Normalization(casefold="yes")  # type: ignore[arg-type]


def test_integers_are_canonical_decimal_strings():
    assert normalized([7, np.int64(8), 9.0, "10"]) == ["7", "8", "9", "10"]
    assert normalized(pd.Series([1, 2, 3], dtype="int64")) == ["1", "2", "3"]
    assert normalized(pd.Series([1, 2, 3], dtype="Int64")) == ["1", "2", "3"]
    assert normalized(pa.array([12345678901234, 5])) == ["12345678901234", "5"]


@pytest.mark.parametrize(
    ("value", "message"),
    [(7.5, "number 7.5 at row 1"), (True, "boolean True at row 1"), (b"x", "bytes")],
)
def test_unusable_id_types(value, message):
    with pytest.raises(DataError, match=message):
        prepare_ids(["a", value], column="cid")


def test_missing_ids_name_the_row_count():
    with pytest.raises(DataError, match=r"id column 'cid': 4 of 6 rows have no id .* e\.g\. row 1"):
        prepare_ids(["a", None, float("nan"), "", "   ", "b"], column="cid")
    with pytest.raises(DataError, match="1 of 2 rows have no id"):
        prepare_ids(pd.Series([1, None], dtype="Int64"))


def test_duplicates_error_names_count_and_example():
    with pytest.raises(
        DataError, match=r"has 3 duplicate ids .* e\.g\. 'b' at rows 1 and 2; .*dedupe='first'"
    ):
        prepare_ids(["a", "b", "b", "a", " a "])


def test_duplicates_after_normalization_and_integer_forms():
    with pytest.raises(DataError, match="1 duplicate id "):
        prepare_ids(["x", 7, "7"])
    with pytest.raises(DataError, match="1 duplicate id "):
        prepare_ids(["Ab", "aB"], normalization=Normalization(casefold=True))
    assert len(prepare_ids(["Ab", "aB"])) == 2


def test_dedupe_first_keeps_first_occurrence():
    prepared = prepare_ids(["a", "b", "b", " a", "c"], dedupe="first")
    assert prepared.rows.tolist() == [0, 1, 4]
    assert prepared.normalized.to_pylist() == ["a", "b", "c"]
    assert prepared.duplicates_dropped == 2
    with pytest.raises(ConfigError, match="dedupe"):
        prepare_ids(["a"], dedupe="last")  # type: ignore[arg-type]


def test_empty_column_is_fine():
    prepared = prepare_ids([])
    assert len(prepared) == 0 and prepared.n_input == 0


def test_hash_matches_the_design_formula():
    salt = bytes(range(32))
    expected = hashlib.sha512(b"vfl/psi/v1" + salt + "é1".encode()).digest()[:32]
    assert hash_id("é1", salt) == expected
    assert hash_id("é1", bytes(32)) != expected


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), max_size=40), st.binary(min_size=16, max_size=32))
def test_hash_ids_is_hash_id_row_by_row(ids, salt):
    out = hash_ids(pa.chunked_array([pa.array(ids[:10], pa.string()), pa.array(ids[10:], pa.string())]), salt)
    assert out.dtype == POINT_DTYPE and len(out) == len(ids)
    # Raw bytes, not tolist(): NumPy would strip trailing zero bytes from S32 items.
    assert out.tobytes() == b"".join(hash_id(s, salt) for s in ids)


def test_options_from_a_job_table():
    from vfl.psi import PsiOptions

    options = PsiOptions.from_mapping(
        {"normalization": {"casefold": True}, "salt": "ab" * 16, "reveal": "guest-only"}
    )
    assert options.normalization == Normalization(strip=True, casefold=True, nfkc=False)
    assert options.salt == b"\xab" * 16 and options.reveal == "guest-only"
    assert PsiOptions.from_mapping({"nfkc": True}).normalization == Normalization(nfkc=True)
    assert PsiOptions.from_mapping({}).settings() == {
        "protocol": "vfl/psi/v1",
        "normalization.strip": "true",
        "normalization.casefold": "false",
        "normalization.nfkc": "false",
        "reveal": "all",
    }
    with pytest.raises(ConfigError, match="unknown normalization setting"):
        PsiOptions.from_mapping({"normalization": {"lower": True}})
    with pytest.raises(ConfigError, match="salt must be at least 16 bytes"):
        PsiOptions.from_mapping({"salt": "abcd"})
    with pytest.raises(ConfigError, match="chunk_size"):
        PsiOptions(chunk_size=0)
