"""The check behind each domain's "no function takes the whole settings" test (docs/extending.md)."""

import ast
from pathlib import Path


def functions_taking_settings(package: Path, doors: set[tuple[str, str]]) -> list[str]:
    """`file:line name` of every function under `package` with a parameter named `settings`, except
    the doors, given as (path relative to the package, function name)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in doors:
                names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
                if "settings" in names:
                    found.append(f"{rel}:{node.lineno} {node.name}")
    return found
