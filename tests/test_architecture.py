"""Architecture guards (issue 12), beside test_plugin.test_core_imports_no_qgis_or_qt (the core imports no
qgis/Qt): read the sources with ast, so they run without QGIS.

- algorithms/ (QGIS glue) imports nothing from ui/ (the dock);
- ui/ imports no rasterio or torch: data access goes through the core (model.prediction_folder, ...);
- no module outside ismoe_qgis/options.py defines an option list (a module-level tuple/list/dict literal
  named like one), so each list has one owner; options.py itself imports neither torch nor qgis;
- the Makefile reads TORCH_VERSION from options.py instead of repeating it.
"""
import ast
import re
import subprocess
import sys
import textwrap

from conftest import PLUGIN_NAME, REPO_ROOT

PKG = REPO_ROOT / PLUGIN_NAME
OPTIONS = PKG / "options.py"
# names an option list goes by (the lists of options.py, and the spellings they had before it owned them)
OPTION_LIST_NAME = re.compile(r"^_?(MODEL_TYPES|MEMORIES|MEMORY_MODES|MIXTURES|MIXTURE_ENUM|WEIGHT_MEANING|"
                              r"ROUTER_INPUTS|GAP_POLICIES|CUBE_MODES|SCHEDULES|SPLITS|DEVICES|RESAMPLINGS|"
                              r"EVAL_PERIODS|PERIODS|PERIOD_OPTIONS|CHART_PERIODS|BASELINES|STYLE_OPTIONS|"
                              r"CHART_STYLES|VARIANTS|VARIANT_LABELS|TORCH_VARIANTS|TORCH_VERSION|IMPORTANCE_MEASURES)$")


def _modules(folder):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path):
    """(absolute module name, names) of every import in the file, relative imports resolved."""
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.parts[-1] != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names]))
    return out


def _imported_modules(path):
    """Every module the file imports, with `from pkg import sub` counted as pkg.sub too."""
    mods = set()
    for mod, names in _imports(path):
        mods.add(mod)
        mods.update(f"{mod}.{n}" for n in names)
    return mods


def test_algorithms_import_no_ui():
    ui = f"{PLUGIN_NAME}.ui"
    bad = {str(p.relative_to(REPO_ROOT)): sorted(m for m in _imported_modules(p) if m == ui or m.startswith(ui + "."))
           for p in _modules(PKG / "algorithms")}
    assert not {k: v for k, v in bad.items() if v}, "algorithms/ imports ui/ (glue must not depend on the dock)"


def test_ui_imports_no_rasterio_or_torch():
    bad = {}
    for p in _modules(PKG / "ui"):
        hits = sorted(m for m in _imported_modules(p) if m.split(".")[0] in ("rasterio", "torch"))
        if hits:
            bad[str(p.relative_to(REPO_ROOT))] = hits
    assert not bad, "ui/ reads data or runs models itself instead of through the core: %s" % bad


def _literal_lists(path):
    """Module-level names assigned a tuple/list/set/dict literal (or a comprehension) that are named like an
    option list."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    hits = []
    for node in tree.body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        literal = isinstance(value, (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.ListComp, ast.Constant))
        for t in targets:
            if isinstance(t, ast.Name) and OPTION_LIST_NAME.match(t.id) and literal:
                hits.append(f"{t.id} (line {node.lineno})")
    return hits


def test_no_option_list_outside_options():
    assert _literal_lists(OPTIONS), "the pattern no longer matches options.py's own lists"
    bad = {}
    for p in _modules(PKG) + _modules(REPO_ROOT / "scripts"):
        if p == OPTIONS:
            continue
        hits = _literal_lists(p)
        if hits:
            bad[str(p.relative_to(REPO_ROOT))] = hits
    assert not bad, "option lists have one owner, ismoe_qgis/options.py; import them from there: %s" % bad


def test_options_import_no_torch_or_qgis():
    code = textwrap.dedent("""
        import json, sys
        for name in ("torch", "qgis", "PyQt5", "rasterio"):
            sys.modules[name] = None          # `import name` raises ImportError
        import %s.options as o
        print(json.dumps([o.TORCH_VERSION, list(o.MIXTURE_ENUM)]))
    """ % PLUGIN_NAME)
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, enum = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert enum[0] == "additive" and re.fullmatch(r"\d+\.\d+\.\d+", version)


def test_makefile_reads_the_torch_version_from_options():
    make = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    line = [ln for ln in make.splitlines() if ln.startswith("TORCH_VERSION")]
    assert len(line) == 1 and "options.py" in line[0] and not re.search(r":=\s*\d", line[0]), line
