"""The credential kinds: one module per kind in this package, found by name (like borgmatic's hooks).

Adding a kind is adding a module here. Each declares what the rest of homelab-ops asks of a kind:

- `Options`: its pydantic model, a `KindOptions` with `kind: Literal["the-kind"]` and its own
  fields (types, SecretStr for what is stored encrypted, no default for what is required);
  the settings file and `creds add` both validate through it.
- `BEHAVIOUR`: a `Kind` instance, the rotation steps (create, set, test, finish).
- `DAGSTER_KINDS` and `HOW`: the `credentials/<name>` asset's kinds and how it rotates, for its description.

The module's name is the kind with `_` for `-` (`postgres_role` declares `postgres-role`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Any, Mapping, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import InitErrorDetails, PydanticCustomError

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds._base import Context, Kind, KindOptions, a_kind, kind_of
from homelab_ops.plugins import discover

__all__ = ["MODULES", "KINDS", "AnyKindOptions", "Context", "Kind", "KindOptions", "kind_for", "check_module",
           "validate"]

REQUIRED = ("Options", "BEHAVIOUR", "DAGSTER_KINDS", "HOW")


def check_module(module: ModuleType) -> str:
    """The kind a module declares, or an error naming what it forgot; run on every module at import."""
    short = module.__name__.rpartition(".")[2]
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise TypeError(f"credential kind module {short} does not declare {', '.join(missing)}")
    if not (isinstance(module.Options, type) and issubclass(module.Options, KindOptions)):
        raise TypeError(f"credential kind module {short}: Options must be a KindOptions model")
    if not isinstance(module.BEHAVIOUR, Kind):
        raise TypeError(f"credential kind module {short}: BEHAVIOUR must be a Kind instance")
    if not module.DAGSTER_KINDS or not module.HOW:
        raise TypeError(f"credential kind module {short}: DAGSTER_KINDS and HOW may not be empty")
    kind = kind_of(module.Options)
    if kind.replace("-", "_") != short:
        raise TypeError(f"credential kind module {short} declares kind {kind!r}: name the module "
                        f"{kind.replace('-', '_')}.py")
    return kind


MODULES: dict[str, ModuleType] = {check_module(m): m for m in discover(__name__, __path__).values()}
KINDS: tuple[str, ...] = tuple(MODULES)


def _owner_errors(value: Any, handler) -> Any:
    """Errors as an owner reads them: no pydantic tag in the location, the known kinds named for an
    unknown one, and the options a kind takes for one it does not."""
    try:
        return handler(value)
    except ValidationError as e:
        raise ValidationError.from_exception_data(e.title, [_owner_error(err) for err in e.errors()]) from None


def _owner_error(err) -> InitErrorDetails:
    kind_type, loc, msg = err["type"], tuple(err["loc"]), err["msg"].removeprefix("Value error, ")
    if kind_type == "union_tag_invalid":
        loc, msg = ("kind",), f"unknown kind {err['ctx']['tag']!r}: use one of {', '.join(KINDS)}"
    elif kind_type == "union_tag_not_found":
        loc, kind_type, msg = ("kind",), "missing", f"which kind? one of {', '.join(KINDS)}"
    elif loc and loc[0] in MODULES:
        kind, loc = loc[0], loc[1:]
        if kind_type == "extra_forbidden" and len(loc) == 1:
            takes = sorted(set(MODULES[kind].Options.model_fields) - {"kind"})
            kind_type = "option_does_not_apply"
            msg = f"option {loc[0]!r} does not apply to {a_kind(kind)} (it takes: {', '.join(takes)})"
    return InitErrorDetails(type=PydanticCustomError(kind_type, "{msg}", {"msg": msg}), loc=loc, input=err["input"])


# The settings file's `credentials.managed.<name>` entry: one model per kind, chosen by `kind`.
AnyKindOptions = Annotated[Union[tuple(m.Options for m in MODULES.values())], Field(discriminator="kind"),
                    WrapValidator(_owner_errors)]
_ADAPTER = TypeAdapter(AnyKindOptions)


def validate(name: str, options: Mapping[str, Any]) -> BaseModel:
    """`creds add`'s options (with `kind`) as their kind's model; errors name the credential and option."""
    try:
        return _ADAPTER.validate_python(dict(options))
    except ValidationError as e:
        raise CredentialError("; ".join(
            f"{'.'.join(str(p) for p in (name, *err['loc']))}: {err['msg']}" for err in e.errors())) from None


def kind_for(kind: str) -> Kind:
    if kind not in MODULES:
        raise CredentialError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    return MODULES[kind].BEHAVIOUR
