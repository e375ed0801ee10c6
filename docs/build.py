"""Build the API reference from the docstrings (pdoc, numpy docstring format).

    python docs/build.py [OUTPUT_FOLDER]        (default: docs/_build)

Any warning pdoc raises (a module that fails to import, an annotation or
docstring it cannot parse, an unresolvable cross-reference) fails the build:
warnings are errors.  Third-party import warnings are not pdoc's and pass.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pdoc  # noqa: E402
import pdoc.render  # noqa: E402

# the package and its public subpackages (its __all__ lists only data and simulate, and
# pdoc follows __all__); the CLI documents itself (`coreg --help`)
MODULES = [
    "coregulation", "coregulation.models", "coregulation.inference",
    "coregulation.physio", "coregulation.synchrony",
    "coregulation.plots", "coregulation.datasets",
]


def build(output: Path) -> list[str]:
    """Write the HTML reference into ``output``; return pdoc's warnings (empty if clean)."""
    pdoc.render.configure(docformat="numpy", math=True, show_source=False,
                          footer_text="coregulation API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=output)
    pdoc_dir = os.path.dirname(pdoc.__file__) + os.sep
    return [f"{w.category.__name__}: {w.message}" for w in caught
            if w.filename.startswith(pdoc_dir)]


def main() -> int:
    output = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "_build")
    problems = build(output)
    for problem in problems:
        print(problem, file=sys.stderr)
    pages = sorted(output.rglob("*.html"))
    if problems:
        print(f"docs: {len(problems)} warning(s); warnings are errors", file=sys.stderr)
        return 1
    print(f"docs: {len(pages)} pages in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
