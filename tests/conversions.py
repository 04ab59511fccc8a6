"""Tiny Core ML conversions made once per test run and handed to each test as its own copy.

A conversion of a tiny model still takes tens of seconds of one core (coremltools runs about a
hundred passes over some eight hundred ops, whatever the widths), and many tests only inspect
one: its interface, its weights, or its programs loaded on the stubbed Mac. So each distinct
conversion is made once into a cache shared by every pytest-xdist worker of the run, guarded
by a file lock per conversion key (a second worker that asks for it waits, then reads it), and
each caller gets a private copy of the folder under its own cache directory: whatever a test
then does to it (compiling on the stubbed Mac writes ``.mlmodelc`` beside the packages) stays
in that test's copy.

What this shares is the product's own ``convert`` (``compile=False``; ``load_programs``
compiles the copy on the stubbed Mac, as it does any folder converted elsewhere). A test that
checks what converting itself does (events while converting, the caller's modules restored,
the cache reused) converts on its own instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from tinymodel import TINY_SIZE, make_tiny_components, make_tiny_family

if TYPE_CHECKING:
    from livediffusion_models.coreml import Precision, Target, Variant
    from livediffusion_models.coreml.cache import ConvertedModel

SIZE = (TINY_SIZE, TINY_SIZE)
MODEL = "sdxs-512-0.9"
SMALL = "small"
"""``family`` for ``make_tiny_components()``: the smallest model, named as SDXS-512."""


def fingerprint(family: str) -> str:
    """The weights' fingerprint of ``make_tiny_family(family)`` (seed 0) in every test, or of
    ``make_tiny_components()`` for ``SMALL``."""
    return f"tiny-{family}"


def make_components(family: str) -> Any:
    """The model ``family`` names here, built fresh."""
    return make_tiny_components() if family == SMALL else make_tiny_family(family)


class SharedConversions:
    """Conversions made once per run in ``shared`` (one lock file per conversion key), each
    caller given its own copy in a cache directory of its own."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        shared.mkdir(parents=True, exist_ok=True)

    def convert(
        self, components: Callable[[], Any], *, cache_dir: Path, **options: Any
    ) -> ConvertedModel:
        """The product's ``convert(components(), **options)`` (an explicit ``target``), made
        once per run, as a private copy in ``cache_dir``; ``components`` is called only when
        this run has not converted it yet."""
        from livediffusion_models.coreml import convert as module
        from livediffusion_models.coreml.cache import find_converted

        convert = getattr(module.convert, "__wrapped__", module.convert)  # the real one
        key = module.conversion_key(**options)
        with FileLock(str(self.shared / f"{key.digest()}.lock")):
            made = find_converted(key, self.shared)
            if made is None:
                made = convert(
                    components(),
                    cache_dir=self.shared,
                    compile=False,
                    progress=lambda message: None,
                    **options,
                )
        mine = key.folder(cache_dir)
        if not mine.is_dir():
            mine.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(made.folder, mine)
        copied = find_converted(key, cache_dir)
        assert copied is not None, f"the copy of {made.folder} in {cache_dir} does not read back"
        return copied

    def route(self, monkeypatch: Any) -> None:
        """Make the product's ``convert``, wherever this test calls it from (``livediffusion
        convert``, doctor's convert row), once per run as ``convert`` above: for tests whose
        subject is what comes before and after a conversion. Nothing is cached in the caller's
        fresh ``cache_dir``, so ``--target auto`` converts for the newest target this machine
        runs (:func:`runnable_targets`), as ``convert`` does; ``compile`` compiles the copy."""
        from livediffusion_models.coreml import convert as module
        from livediffusion_models.coreml import runnable_targets

        def convert(
            components: Any,
            *,
            cache_dir: Any = None,
            target: Target | None = None,
            compile: bool = True,
            force: bool = False,
            progress: Any = None,
            **options: Any,
        ) -> ConvertedModel:
            assert cache_dir is not None and not force, "a routed conversion needs a fresh cache"
            made = self.convert(
                lambda: components,
                cache_dir=Path(cache_dir),
                target=target or runnable_targets()[0],
                **options,
            )
            if not compile:
                return made
            if progress is None:
                return module.compile_programs(made)
            return module.compile_programs(made, progress=progress)

        convert.__wrapped__ = module.convert  # type: ignore[attr-defined]
        monkeypatch.setattr(module, "convert", convert)

    def get(
        self,
        into: Path,
        family: str = MODEL,
        *,
        variant: Variant = "fused",
        target: Target = "macOS14",
        precision: Precision = "fp16",
        components: Any = None,
        **options: Any,
    ) -> ConvertedModel:
        """The tiny ``family`` (``make_tiny_family(family)``, or ``make_tiny_components()`` for
        ``SMALL``, unless ``components`` are given, as they must be when ``loras`` were read
        against them) at 64x64 into ``into``. ``options`` go to ``convert`` (``stateful``,
        ``loras``, ``styles``, ``controlnet``)."""
        return self.convert(
            (lambda: components) if components is not None else lambda: make_components(family),
            cache_dir=into,
            model=MODEL if family == SMALL else family,
            fingerprint=fingerprint(family),
            size=SIZE,
            precision=precision,
            target=target,
            variant=variant,
            **options,
        )
