"""Child-process side of a Python entry point: `python -m cronpy._entry`.

The parent passes the target, arguments and run context as JSON in $CRONPY_ENTRY. The child
imports the target with the jobs file's folder first on sys.path, calls it, and writes the
return value (or the traceback) as JSON to the result file. Exit status: 0 on return, 1 on
an exception, 2 when the target cannot be imported.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import traceback
from typing import Any


def _write(path: str, data: dict[str, Any]) -> None:
    try:
        text = json.dumps(data)
    except (TypeError, ValueError):
        data = dict(data, result=repr(data.get("result")), note="the return value is not JSON; stored as repr")
        text = json.dumps(data)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def main() -> int:
    spec = json.loads(os.environ.pop("CRONPY_ENTRY"))
    result_file = spec["result_file"]
    sys.path.insert(0, spec["path"])
    module_name, _, attr = spec["target"].partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception:
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        _write(result_file, {"error": f"cannot load {spec['target']}:\n{tb}"})
        return 2
    kwargs = dict(spec["kwargs"])
    try:
        params = inspect.signature(target).parameters
        if "context" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs.setdefault("context", spec["context"])
    except (TypeError, ValueError):
        pass
    try:
        result = target(*spec["args"], **kwargs)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        _write(result_file, {"error": None if code == 0 else f"SystemExit({exc.code!r})"})
        return code
    except BaseException:
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        _write(result_file, {"error": tb})
        return 1
    sys.stdout.flush()
    _write(result_file, {"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
