"""Find a class by name inside a package, as nnU-Net does for trainers and planners."""
from __future__ import annotations

import importlib
import pkgutil

from osmedseg.errors import OsmError


def find_class(package: str, class_name: str, base: type) -> type:
    """Import every module of ``package`` until one defines ``class_name`` as a subclass of ``base``."""
    found = {}
    pkg = importlib.import_module(package)
    for module_info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        module = importlib.import_module(module_info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__:
                found[name] = obj
        if class_name in found:
            return found[class_name]
    raise OsmError(f"no {base.__name__} named {class_name!r} in {package}; available: {', '.join(sorted(found))}")
