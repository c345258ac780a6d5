"""The models file's organization lists: a project may use what both its organization's list and
its own list allow, so a project created later is held to its organization's list (issue #12, R2-9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.catalog import CatalogError, load_catalog
from modelhost.catalog.build import access

MODELS = "".join(f'[[models]]\nid = "{m}"\nbackend = {{ type = "sentence" }}\n' for m in ("a", "b", "c"))


def _access(tmp_path: Path, tables: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_text(MODELS + tables)
    return access(load_catalog(path))


def test_a_project_gets_what_both_its_organization_and_its_own_list_allow(tmp_path: Path) -> None:
    lists = _access(
        tmp_path,
        '[organizations.org-small]\nmodels = ["a"]\n'
        '[organizations."*"]\nmodels = ["a", "b"]\n'
        '[projects.proj_wide]\nmodels = ["*"]\n'
        '[projects.proj_c]\nmodels = ["c", "a"]\n',
    )
    assert lists.ceiling("org-small", "proj_new") == {"a"}  # a project nobody named: its organization's list
    assert lists.ceiling("org-small", "proj_wide") == {"a"}  # "*" for the project cannot escape it
    assert lists.ceiling("org-other", "proj_new") == {"a", "b"}  # organizations."*"
    assert lists.ceiling("org-other", "proj_c") == {"a"}
    assert not lists.allows("proj_c", "c", "org-other") and lists.allows("proj_c", "c")  # no organization: project list only


def test_without_organization_lists_projects_are_as_before(tmp_path: Path) -> None:
    lists = _access(tmp_path, '[projects.proj_c]\nmodels = ["c"]\n')
    assert lists.ceiling("org-any", "proj_c") == {"c"} and lists.ceiling("org-any", "proj_new") is None


def test_an_unknown_model_in_an_organization_list_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"field `organizations.org-x.models\[1\]`: no model or alias is named `d`"):
        _access(tmp_path, '[organizations.org-x]\nmodels = ["a", "d"]\n')
