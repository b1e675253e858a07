"""How the ISMoE algorithms present themselves in QGIS: groups, tags, icon, help URL, help text.

One table per concern, keyed by the algorithm's name(); :class:`Presented` turns them into the
QgsProcessingAlgorithm methods (group, groupId, tags, icon, svgIconPath, helpUrl) for every algorithm of
the provider (IsmoeAlgorithm and the shipped models' IsmoeModelAlgorithm), so no algorithm repeats them
(shortHelpString: IsmoeAlgorithm builds it from the declarations with ``parameter_help``).

Groups are numbered in workflow order (the Toolbox sorts groups by name): 0 Setup, 1 Prepare,
2 Train, 3 Predict, 4 Evaluate and interpret, 5 Model chains.

``labelled_help`` (free text) and ``parameter_help`` (an intro, one entry per declared parameter, an outro)
escape the text for the help panel (HTML: '<factor>' would be dropped as an
unknown tag) and name each parameter by the label the form shows, with its id for qgis_process
and processing.run: 'FACTORS: ...' becomes '<b>Factor layers</b> (FACTORS): ...', and 'FACTORS' in the
running text '<i>Factor layers</i>'. qgis_process prints the help to a terminal: plain text there,
'Factor layers (FACTORS): ...', ids kept in the running text.
"""
import html
import os
import re

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QIcon

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICON_PATH = os.path.join(PLUGIN_DIR, "icons", "ismoe.svg")
HELP_DIR = os.path.join(PLUGIN_DIR, "help")

# (groupId, group name) in workflow order.
GROUPS = {
    "setup": "0 Setup",
    "prepare": "1 Prepare data",
    "train": "2 Train",
    "predict": "3 Predict",
    "evaluate": "4 Evaluate and interpret",
    "models": "5 Model chains",
}
ALGORITHM_GROUP = {
    "installdependencies": "setup",
    "preparedataset": "prepare",
    "train": "train",
    "predict": "predict",
    "evaluate": "evaluate",
    "seasonalimportance": "evaluate",
}

COMMON_TAGS = ["ismoe", "soil moisture", "hydrology", "mixture of experts", "moe", "deep learning",
               "machine learning", "neural network", "interpretable", "interpretability", "xai"]
TAGS = {
    "installdependencies": ["install", "dependencies", "pytorch", "torch", "pip", "cuda", "gpu", "setup"],
    "preparedataset": ["dataset", "prepare", "align", "resample", "raster", "time series", "stations",
                       "in situ", "training data", "cube", "netcdf"],
    "train": ["train", "training", "lstm", "cnn", "cnn-lstm", "convolutional", "recurrent", "router",
              "routing", "gating", "pytorch", "torch", "model"],
    "predict": ["predict", "prediction", "inference", "map", "raster", "weights", "routing weight",
                "dominant factor", "temporal", "lstm", "cnn-lstm"],
    "evaluate": ["evaluate", "evaluation", "validation", "metrics", "skill", "rmse", "ubrmse", "correlation",
                 "bias", "baseline", "persistence", "climatology", "report", "seasonal importance"],
    "seasonalimportance": ["seasonal", "importance", "season", "month", "chart", "plot", "weights",
                           "routing weight", "factor", "drivers", "attribution"],
}


def _name(alg):
    return alg if isinstance(alg, str) else alg.name()


def group_id(alg):
    return ALGORITHM_GROUP.get(_name(alg), "models")


def group(alg):
    return GROUPS[group_id(alg)]


def tags(alg):
    seen, out = set(), []
    for tag in TAGS.get(_name(alg), []) + COMMON_TAGS:
        if tag not in seen:
            seen.add(tag)
            out.append(tag)
    return out


_ICON = None


def icon():
    """The plugin's icon (icons/ismoe.svg), or QGIS's generic algorithm icon when it is missing."""
    global _ICON
    if _ICON is None:
        _ICON = QIcon(ICON_PATH) if os.path.exists(ICON_PATH) else \
            QgsApplication.getThemeIcon("/processingAlgorithm.svg")
    return _ICON


def help_path(alg):
    return os.path.join(HELP_DIR, "%s.html" % _name(alg))


def help_url(alg):
    """file:// URL of the algorithm's page in the plugin's help/ folder ('' when it is missing)."""
    path = help_path(alg)
    if not os.path.exists(path):
        path = os.path.join(HELP_DIR, "index.html")
    return QUrl.fromLocalFile(path).toString() if os.path.exists(path) else ""


_PARAM_AT = r"(?:^|(?<=\n)|(?<=\. )|(?<=: ))"


def help_is_html():
    """The dialog's help panel renders shortHelpString as HTML; qgis_process (platform 'qgis_process')
    prints it as it is to a terminal, so it gets plain text there."""
    try:
        return QgsApplication.platform() != "qgis_process"
    except Exception:  # noqa: BLE001
        return True


