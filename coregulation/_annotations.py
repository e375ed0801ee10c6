"""Real types in constructor signatures of classes written with postponed annotations.

Under ``from __future__ import annotations`` the constructors that ``NamedTuple``
and ``dataclass`` generate carry their field annotations as strings, to be
evaluated in a namespace where names such as ``np`` or ``Float`` may not exist
(``collections`` for a ``NamedTuple``; the subclass's module for a field inherited
from a base in another module).  ``help()``, ``inspect.signature`` and the API
reference then cannot read them.  :func:`resolved` evaluates them once, in the
namespaces of the classes that declared them (``typing.get_type_hints``).
"""

from __future__ import annotations

import typing


def resolved(cls):
    """Class decorator (outermost, after ``@dataclass``): constructor annotations as types."""
    hints = typing.get_type_hints(cls)
    ctor = cls.__new__ if issubclass(cls, tuple) else cls.__init__
    annotations = dict(getattr(ctor, "__annotations__", {}))
    for name in annotations:
        if name in hints:
            annotations[name] = hints[name]
    ctor.__annotations__ = annotations
    return cls
