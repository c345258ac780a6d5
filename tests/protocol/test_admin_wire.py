"""The Administration API's wire shapes: one package, every name importable from its top, JSON as OpenAI sends it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import BaseModel

import modelhost.protocol.admin as admin
from modelhost.protocol.admin import Deleted


def test_every_public_name_of_every_resource_module_is_importable_from_the_package() -> None:
    for module_info in pkgutil.iter_modules(admin.__path__):
        module = importlib.import_module(f"{admin.__name__}.{module_info.name}")
        own = {name for name, value in vars(module).items() if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__}
        assert own <= set(admin.__all__), f"{module.__name__} defines names the package does not export: {own - set(admin.__all__)}"
    assert all(hasattr(admin, name) for name in admin.__all__)


DELETIONS = [cls for cls in vars(admin).values() if isinstance(cls, type) and issubclass(cls, Deleted) and cls is not Deleted]


def test_each_resource_has_its_deletion_answer() -> None:
    assert {cls.__name__ for cls in DELETIONS} == {
        "AdminApiKeyDeleted", "UserDeleted", "InviteDeleted", "ProjectUserDeleted", "ServiceAccountDeleted", "ProjectApiKeyDeleted",
    }


@pytest.mark.parametrize("answer", DELETIONS, ids=lambda cls: cls.__name__)
def test_a_deletion_answer_is_object_id_deleted_in_that_order(answer: type[BaseModel]) -> None:
    kind = answer.model_fields["object"].default
    assert kind.endswith(".deleted")
    assert answer(id="x").model_dump_json() == f'{{"object":"{kind}","id":"x","deleted":true}}'
    assert answer.model_json_schema()["required"] == ["id"]