def labelled_help(alg, text, as_html=None):
    """Help text with parameters named by label (with their id), HTML-escaped for the help panel.

    'NAME: ...', 'NAME (note): ...' and 'NAME / OTHER: ...' at the start of a line or a sentence become
    '<b>Label</b> (NAME): ...'; in HTML other mentions of a parameter id become '<i>Label</i>'. A parameter
    without such a line is named 'Label (NAME)' where it first appears.
    as_html: escape and use <b> (default: unless run by qgis_process, see help_is_html)."""
    return _labelled(alg, [text], as_html)


def parameter_help(alg, intro, entries, outro="", as_html=None):
    """The help of an algorithm from its declarations (IsmoeAlgorithm.shortHelpString): `intro`, then one
    line per (NAME, text) of `entries` headed '<b>Label</b> (NAME): ' (plain text for qgis_process), then
    `outro`; the intro and outro are free text as in labelled_help, and parameter ids in any of them are
    labelled the same way."""
    chunks = []
    for text in (intro, entries, outro):
        if not text:
            continue
        if chunks:
            chunks.append("\n\n")
        if text is entries:
            for i, entry in enumerate(entries):
                if i:
                    chunks.append("\n")
                chunks.append(tuple(entry))
        else:
            chunks.append(text)
    return _labelled(alg, chunks, as_html)


def _labelled(alg, chunks, as_html=None):
    """chunks: free text (str; 'NAME: ' headings found as in labelled_help) or (NAME, text) entries."""
    as_html = help_is_html() if as_html is None else as_html
    esc = (lambda t: html.escape(t, quote=False)) if as_html else (lambda t: t)
    bold = "<b>%s</b>" if as_html else "%s"
    labels = {p.name(): p.description() for p in alg.parameterDefinitions()}
    if not labels:
        return "".join(esc(c) if isinstance(c, str) else "%s: %s" % (c[0], esc(c[1])) for c in chunks)
    names = sorted(labels, key=len, reverse=True)
    name_re = "|".join(re.escape(n) for n in names)
    head = re.compile(r"%s((?:%s)(?:\s*/\s*(?:%s))*)(?: \(([^()]*)\))?:" % (_PARAM_AT, name_re, name_re))

    def label_of(name):
        return esc(labels.get(name, name).rstrip(".:"))

    def heading(ids, note=None):
        note = ", %s" % note if note else ""
        return "%s (%s%s):" % (" / ".join(bold % label_of(n) for n in ids), " / ".join(ids), note)

    parts, headed = [], set()
    for chunk in chunks:
        if not isinstance(chunk, str):          # a declared entry: its heading, then its text
            name, text = chunk
            parts.append(("head", heading([name])))
            parts.append(("text", " " + esc(text)))
            headed.add(name)
            continue
        out = esc(chunk)
        pos = 0
        for m in head.finditer(out):
            parts.append(("text", out[pos:m.start()]))
            ids = [s.strip() for s in m.group(1).split("/")]
            parts.append(("head", heading(ids, m.group(2))))
            headed.update(ids)
            pos = m.end()
        parts.append(("text", out[pos:]))
    # 'NAME=value' (a value does not end with the sentence's full stop)
    mention = re.compile(r"(?<![A-Za-z0-9_/])(%s)(=[^\s,;)]*[^\s,;).])?(?![A-Za-z0-9_])" % name_re)
    introduced = set(headed)

    def inline(m):
        name, value = m.group(1), m.group(2)
        first = name not in introduced  # a parameter without its own line: label it where it first appears
        introduced.add(name)
        if value:  # 'MODEL=cnn_lstm' is what one types: keep it, labelled the first time
            return "%s (%s%s)" % (("<i>%s</i>" if as_html else "%s") % label_of(name), name, value) \
                if first else name + value
        if as_html:
            return "<i>%s</i>%s" % (label_of(name), " (%s)" % name if first else "")
        return "%s (%s)" % (label_of(name), name) if first else name  # a terminal user types the ids

    return "".join(mention.sub(inline, chunk) if kind == "text" else chunk for kind, chunk in parts)


class Presented:
    """Mixin of the provider's algorithms: how they present themselves, from the tables above."""

    def group(self):
        from qgis.PyQt.QtCore import QCoreApplication
        return QCoreApplication.translate(type(self).__name__, group(self))

    def groupId(self):  # noqa: N802
        return group_id(self)

    def tags(self):
        return tags(self)

    def icon(self):
        return icon()

    def svgIconPath(self):  # noqa: N802
        return ICON_PATH

    def helpUrl(self):  # noqa: N802
        return help_url(self)
