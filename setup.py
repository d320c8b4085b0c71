"""Build step that ships the committed weights inside the wheel (everything else is in
pyproject.toml).

The checkout keeps its weights in ``weights/NAME`` (docs, configs and tests refer to them
there); an installed package has no checkout, so ``build_py`` copies every folder of
``weights/`` that has a ``config.json`` to ``flipnet/data/weights/NAME`` in the wheel, where
``flipnet.weights.weights_search_path`` finds them last. See docs/INSTALL.md.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PARTIAL = (".tmp", ".old")  # folders and files of an interrupted write are never shipped


def shipped_weight_files() -> list[Path]:
    """The files under every ``weights/NAME`` folder with a ``config.json`` (hidden and partial
    ones left out), sorted."""
    if not (ROOT / "weights").is_dir():
        return []
    return sorted(f for folder in (ROOT / "weights").iterdir()
                  if (folder / "config.json").is_file() and not folder.name.endswith(PARTIAL)
                  for f in folder.rglob("*")
                  if f.is_file() and not any(part.startswith(".") or part.endswith(PARTIAL)
                                             for part in f.relative_to(folder).parts))


class BuildPyWithWeights(build_py):
    """``build_py``, then copy ``weights/NAME/*`` to ``flipnet/data/weights/NAME/``."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's weights/ directly
            return
        files = shipped_weight_files()
        if not files:
            raise SystemExit(f"{ROOT / 'weights'}: no weights folders to ship (is this a full "
                             "checkout or sdist?)")
        for f in files:
            dst = Path(self.build_lib, "flipnet", "data", "weights", f.relative_to(ROOT / "weights"))
            self.mkpath(str(dst.parent))
            self.copy_file(str(f), str(dst))


setup(cmdclass={"build_py": BuildPyWithWeights})
