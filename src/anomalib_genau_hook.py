"""Register GenAU with anomalib lazily: import its model package right after ``anomalib.models``.

A one-line ``anomalib_genau_hook.pth`` imports this module at interpreter start-up. It
imports nothing but ``sys`` and ``os`` (both already loaded by ``site``) and puts a finder on
``sys.meta_path`` that waits for ``anomalib.models``; once that module has fully executed,
``anomalib_genau.models.genau.lightning_model`` is imported, which defines
``GenAU(AnomalibModule)``, so anomalib's registry (``AnomalibModule.__subclasses__()``) and
its CLI find it. Set
``ANOMALIB_GENAU_DISABLE_HOOK=1`` to turn the hook off.
"""

import os
import sys

_TARGET = "anomalib.models"
_PLUGIN = "anomalib_genau.models.genau.lightning_model"  # defines GenAU(AnomalibModule) and registers it
_state = {"fired": False}


def _fire(module: object) -> None:
    """Import the plugin once; a failure warns instead of breaking ``import anomalib.models``."""
    if _state["fired"]:
        return
    _state["fired"] = True  # set first: guards against recursion and a second firing
    _uninstall()
    parent = sys.modules.get("anomalib")
    # importlib binds anomalib.models on its parent only after exec_module returns
    if parent is not None and getattr(parent, "models", None) is not module:
        parent.models = module
    try:
        __import__(_PLUGIN)
    except Exception as error:
        import warnings

        warnings.warn(
            f"anomalib_genau_hook: could not import {_PLUGIN!r} ({type(error).__name__}: {error}); "
            "model 'GenAU' is not registered.",
            RuntimeWarning,
            stacklevel=2,
        )


class _AnomalibModelsFinder:
    """Meta-path finder that wraps the loader of ``anomalib.models`` to fire after it runs."""

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> object:
        """Find ``anomalib.models`` with the other finders and wrap its ``exec_module``."""
        if fullname != _TARGET or _state["fired"]:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is cls or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original_exec = getattr(loader, "exec_module", None)
        if original_exec is None:
            return spec

        def exec_module(module: object) -> None:
            try:
                original_exec(module)
            finally:
                vars(loader).pop("exec_module", None)  # restore the class's method
            if getattr(module, "__name__", None) == _TARGET:
                _fire(module)

        loader.exec_module = exec_module  # patch this module's loader instance only
        return spec


def _uninstall() -> None:
    if _AnomalibModelsFinder in sys.meta_path:
        sys.meta_path.remove(_AnomalibModelsFinder)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (or fire at once if anomalib.models is loaded)."""
    if os.environ.get("ANOMALIB_GENAU_DISABLE_HOOK"):
        return
    if _TARGET in sys.modules:
        _fire(sys.modules[_TARGET])
    elif _AnomalibModelsFinder not in sys.meta_path:
        sys.meta_path.insert(0, _AnomalibModelsFinder)


install()
