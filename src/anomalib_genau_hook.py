"""Lazy import hook: import ``anomalib_genau`` right after ``anomalib.models``.

Loaded at start-up by ``anomalib_genau_hook.pth``. Must stay tiny: it imports
only ``sys``/``os`` (both already loaded by ``site``), never torch/anomalib.
Set ``ANOMALIB_GENAU_DISABLE_HOOK=1`` to disable.
"""

import os
import sys

_TARGET = "anomalib.models"
_PLUGIN = "anomalib_genau"
_fired = False


def _fire(module):
    global _fired
    if _fired:
        return
    _fired = True  # set first: guards against recursion and a second firing
    _uninstall()
    # importlib sets ``anomalib.models`` on the parent package only after
    # exec_module returns; set it now so ``import anomalib.models`` +
    # attribute access works inside the plugin.
    parent = sys.modules.get("anomalib")
    if parent is not None and getattr(parent, "models", None) is not module:
        setattr(parent, "models", module)
    try:
        __import__(_PLUGIN)
    except Exception as exc:  # never break the user's ``import anomalib.models``
        import warnings

        warnings.warn(
            f"anomalib_genau_hook: could not import {_PLUGIN!r} ({type(exc).__name__}: {exc}); "
            "model 'GenAU' will not be registered.",
            RuntimeWarning,
            stacklevel=2,
        )


class _AnomalibModelsFinder:
    """Meta-path finder that only intercepts ``anomalib.models``."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != _TARGET or _fired:
            return None
        for finder in sys.meta_path:  # delegate to the normal finders
            if finder is cls:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        orig_exec = getattr(loader, "exec_module", None)
        if orig_exec is None:
            return spec

        def exec_module(module):
            try:
                orig_exec(module)  # run anomalib/models/__init__.py fully
            finally:
                try:
                    del loader.exec_module  # restore the class method
                except AttributeError:
                    pass
            if module.__name__ == _TARGET:
                _fire(module)

        # Patch the (per-module) loader instance rather than wrapping it, so
        # __loader__/spec.loader keep their real type (resources, inspect...).
        loader.exec_module = exec_module
        return spec


def _uninstall():
    try:
        sys.meta_path.remove(_AnomalibModelsFinder)
    except ValueError:
        pass


def install():
    if os.environ.get("ANOMALIB_GENAU_DISABLE_HOOK"):
        return
    if _TARGET in sys.modules:  # already imported (e.g. hook imported late)
        _fire(sys.modules[_TARGET])
        return
    if _AnomalibModelsFinder not in sys.meta_path:
        sys.meta_path.insert(0, _AnomalibModelsFinder)


install()
