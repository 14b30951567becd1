"""Hashtags: Unicode-aware extraction, and merging that drops the archive's ASCII truncations."""

import pytest

from transforms.core import hashtags


@pytest.mark.parametrize("text,expected", [
    ("かわいい#BTS", ["bts"]),
    ("#防弾少年団 and #방탄소년단", ["防弾少年団", "방탄소년단"]),
    ("#FelizAñoNuevo!", ["felizañonuevo"]),
    ("#институт #Институт", ["институт"]),
    ("#สวัสดี ok", ["สวัสดี"]),
    ("#!!! # #_", []),
    ("no tags", []),
    ("#a#b", ["a", "b"]),
])
def test_hashtags_unicode_aware(text, expected):
  assert hashtags.extract(text) == expected


def test_merge_drops_ascii_truncations():
  assert hashtags.merge(["felizañonuevo"], ["feliza", "Extra"]) == ["felizañonuevo", "extra"]
