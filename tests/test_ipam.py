"""ipam.allocate and address_int on values: the lowest free address, counted in integers."""

import ipaddress

import pytest

from minidock import errors, ipam

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network


@pytest.mark.parametrize("subnet, gateway, used, ip_range, expected", [
    ("172.18.0.0/16", "172.18.0.1", [], None, "172.18.0.2"),
    ("172.18.0.0/16", "172.18.0.1", ["172.18.0.2", "172.18.0.3"], None, "172.18.0.4"),
    ("172.18.0.0/16", "172.18.0.1", ["172.18.0.3"], None, "172.18.0.2"),      # a hole is reused
    ("172.18.0.0/16", "172.18.0.1", [], "172.18.5.0/24", "172.18.5.1"),       # IPRange: its hosts
    ("172.18.0.0/16", "172.18.5.1", [], "172.18.5.0/24", "172.18.5.2"),       # gateway inside it
    ("10.0.0.0/24", "10.0.0.254", [], None, "10.0.0.1"),                      # gateway elsewhere
    ("10.0.0.0/30", "10.0.0.1", [], None, "10.0.0.2"),
    ("10.0.0.0/24", "10.0.0.1", [], "10.0.0.8/31", "10.0.0.8"),               # /31: both usable
    ("10.0.0.0/24", "10.0.0.1", ["10.0.0.8"], "10.0.0.8/31", "10.0.0.9"),
    ("10.0.0.0/24", "10.0.0.1", [], "10.0.0.7/32", "10.0.0.7"),
])
def test_allocate(subnet, gateway, used, ip_range, expected):
    # `used` as integers (what the networks backend passes) and as IPv4Address objects
    for form in (ipam.address_int, A):
        got = ipam.allocate(N(subnet), A(gateway), [form(u) for u in used],
                            N(ip_range) if ip_range else None)
        assert got == A(expected) and isinstance(got, A)


@pytest.mark.parametrize("subnet, used", [
    ("10.0.0.0/30", ["10.0.0.2"]),          # .1 gateway, .2 taken, .0/.3 network/broadcast
    ("10.0.0.0/29", ["10.0.0.%d" % i for i in range(2, 7)]),
])
def test_allocate_exhausted(subnet, used):
    with pytest.raises(errors.Unavailable):
        ipam.allocate(N(subnet), A("10.0.0.1"), [ipam.address_int(u) for u in used])


def test_allocate_at_a_thousand_is_the_first_hole():
    used = [ipam.address_int(str(A("172.17.0.2") + i)) for i in range(1000) if i != 700]
    assert ipam.allocate(N("172.17.0.0/16"), A("172.17.0.1"), used) == A("172.17.0.2") + 700


@pytest.mark.parametrize("text", ["0.0.0.0", "10.0.0.1", "172.17.255.254", "255.255.255.255"])
def test_address_int_is_ipaddress_int(text):
    assert ipam.address_int(text) == int(A(text))


@pytest.mark.parametrize("address, error", [
    ("172.18.0.2", errors.Conflict),        # taken
    ("172.18.0.1", errors.Conflict),        # the gateway
    ("172.18.0.0", errors.Conflict),        # the network address
    ("10.9.0.2", errors.InvalidParameter),  # outside the subnet
    ("nope", errors.InvalidParameter),
])
def test_check_requested_refuses(address, error):
    with pytest.raises(error):
        ipam.check_requested(N("172.18.0.0/16"), A("172.18.0.1"), [ipam.address_int("172.18.0.2")],
                             address)


def test_check_requested_accepts_a_free_address():
    assert ipam.check_requested(N("172.18.0.0/16"), A("172.18.0.1"),
                                [ipam.address_int("172.18.0.2")], "172.18.0.3") == A("172.18.0.3")
