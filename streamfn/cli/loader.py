"""Loading a pipeline file: import it and find its App, turning every way that can fail into a ConfigError."""

from __future__ import annotations

import ast
import importlib.util
import sys
import traceback
from pathlib import Path

from streamfn.app import App
from streamfn.engine.chain import check_chains
from streamfn.errors import ConfigError


def load_app(path: str | Path) -> App:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"pipeline file {str(file)!r} does not exist")
    name = f"streamfn_pipeline_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"pipeline file {str(file)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.resolve().parent))  # so a pipeline can import its neighbours
    try:
        spec.loader.exec_module(module)
    except ConfigError as error:
        raise _attributed(error, file) from None
    except SyntaxError as error:
        raise ConfigError(f"cannot import {file}: SyntaxError at line {error.lineno}: {error.msg}") from None
    except Exception as error:
        line = _line_in(file, error)
        where = f" (line {line})" if line else ""
        raise ConfigError(f"cannot import {file}{where}: {type(error).__name__}: {error}") from None
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if not apps:
        raise ConfigError(f"{file} declares no App: create one with app = App('name')")
    if len(apps) > 1:
        raise ConfigError(f"{file} declares {len(apps)} Apps ({', '.join(a.name for a in apps)}); declare one")
    if not any(f.source is not None for f in apps[0].functions.values()):
        raise ConfigError(f"{file} declares no function: decorate a handler with @app.function(source=...)")
    check_chains(apps[0])
    return apps[0]


def _line_in(file: Path, error: BaseException) -> int | None:
    """The line of the pipeline file where `error` was raised from, if it was."""
    resolved = str(file.resolve())
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if str(Path(f.filename).resolve()) == resolved]
    return lines[-1] if lines else None


def _attributed(error: ConfigError, file: Path) -> ConfigError:
    """Name the function whose decorator raised `error` (a source is validated before its function exists)."""
    line = _line_in(file, error)
    if error.function or line is None:
        return error
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            d.lineno <= line <= (d.end_lineno or d.lineno) for d in node.decorator_list
        ):
            return error.for_function(node.name)
    return ConfigError(f"{file}, line {line}: {error.message}")
