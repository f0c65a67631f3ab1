"""cryoet_forge.limits: size guards that say what was expected before anything is allocated."""

from __future__ import annotations

import sys

import pytest

from cryoet_forge import limits
from cryoet_forge.errors import ConfigError, InputError


def test_an_allocation_beyond_the_available_memory_is_one_line(monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 8 * 1024**3)
    limits.check_allocation(8 * 1024**3, "a batch")  # exactly what is there: fine
    with pytest.raises(InputError) as info:
        limits.check_allocation(3 * 1024**4, "--box 9000 (a batch)", "a smaller --box")
    assert str(info.value) == ("--box 9000 (a batch) needs 3.0 TiB of memory, more than the 8.0 GiB available; "
                               "expected a smaller --box")
    with pytest.raises(ConfigError, match="^x needs 1.0 PiB of memory"):
        limits.check_allocation(1024**5, "x", error=ConfigError)
    monkeypatch.setattr(limits, "available_memory", lambda: None)
    limits.check_allocation(10**30, "unknown memory")  # nothing to compare with: not refused


def test_available_memory_without_psutil_reads_the_free_pages(monkeypatch):
    with_psutil = limits.available_memory()
    assert with_psutil is not None and with_psutil > 0
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    pages = limits.available_memory()
    assert pages is not None and pages > 0


def test_integers_out_of_range_name_the_key_and_the_range():
    assert limits.check_int_range(8, "train.batch_size", 1, limits.INT64_MAX) == 8
    with pytest.raises(ConfigError) as info:
        limits.check_int_range(10**20, "train.batch_size", 1, limits.INT64_MAX)
    assert str(info.value) == ("train.batch_size must be an integer in [1, 9223372036854775807], "
                               "got 100000000000000000000")
    with pytest.raises(ConfigError, match=r"^n must be an integer in \[0, 3\], got True$"):
        limits.check_int_range(True, "n", 0, 3)
    with pytest.raises(InputError, match=r"^--bootstrap must be an integer in \[50, 100000\], got 2.5$"):
        limits.check_int_range(2.5, "--bootstrap", 50, 100000, error=InputError)


@pytest.mark.parametrize(("nbytes", "text"), [(0, "0 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"),
                                              (2 * 1024**6, "2 EiB")])
def test_bytes_are_printed_in_binary_units(nbytes, text):
    assert limits.format_bytes(nbytes) == text
