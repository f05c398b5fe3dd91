"""What DaskBackend ships: integer lists as one fixed-width buffer, given back as the same values and types."""

from __future__ import annotations

import random

from gmpy2 import mpz

from vfl.compute import PACK_MIN_ITEMS, LastPacked, Packed, call_packed, pack
from vfl.crypto import _kernels


def test_lists_of_mpz_or_int_pack_to_one_buffer_and_back():
    rng = random.Random(1)
    for kind, width_bits in ((mpz, 4096), (int, 2048), (mpz, 7)):
        values = [kind(rng.getrandbits(width_bits)) for _ in range(100)] + [kind(0)]
        packed = pack(values)
        assert isinstance(packed, Packed) and isinstance(packed.data, bytes)
        assert len(packed.data) == packed.width * len(values)
        back = packed.unpack()
        assert back == values and all(type(v) is kind for v in back)


def test_a_list_given_again_is_packed_once_and_a_changed_one_again():
    rng = random.Random(3)
    values = [mpz(rng.getrandbits(4096)) for _ in range(64)]
    packer = LastPacked()
    first = packer(values)
    assert packer(values) is first and packer(list(values)) is first  # the same values: the same buffer
    changed = values[:-1] + [values[-1] + 1]
    again = packer(changed)
    assert again is not first and again.unpack() == changed
    values[0] += 1  # a list changed in place is packed again, not taken from the cache
    assert packer(values).unpack() == values
    assert packer([mpz(1)] * 3) is None and packer(values).unpack() == values


def test_what_cannot_be_packed_travels_as_it_is():
    assert pack([mpz(1)] * (PACK_MIN_ITEMS - 1)) is None  # short lists: not worth it
    assert pack([mpz(-5)] * PACK_MIN_ITEMS) is None  # negative values
    assert pack([mpz(1), 2] * PACK_MIN_ITEMS) is None  # mixed types
    assert pack([b"x"] * PACK_MIN_ITEMS) is None
    assert pack((mpz(1),) * PACK_MIN_ITEMS) is None  # only lists
    assert pack(mpz(7)) is None


def test_a_chunk_function_called_through_the_wire_format_gives_the_same_result():
    """The worker side: arguments unpacked, the list of ciphertexts packed; the caller unpacks it."""
    rng = random.Random(2)
    n = mpz(rng.getrandbits(512) | 1)
    n2 = n * n
    cts = [mpz(rng.getrandbits(1000)) for _ in range(40)]
    exps = [rng.randrange(1 << 16) for _ in range(40)]
    direct = _kernels.signed_powers(cts, exps, n2)
    out = call_packed(_kernels.signed_powers, pack(cts), pack(exps), n2)
    assert isinstance(out, Packed) and out.unpack() == direct
