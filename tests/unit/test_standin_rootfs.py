"""The stand-in's base trees: Debian 13 by default, Debian 12 on request, one cache per recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from standin import HarnessError, Testbed
from standin.rootfs import DEFAULT_DEBIAN, BaseImage
from standin.services import PG_MAJOR, postgres_base


def test_default_base_is_debian_13_trixie(tmp_path: Path) -> None:
    image = BaseImage(tmp_path)
    assert (DEFAULT_DEBIAN, image.debian, image.suite) == (13, 13, "trixie")
    sources = image.files["etc/apt/sources.list.d/debian.sources"][0]
    assert "Suites: trixie trixie-updates" in sources
    assert "Suites: trixie-security" in sources


def test_debian_12_is_a_parameter_with_its_own_cache(tmp_path: Path) -> None:
    old, new = BaseImage(tmp_path, debian=12), BaseImage(tmp_path)
    assert old.suite == "bookworm"
    assert "Suites: bookworm-security" in old.files["etc/apt/sources.list.d/debian.sources"][0]
    assert old.recipe_hash != new.recipe_hash
    assert old.dir != new.dir


def test_an_unknown_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="Debian 11"):
        BaseImage(tmp_path, debian=11)
    with pytest.raises(HarnessError, match="debian must be one of"):
        Testbed(tmp_path / "bed", debian=11)


def test_postgres_tree_is_debian_13_with_postgresql_17() -> None:
    tree = postgres_base()
    assert PG_MAJOR == 17
    assert tree.suite == "trixie"
    assert "postgresql-17" in tree.include
    assert tree.recipe_hash != BaseImage().recipe_hash


def fake_base(root: Path, image: BaseImage, name: str) -> Path:
    other = root / name
    other.mkdir()
    info = {"suite": image.suite, "include": list(image.include)}
    (other / "complete").write_text(json.dumps(info))
    return other


def test_pruning_drops_old_bases_of_the_same_kind_only(tmp_path: Path) -> None:
    image = BaseImage(tmp_path)
    same = fake_base(tmp_path, image, "oldtrixie")
    bookworm = fake_base(tmp_path, BaseImage(tmp_path, debian=12), "bookworm")
    database = fake_base(tmp_path, postgres_base(), "database")
    image._prune_others()
    assert not same.exists()
    assert bookworm.exists()
    assert database.exists()


def test_a_base_with_extra_packages_is_made_from_the_plain_base_of_its_release(
    tmp_path: Path,
) -> None:
    """One debootstrap per release: the PostgreSQL tree copies the hosts' base, then installs."""
    tree, plain = BaseImage(tmp_path, extra_packages=("postgresql-17",)), BaseImage(tmp_path)
    assert plain.parent is None
    assert tree.parent is not None
    assert tree.parent.recipe_hash == plain.recipe_hash
    assert BaseImage(tmp_path, debian=12, extra_packages=("x",)).parent.suite == "bookworm"  # type: ignore[union-attr]
