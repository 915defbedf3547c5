"""Test files are collected by basename (tests/ has no packages): two files of one name in two
folders make pytest stop at collection, so every test module's name is unique."""

from collections import Counter
from pathlib import Path


def test_test_module_names_are_unique():
    names = Counter(p.name for p in Path(__file__).resolve().parent.rglob("test_*.py"))
    assert len(names) > 50
    assert not [n for n, c in names.items() if c > 1]
