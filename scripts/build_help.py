#!/usr/bin/env python3
"""Write the help pages the plugin ships: ismoe_qgis/help/<algorithm>.html and index.html.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/build_help.py [OUT_DIR]    (or: make help)

Each algorithm's helpUrl() points at its page (file://, inside the plugin folder, so it works
offline and from a ZIP install). A page holds the algorithm's help text (parameters named by the
labels the form shows), a table of its parameters (label, id, type, default, the names an enum
accepts) and its outputs. Run it again when an algorithm's parameters or help change
(tests/test_zip.py checks every label is on its page); `make zip` runs it first.
"""
import html
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qgis_headless  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "ismoe_qgis", "help")

CSS = """body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;vertical-align:top;text-align:left}
code{background:#f4f4f4;padding:0 .2em}h1 img{height:1.3em;vertical-align:middle}"""


def start_qgis():
    os.environ["ISMOE_HELP_GENERIC"] = "1"  # no paths or GPU verdicts of the machine that builds the pages
    return qgis_headless.start_qgis()


def _default(param):
    value = param.defaultValue()
    if value is None or value == "":
        return ""
    if param.type() == "enum":
        opts = param.options()
        try:
            return opts[int(value)]
        except (TypeError, ValueError, IndexError):
            return str(value)
    return str(value)


def _page(title, body):
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title>"
            "<style>%s</style></head><body>\n%s\n</body></html>\n" % (html.escape(title), CSS, body))


def algorithm_page(alg):
    # outside qgis_process shortHelpString() is HTML already (presentation.parameter_help); a model's is text
    text = alg.shortHelpString() or ""
    help_html = html.escape(text, quote=False) if hasattr(alg, "childAlgorithms") else text
    paras = "".join("<p>%s</p>\n" % p for p in help_html.split("\n") if p.strip())
    rows = []
    for p in alg.parameterDefinitions():
        accepts = ""
        if p.type() == "enum":
            accepts = ", ".join("<code>%d</code> or <code>%s</code>" % (i, html.escape(o))
                                for i, o in enumerate(p.options()))
        optional = " (optional)" if p.flags() & 0x8 else ""  # FlagOptional = 8 in 3.22 and later
        rows.append("<tr><td>%s%s</td><td><code>%s</code></td><td>%s</td><td>%s</td><td>%s</td></tr>"
                    % (html.escape(p.description()), optional, html.escape(p.name()), html.escape(p.type()),
                       html.escape(_default(p)), accepts))
    outs = "".join("<tr><td>%s</td><td><code>%s</code></td><td>%s</td></tr>"
                   % (html.escape(o.description()), html.escape(o.name()), html.escape(o.type()))
                   for o in alg.outputDefinitions())
    example = " ".join("%s=..." % p.name() for p in alg.parameterDefinitions()
                       if not (p.flags() & 0x8))[:300]
    body = ("<h1><img src=\"../icons/ismoe.svg\" alt=\"\"> %s</h1>\n<p>Algorithm id <code>%s</code>, group "
            "<i>%s</i>. <a href=\"index.html\">All ISMoE algorithms</a>.</p>\n%s"
            "<h2>Parameters</h2>\n<table><tr><th>Label in the form</th><th>Name (qgis_process, processing.run)"
            "</th><th>Type</th><th>Default</th><th>Values</th></tr>\n%s\n</table>\n"
            "<h2>Outputs</h2>\n<table><tr><th>Output</th><th>Name</th><th>Type</th></tr>\n%s\n</table>\n"
            "<h2>Headless</h2>\n<pre>qgis_process run %s -- %s</pre>\n<p>Enum parameters take the index or the "
            "value's name (e.g. <code>DEVICE=cpu</code>).</p>\n"
            % (html.escape(alg.displayName()), html.escape(alg.id()), html.escape(alg.group()), paras,
               "\n".join(rows), outs, html.escape(alg.id()), html.escape(example)))
    return _page("%s (%s)" % (alg.displayName(), alg.id()), body)


def index_page(algs):
    by_group = {}
    for alg in algs:
        by_group.setdefault(alg.group(), []).append(alg)
    items = []
    for group in sorted(by_group):
        links = "".join("<li><a href=\"%s.html\">%s</a> <code>%s</code></li>"
                        % (html.escape(a.name()), html.escape(a.displayName()), html.escape(a.id()))
                        for a in sorted(by_group[group], key=lambda a: a.displayName()))
        items.append("<h3>%s</h3><ul>%s</ul>" % (html.escape(group), links))
    body = ("<h1><img src=\"../icons/ismoe.svg\" alt=\"\"> ISMoE soil moisture</h1>\n"
            "<p>Daily soil moisture from an interpretable Mixture-of-Experts: one CNN-LSTM expert per "
            "environmental factor, weighted so that each factor's weight says how much it contributes, pixel "
            "by pixel and day by day. The weights are written as GeoTIFFs next to the soil-moisture map.</p>\n"
            "<h2>First: PyTorch</h2>\n<p>Training and prediction need PyTorch for QGIS's Python. When it is "
            "missing the plugin shows a warning with an <i>Install PyTorch…</i> button at start; the same "
            "installer is <a href=\"installdependencies.html\">0 Setup › Install PyTorch</a> in the Processing "
            "Toolbox (<code>qgis_process run ismoe:installdependencies</code> headless). It installs into a "
            "folder of your QGIS profile that only this plugin uses, never replaces QGIS's numpy, and offers "
            "the CPU or the CUDA build (it says which fits this machine).</p>\n"
            "<h2>Workflow</h2>\n<p>The groups are numbered in the order you use them: prepare a dataset cube "
            "from factor rasters and a soil-moisture target, train a model, predict maps and routing weights "
            "(loaded styled and time-navigable), then evaluate and chart which factor drives soil moisture "
            "when. <i>5 Model chains</i> holds a Model Builder model that runs prepare, train and predict in "
            "one go.</p>\n%s\n<h2>More</h2>\n<p>The README and docs/ folder shipped with the plugin describe "
            "the model, the inputs, the demo region and the evaluation. Licence: GPL-2.0-or-later (LICENSE).</p>"
            % "\n".join(items))
    return _page("ISMoE soil moisture: help", body)


def build(out_dir=DEFAULT_OUT):
    _app, provider = start_qgis()
    os.makedirs(out_dir, exist_ok=True)
    algs = sorted(provider.algorithms(), key=lambda a: a.id())
    written = []
    for alg in algs:
        path = os.path.join(out_dir, "%s.html" % alg.name())
        with open(path, "w", encoding="utf-8") as f:
            f.write(algorithm_page(alg))
        written.append(path)
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(index_page(algs))
    written.append(path)
    return written


if __name__ == "__main__":
    for p in build(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT):
        print(os.path.relpath(p, REPO_ROOT))
