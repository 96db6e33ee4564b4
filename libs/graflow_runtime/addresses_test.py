"""Address settings: one server, a list of replicas, or a gRPC target; bad ones are refused."""

from __future__ import annotations

import pytest

from graflow_runtime.addresses import AddressError, channel_target


def test_one_address_and_grpc_targets_are_passed_as_they_are() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", None)
    assert channel_target(" scheduler.graflow.svc:50051 ") == ("scheduler.graflow.svc:50051", None)
    assert channel_target("dns:///scheduler:50051") == ("dns:///scheduler:50051", None)
    assert channel_target("ipv4:10.0.0.1:1,10.0.0.2:1") == ("ipv4:10.0.0.1:1,10.0.0.2:1", None)


def test_a_list_of_replicas_becomes_one_target_presenting_the_first_name() -> None:
    assert channel_target("127.0.0.1:50051, 127.0.0.2:50061") == (
        "ipv4:127.0.0.1:50051,127.0.0.2:50061",
        "127.0.0.1:50051",
    )
    assert channel_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", "[::1]:1")


def test_names_in_a_list_are_resolved() -> None:
    target, authority = channel_target("localhost:7001,127.0.0.1:7002")
    assert target.endswith(":7001,127.0.0.1:7002") and target.startswith("ipv4:")
    assert authority == "localhost:7001"


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "address is empty"),
        ("127.0.0.1:1,,127.0.0.1:2", "has an empty entry"),
        ("127.0.0.1:1,127.0.0.1", "entry '127.0.0.1' is not host:port"),
        ("127.0.0.1:1,127.0.0.1:http", "entry '127.0.0.1:http' is not host:port"),
        ("127.0.0.1:1,127.0.0.1:70000", "entry '127.0.0.1:70000' is not host:port"),
        ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve 'no-such-host.invalid'"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
    ],
)
def test_bad_addresses_are_refused_naming_the_entry(address: str, problem: str) -> None:
    with pytest.raises(AddressError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        channel_target(address)
