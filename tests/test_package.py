"""`import ctrag` stays light (no torch / faiss / transformers) and exposes the pipeline lazily."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light_and_pipeline_is_lazy() -> None:
    code = (
        "import sys, ctrag\n"
        "mods = ('torch', 'faiss', 'transformers', 'sentence_transformers', 'monai')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from ctrag.generation.pipeline import GenerationPipeline\n"
        "assert ctrag.Pipeline is GenerationPipeline\n"
        "print(ctrag.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"


def test_library_modules_read_the_version_without_importing_the_package_root() -> None:
    """``import ctrag`` inside a submodule would run the root's lazy attributes from below (an upward import)."""
    import ast
    from pathlib import Path

    import ctrag
    from ctrag._version import __version__

    assert ctrag.__version__ == __version__
    offenders = []
    for path in Path(ctrag.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if "ctrag" in names or (isinstance(node, ast.ImportFrom) and node.module == "ctrag"):
                offenders.append(str(path))
    assert offenders == []


def test_only_the_cli_imports_the_service_and_the_service_never_imports_the_cli() -> None:
    """The service sits above the library and below the CLI: library code never reaches up into either."""
    import ast
    from pathlib import Path

    import ctrag

    root = Path(ctrag.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        package = path.relative_to(root).parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules.append(node.module)
            for module in modules:
                if module.startswith("ctrag.serve") and package not in ("serve", "cli"):
                    offenders.append(f"{path.relative_to(root)} imports {module}")
                if module.startswith("ctrag.cli") and package not in ("cli", "__main__.py"):  # python -m ctrag
                    offenders.append(f"{path.relative_to(root)} imports {module}")
    assert offenders == []


def test_data_package_names_load_lazily_and_all_resolve() -> None:
    """``ctrag.data`` defers its submodules (a text search must not import nibabel); every exported name resolves."""
    import ctrag.data as data

    assert sorted(data.__all__) == sorted(data._HOMES)
    for name in data.__all__:
        assert getattr(data, name) is getattr(__import__(data._HOMES[name], fromlist=[name]), name)
    code = "import sys\nfrom ctrag.data import Case, Corpus\nassert 'nibabel' not in sys.modules\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_python_dash_m_ctrag_runs_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "ctrag", "labels", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "Usage" in done.stdout and "labels" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "ctrag", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
