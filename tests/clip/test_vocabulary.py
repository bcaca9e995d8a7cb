"""Tests of the default prompt vocabulary, the benchmark class lists and their aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosegkit.clip import (
    BENCHMARK_ALIASES,
    BENCHMARK_CLASSES,
    COCO_CLASSES,
    COSEG_EXTRA_CLASSES,
    DEFAULT_TEMPLATES,
    DEFAULT_VOCABULARY,
    vocabulary_index,
)

PASCAL_FOLDERS = (
    "Aero",
    "Bicycle",
    "Bird",
    "Boat",
    "Bottle",
    "Bus",
    "Car",
    "Cat",
    "Chair",
    "Dog",
    "Mbike",
    "Monitor",
    "Person",
    "Plant",
)
PASCAL_DIR = Path(__file__).parents[2] / ".." / "shared" / "data" / "pascal_voc_coseg" / "Pascal_10"


def test_coco_classes():
    assert len(COCO_CLASSES) == 80
    assert len(set(COCO_CLASSES)) == 80
    assert COCO_CLASSES[0] == "person"
    assert COCO_CLASSES[-1] == "toothbrush"
    assert all(isinstance(c, str) and c == c.strip() and c for c in COCO_CLASSES)


def test_default_vocabulary():
    assert len(DEFAULT_VOCABULARY) == len(set(DEFAULT_VOCABULARY)) == 92
    assert set(COCO_CLASSES) <= set(DEFAULT_VOCABULARY)
    assert set(COSEG_EXTRA_CLASSES) <= set(DEFAULT_VOCABULARY)
    assert not set(COCO_CLASSES) & set(COSEG_EXTRA_CLASSES)
    # no two entries differ only by case, which the case-folding lookup could not tell apart
    assert len({c.lower() for c in DEFAULT_VOCABULARY}) == len(DEFAULT_VOCABULARY)


def test_default_templates():
    assert DEFAULT_TEMPLATES == ("a photo of a {}.",)
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


@pytest.mark.parametrize("benchmark", sorted(BENCHMARK_CLASSES))
def test_benchmark_classes_resolve(benchmark):
    names = BENCHMARK_CLASSES[benchmark]
    assert names
    for name in names:
        i = vocabulary_index(name)
        assert 0 <= i < len(DEFAULT_VOCABULARY)
        entry = DEFAULT_VOCABULARY[i]
        assert entry in (name, BENCHMARK_ALIASES.get(name))


def test_vocabulary_index_finds_exact_names():
    for i, name in enumerate(DEFAULT_VOCABULARY):
        assert vocabulary_index(name) == i
        assert vocabulary_index(name.upper()) == i
        assert vocabulary_index(f"  {name} ") == i
    assert vocabulary_index("hot_dog") == DEFAULT_VOCABULARY.index("hot dog")
    assert vocabulary_index("Potted_Plant") == DEFAULT_VOCABULARY.index("potted plant")


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("Aero", "airplane"),
        ("Bicycle", "bicycle"),
        ("Bird", "bird"),
        ("Boat", "boat"),
        ("Bottle", "bottle"),
        ("Bus", "bus"),
        ("Car", "car"),
        ("Cat", "cat"),
        ("Chair", "chair"),
        ("Dog", "dog"),
        ("Mbike", "motorcycle"),
        ("Monitor", "tv"),
        ("Person", "person"),
        ("Plant", "potted plant"),
    ],
)
def test_pascal_folder_names_resolve(folder, expected):
    assert folder in PASCAL_FOLDERS
    assert DEFAULT_VOCABULARY[vocabulary_index(folder)] == expected


def test_pascal_folders_on_disk_resolve():
    if not PASCAL_DIR.is_dir():
        pytest.skip(f"the PASCAL co-segmentation data is not at {PASCAL_DIR}")
    folders = sorted(p.name for p in PASCAL_DIR.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders
    for name in folders:
        assert 0 <= vocabulary_index(name) < len(DEFAULT_VOCABULARY), name
    assert set(PASCAL_FOLDERS) <= set(folders)


@pytest.mark.parametrize(("alias", "target"), sorted(BENCHMARK_ALIASES.items()))
def test_aliases_map_to_vocabulary_entries(alias, target):
    assert target in DEFAULT_VOCABULARY
    assert alias not in DEFAULT_VOCABULARY  # an alias would otherwise shadow a real entry
    assert vocabulary_index(alias) == DEFAULT_VOCABULARY.index(target)
    assert vocabulary_index(alias.title()) == DEFAULT_VOCABULARY.index(target)


def test_vocabulary_index_in_a_custom_vocabulary():
    vocabulary = ("dog", "airplane", "cat")
    assert vocabulary_index("Cat", vocabulary) == 2
    assert vocabulary_index("aeroplane", vocabulary) == 1
    assert vocabulary_index("plane", list(vocabulary)) == 1
    with pytest.raises(KeyError):
        vocabulary_index("car", vocabulary)


@pytest.mark.parametrize("name", ["unicorn", "", "cats", "air plane x"])
def test_unknown_name_raises_key_error(name):
    with pytest.raises(KeyError, match="not in the vocabulary"):
        vocabulary_index(name)
