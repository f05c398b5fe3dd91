"""The one address parser (vfl.transport.address), used by the configuration files, the CLI and the transport."""

from __future__ import annotations

import pytest

from vfl import config
from vfl.errors import ConfigError
from vfl.transport import address, flight
from vfl.transport.address import format_address, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7470", ("127.0.0.1", 7470)),
        ("bank.example.org:443", ("bank.example.org", 443)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:7470", ("::1", 7470)),
        ("[2001:db8::7]:80", ("2001:db8::7", 80)),
        ("  10.0.0.2:7471\n", ("10.0.0.2", 7471)),  # surrounding spaces are ignored
    ],
)
def test_valid_addresses(text, expected):
    assert parse_address(text) == expected
    host, port = expected
    assert parse_address(format_address(host, port)) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("localhost", "the port is missing"),
        ("localhost:", "the port is missing"),
        ("[::1]", "the port is missing"),
        (":7470", "the host is empty"),
        ("[]:7470", "the host is empty"),
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("host:70000", "port 70000 is out of range 0..65535"),
        ("host:-1", "port '-1' is not a number"),
        ("host:http", "port 'http' is not a number"),
        ("host:７４", "is not a number"),  # non-ASCII digits
        ("my host:7470", "it contains a space"),
        ("host: 7470", "it contains a space"),
        ("::1:7470", "an IPv6 host must be in brackets"),
        ("[::1:7470", "is not closed"),
        ("[localhost]:7470", "brackets are only for IPv6 hosts"),
    ],
)
def test_invalid_addresses_name_the_problem(text, why):
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    message = str(info.value)
    assert why in message
    assert "must look like HOST:PORT or [IPv6]:PORT" in message
    assert "\n" not in message


def test_error_names_where_the_address_came_from():
    with pytest.raises(
        ConfigError, match=r"^party\.toml \[network\]: address 'localhost' must look like HOST:PORT"
    ):
        parse_address("localhost", "party.toml [network]")


def test_every_call_site_uses_the_same_parser():
    assert config.parse_address is address.parse_address
    assert flight.parse_address is address.parse_address
    assert flight.format_address is address.format_address


def test_format_address_brackets_ipv6_only():
    assert format_address("::1", 7470) == "[::1]:7470"
    assert format_address("10.0.0.1", 1) == "10.0.0.1:1"
