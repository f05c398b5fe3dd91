"""The guest's matching of ``b·a·H(g)`` against ``a·b·H(h)`` equals ``np.intersect1d`` (without its memory)."""

from __future__ import annotations

import numpy as np
import pytest

from vfl.errors import ProtocolError
from vfl.protocols.psi import _gather
from vfl.psi.hashing import POINT_DTYPE
from vfl.psi.matching import match_points


def _points(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(32 * n), dtype=POINT_DTYPE).copy()


def _reference(mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, i, j = np.intersect1d(mine, theirs, return_indices=True)
    keep = np.argsort(i)
    return i[keep], j[keep]


@pytest.mark.parametrize(
    "n_mine, n_theirs, shared", [(0, 5, 0), (5, 0, 0), (1, 1, 1), (500, 700, 300), (4000, 10, 10)]
)
def test_match_points_equals_intersect1d(n_mine, n_theirs, shared):
    rng = np.random.default_rng(n_mine + n_theirs)
    common = _points(rng, shared)
    mine = np.concatenate([common, _points(rng, n_mine - shared)])[rng.permutation(n_mine)]
    theirs = np.concatenate([common, _points(rng, n_theirs - shared)])[rng.permutation(n_theirs)]
    i, j = match_points(mine, theirs)
    ri, rj = _reference(mine, theirs)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(j, rj)
    for block in (1, 7, 64):  # looked up in blocks: the same answer
        bi, bj = match_points(mine, theirs, block=block)
        np.testing.assert_array_equal(bi, ri)
        np.testing.assert_array_equal(bj, rj)
    assert len(i) == shared and (mine[i] == theirs[j]).all()


def test_points_sharing_their_first_8_bytes_still_match_exactly():
    """A 64-bit key collision (two different points with the same prefix) takes the exact path."""
    rng = np.random.default_rng(3)
    theirs = _points(rng, 50)
    raw = theirs.view(np.uint8).reshape(-1, 32)
    raw[7, :8] = raw[8, :8]  # points 7 and 8 now share their sort key
    mine = theirs[[8, 7, 1, 30]].copy()
    i, j = match_points(np.concatenate([mine, _points(rng, 5)]), theirs)
    np.testing.assert_array_equal(i, [0, 1, 2, 3])
    np.testing.assert_array_equal(j, [8, 7, 1, 30])


def test_a_point_repeated_by_a_peer_matches_once_as_intersect1d_does():
    rng = np.random.default_rng(4)
    theirs = _points(rng, 20)
    mine = theirs[[2, 2, 5]].copy()
    i, j = match_points(mine, theirs)
    ri, rj = _reference(mine, theirs)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(j, rj)


def test_gather_refuses_more_points_than_announced():
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(_gather(4, iter([_points(rng, 0), rng_pts := _points(rng, 4)])), rng_pts)
    with pytest.raises(ProtocolError, match="more than the 3 points"):
        _gather(3, iter([_points(rng, 2), _points(rng, 2)]))
