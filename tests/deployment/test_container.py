"""The container reader: every bad input is a PayloadError, and what it allocates is bounded by its input."""
from __future__ import annotations

import io
import json
import mmap
import struct
import tracemalloc
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fheestimators.deployment.container import FORMAT_VERSION, MAGIC, PayloadError, pack, read_header, unpack
from fheestimators.deployment.wire import pack_values, unpack_values

MB = 1 << 20
FINGERPRINT = "f" * 64
SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)
names = st.text(min_size=1, max_size=20)
members = st.dictionaries(names, st.binary(max_size=300), max_size=8)
fields = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("format", "kind", "fingerprint", "members")),
                         st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=3), max_size=4)
containers = st.builds(lambda m, f: pack("inputs", FINGERPRINT, m, **f), members, fields)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
                           max_leaves=8)


def measured(function, *args, **kwargs):
    """``function(*args, **kwargs)`` (or the error it raised) and the peak bytes it allocated meanwhile."""
    tracemalloc.start()
    try:
        return function(*args, **kwargs), tracemalloc.get_traced_memory()[1]
    except PayloadError as error:
        return error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def checked(data, kind="inputs", **kwargs):
    """Unpack ``data``: a PayloadError or a sound result, in memory bounded by the input."""
    result, peak = measured(unpack, data, kind, **kwargs)
    assert peak < 2 * len(data) + 2 * MB
    if not isinstance(result, PayloadError):
        header_bytes = struct.unpack(">I", bytes(data[8:12]))[0]
        assert sum(map(len, result[1].values())) == len(data) - 12 - header_bytes
    return result


def refused(data, kind="inputs", match="", **kwargs):
    result = checked(data, kind, **kwargs)
    assert isinstance(result, PayloadError) and match in str(result), result


