"""Every model name and alias is written out in the source (timm's habit): `grep -rn NAME vitlab/` finds where each
is registered, instead of an f-string loop that builds it."""
import re
from pathlib import Path

import pytest

import vitlab
from vitlab.models import _registry

SOURCE = "\n".join(p.read_text() for p in (Path(vitlab.__file__).parent).rglob("*.py"))


def _literals() -> set[str]:
    """Every quoted identifier-like string and every `def` name in vitlab/."""
    found = re.findall(r"""["']([A-Za-z0-9_]+)["']|^def ([A-Za-z0-9_]+)\(""", SOURCE, flags=re.M)
    return {quoted or defined for quoted, defined in found}


LITERALS = _literals()


@pytest.mark.parametrize("name", sorted(vitlab.list_models()) + sorted(_registry._ALIASES))
def test_every_model_name_and_alias_is_a_literal_in_the_source(name):
    assert name in LITERALS, f"{name!r} is registered but not written out anywhere in vitlab/ (grep cannot find it)"


def test_an_alias_must_be_the_short_alias_of_its_name():
    with pytest.raises(ValueError, match="its short alias is 'vit_t8_64'"):
        _registry.register_model(lambda: None, name="vit_tiny_patch8_64", alias="vit_tiny8")
    with pytest.raises(ValueError, match="its short alias is 'vit_t8_64'"):
        _registry.register_model(lambda: None, name="vit_tiny_patch8_64")  # an alias left out
    assert "vit_tiny_patch8_64" not in vitlab.list_models()
