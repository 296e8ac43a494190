"""The pydantic base of every recipe part: its fields are the part's settings, checked once.

A loss term or an advantage estimator *is* its part (:class:`treesdk.losses.ClippedSurrogate` is
both the ``clipped-surrogate`` entry of a recipe and the callable the trainer runs: a
:class:`RuntimePart`), so what a field's ``Literal`` or bound allows is checked by pydantic and
nowhere else. Built in Python, such a part also takes its :attr:`RuntimePart.positional` fields in
order (``KLToReference("transition")``). Recipe files and graphs are validated with
``model_validate`` (see :mod:`treesdk.recipes.parts`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from treesdk.errors import UserError
from treesdk.validation import validation_problems

__all__ = ["Part", "RuntimePart"]


class Part(BaseModel):
    """Base of every recipe part: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimePart(Part):
    """A part that is its own runtime object (a loss term, an estimator): its Python constructor also
    takes the :attr:`positional` fields in order, and a bad value given positionally is a
    :class:`~treesdk.errors.UserError` naming the part (:attr:`label`), the field and the value.
    With keywords only (and in recipe validation) errors are pydantic's ``ValidationError``."""

    #: fields the Python constructor also takes positionally, in this order
    positional: ClassVar[tuple[str, ...]] = ()
    #: how construction errors name the part (default: the class name)
    label: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        """Fields are validated on assignment; any other name is a plain attribute (state a
        subclass keeps, e.g. a recording loss term in a test), never dumped nor compared."""
        if name in type(self).model_fields:
            super().__setattr__(name, value)
        else:
            object.__setattr__(self, name, value)

    def __init__(self, *args: Any, **data: Any) -> None:
        if not args:  # keywords: pydantic's own path (validation of recipes comes through here too)
            super().__init__(**data)
            return
        if len(args) > len(self.positional):
            raise TypeError(f"{type(self).__name__} takes at most {len(self.positional)} positional arguments "
                            f"({', '.join(self.positional) or 'none'}), got {len(args)}")
        for name, value in zip(self.positional, args):
            if name in data:
                raise TypeError(f"{type(self).__name__} got two values for {name!r}")
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as exc:
            label = self.label or type(self).__name__
            problems = validation_problems(exc, whole="(part)")
            raise UserError("; ".join(f"{label} {loc}: {message}" for loc, message in problems)) from None