def raw(header, body=b""):
    """A container with the header ``header`` (an object, or its bytes as they are) before ``body``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack(">I", len(text)) + text + body


def header(members, **changes):
    return {"format": FORMAT_VERSION, "kind": "inputs", "fingerprint": FINGERPRINT, "members": members, **changes}


@SETTINGS
@given(members, fields)
def test_a_round_trip_gives_back_the_members_and_fields(members, fields):
    data = pack("inputs", FINGERPRINT, members, **fields)
    for view in (data, bytearray(data), memoryview(data)):
        found, values = checked(view, fingerprint=FINGERPRINT)
        assert values == members and list(values) == list(members)
        assert found == {"format": FORMAT_VERSION, "kind": "inputs", "fingerprint": FINGERPRINT, **fields}
    assert read_header(data, "inputs")[1] == {name: len(value) for name, value in members.items()}


@SETTINGS
@given(st.binary(max_size=3000))
def test_random_bytes_are_refused(data):
    refused(data)
    checked(MAGIC + data)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["format", "kind", "fingerprint", "n"]),
                       json_values | st.sampled_from([FORMAT_VERSION, "inputs", FINGERPRINT])),
       st.lists(st.tuples(names, st.integers(-1, 3)).map(list)) | json_values, st.binary(max_size=8))
def test_random_headers_are_refused_or_sound(fields, entries, body):
    checked(raw({**fields, "members": entries}, body))


@SETTINGS
@given(containers, st.lists(st.integers(min_value=0), min_size=1, max_size=4))
def test_bit_flips_are_refused_or_parse_to_the_declared_sizes(data, positions):
    flipped = bytearray(data)
    for position in positions:
        flipped[position // 8 % len(data)] ^= 1 << (position % 8)
    checked(bytes(flipped))


@SETTINGS
@given(containers, st.binary(min_size=1, max_size=100))
def test_padded_containers_are_refused(data, padding):
    refused(data + padding, match="padded")


def test_every_truncation_is_refused():
    data = pack("inputs", FINGERPRINT, {"a": b"x" * 50, "b": b"", "c": b"yz"}, n_samples=1)
    for end in range(len(data)):
        refused(data[:end])


@pytest.mark.parametrize("text, match", [
    (b"[" * 200_000, "not JSON"),
    (b'{"a": ' * 50_000, "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    (b"[1, 2]", "not an object"),
    (json.dumps(header([], format=1)).encode(), "format version 1; this fheestimators reads version 2: save"),
    (json.dumps(header([], format="2")).encode(), "format version '2'"),
    (json.dumps(header([], kind="outputs")).encode(), "expected a inputs container, got 'outputs'"),
    (json.dumps(header([], fingerprint=None)).encode(), "no fingerprint"),
    (json.dumps(header([], fingerprint="0" * 64)).encode(), "made for model 000000000000"),
    (json.dumps(header({"a": 1})).encode(), "no member list"),
    (json.dumps(header("X")).encode().replace(b'"X"', b'[["a", ' + b"1" * 5000 + b"]]"), "not JSON"),
])
def test_malformed_headers_are_refused(text, match):
    refused(raw(text), match=match, fingerprint=FINGERPRINT)


@pytest.mark.parametrize("entries, match", [
    ([["a", 1], ["b", 1]], "declares 2 bytes of members, 1 follow"),
    ([["a", 10 ** 10]], "member 'a' declares 10000000000 bytes, only 1 follow"),
    ([["a", 2 ** 64], ["b", -2 ** 64 + 1]], "member 'a' declares 18446744073709551616 bytes"),
    ([["a", 10 ** 4000]], "member 'a' declares 10000000000000000"),
    *[([entry], "is not a [name, length]") for entry in (["a", -1], ["a", True], ["a", 1.0], ["a", "1"], ["", 1],
                                                         ["a" * 256, 1], ["a", 1, 2], [1, 1], "a1", None)],
    ([["a", 0], ["a", 1]], "names the member 'a' twice"),
    ([["a", 0]] * 5000, "holds 5000 members; at most 4096"),
])
def test_malformed_member_lists_are_refused(entries, match):
    refused(raw(header(entries), b"x"), match=match)


def test_header_lengths_beyond_the_data_or_the_limit_are_refused():
    refused(MAGIC + struct.pack(">I", 100) + b"{}", match="declares 100 bytes, only 2 follow")
    refused(MAGIC + b"\xff\xff\xff\xff{}", match="more than the 1048576 accepted")
    refused(raw(header([["a", 1]]), b"x"), match="more than the 10 accepted", max_header_bytes=10)
    refused(MAGIC + b"\x00\x00", match="no FHEESTIM mark")
    # the worst header for the JSON parser: 1 MiB of empty objects, about 25 bytes of objects per byte
    result, peak = measured(unpack, raw(header([{}] * 200_000 + [["a", 1]]), b"x"), "inputs", max_members=None)
    assert isinstance(result, PayloadError) and peak < 32 * MB, peak


def test_limits_and_expected_sizes_are_checked_before_copying():
    data = pack("inputs", FINGERPRINT, {"a": b"x" * 10, "b": b"y" * 20})
    assert checked(data, expected_sizes={"a": 10, "b": 20})[1]["b"] == b"y" * 20
    refused(data, match="'a' of the inputs container has 10 bytes where 11", expected_sizes={"a": 11})
    refused(data, match="'b' of the inputs container has 20 bytes where 19", expected_sizes={"b": 19})
    refused(data, match="lacks its member 'c'", expected_sizes={"c": 0})
    refused(data, match="holds 2 members; at most 1", max_members=1)
    refused(data, match="holds 30 bytes of members, more than the 29", max_bytes=29)
    for value in ("", None, 3, [1, 2], b""):
        assert "empty or non-bytes" in str(measured(unpack, value, "inputs")[0])


def test_mmap_and_memoryview_inputs_are_read_in_place(tmp_path):
    data = pack("inputs", FINGERPRINT, {"a": b"x" * 1000, "b": b"y"})
    for body in (data, data[:-1], raw(b"\xff{}"), raw(b"[" * 100_000)):
        (tmp_path / "body").write_bytes(body)
        # closing the map on leaving the block fails if a view of it is left behind, even by a refusal
        with open(tmp_path / "body", "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            result = checked(mapped)
        assert result[1] == {"a": b"x" * 1000, "b": b"y"} if body == data else isinstance(result, PayloadError)
    with memoryview(b"junk" + data) as view:  # a container inside a larger buffer
        assert checked(view[4:])[1]["a"] == b"x" * 1000
        assert checked(view[4:].cast("c"))[1]["b"] == b"y"
        refused(view[4:-1])


def test_a_bomb_shaped_container_is_refused_with_a_tiny_peak():
    bomb = raw(header([["keys", 10 * 10 ** 9]]), b"\0" * 900)  # 1 KB, "10 GB"
    error, peak = measured(unpack, bomb, "inputs")
    assert isinstance(error, PayloadError) and peak < 64 * 1024, peak


def test_a_valid_large_container_is_copied_once():
    data = pack("inputs", FINGERPRINT, {"a": bytes(20 * MB), "b": bytes(MB)})
    (_, values), peak = measured(unpack, data, "inputs")
    assert len(values["a"]) == 20 * MB and peak < len(data) + MB, peak


def test_a_zip_of_the_old_format_is_refused_without_decompressing():
    """A container of format version 1: a zip, here with a bzip2 member of 100 MB of zeros."""
    buffer, info = io.BytesIO(), zipfile.ZipInfo("keys")
    info.compress_type = zipfile.ZIP_BZIP2
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("header.json", json.dumps({"format": 1, "kind": "evaluation_keys"}))
        with archive.open(info, "w", force_zip64=True) as member:
            for _ in range(100):
                member.write(bytes(MB))
    error, peak = measured(unpack, buffer.getvalue(), "evaluation_keys")
    assert isinstance(error, PayloadError) and "save the model again" in str(error)
    assert peak < 4 * MB, peak


def test_a_batch_of_wrong_sizes_is_refused_before_any_ciphertext_is_copied():
    batch = pack_values("inputs", FINGERPRINT, [[bytes(100_000), bytes(10)] for _ in range(100)])
    samples = unpack_values(batch, "inputs", FINGERPRINT, n_args=2, sizes=[100_000, 10], max_samples=100)
    assert samples[99][1] == bytes(10)
    for kwargs, match in [(dict(sizes=[100_000, 11]), "ciphertext 1 of sample 0 has 10 bytes where this model's"),
                          (dict(max_samples=99), "holds 200 members; at most 198"),
                          (dict(n_args=3), "the model takes 3 encrypted input(s)")]:
        error, peak = measured(unpack_values, batch, "inputs", FINGERPRINT, **{"n_args": 2, **kwargs})
        assert isinstance(error, PayloadError) and match in str(error) and peak < MB, (error, peak)
    forged = raw(header([["0/0", 1]], n_samples=10 ** 9, n_args=1), b"x")
    error, peak = measured(unpack_values, forged, "inputs", FINGERPRINT)
    assert isinstance(error, PayloadError) and "lacks ciphertext '1/0'" in str(error) and peak < MB
