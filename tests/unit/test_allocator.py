"""glibc's thresholds are raised once at engine start on CPU (allocator.py)."""

from __future__ import annotations

import platform

import pytest

from autoglm.inference.allocator import keep_freed_memory


def test_zero_leaves_the_allocator_alone() -> None:
    assert keep_freed_memory(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_raised_on_glibc() -> None:
    assert keep_freed_memory(256) is True
