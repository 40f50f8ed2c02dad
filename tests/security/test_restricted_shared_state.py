"""Restricted mode: state the host shares with restricted code (red-team round 4).

Three kinds of escape, each run first as plain Python (the control: the effect happens) and
then as restricted code (no effect on the host's real state):

* lazy work the host runs later: a generator expression, or a lazy object keeping a host
  callable (``map(save, ...)``, ``defaultdict(save)``, ``property(save)``), consumed by host
  code after the request, would call the host callable outside any sandbox;
* process-wide setters of offered modules (``random.seed``, ``csv.field_size_limit``,
  ``Mapping.register``...);
* mutable containers of modules and host classes (``html.entities.html5.update``).
"""

from __future__ import annotations

import calendar
import collections.abc
import csv
import decimal
import hashlib
import html
import html.entities
import keyword
import numbers
import random
import types
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import ImportRefused, Policy, Sandbox
from gae_sandbox.restricted import OutsideSandboxRefused


@pytest.fixture
def sandbox(policy: Policy) -> Sandbox:
    return Sandbox(policy)


def plain(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The control: the same source as ordinary Python, outside any sandbox."""
    exec(compile(source, "<plain>", "exec"), namespace)
    return namespace


# --- 1. lazy work the host runs after the request -----------------------------------------


@dataclass
class Lazy:
    """Restricted code leaves ``lazy`` (or a class) with the host; ``consume`` is the host's
    use of it after the request, which would call the host's ``save``."""

    name: str
    source: str
    consume: Callable[[dict[str, Any]], Any]


LAZY = [
    Lazy("generator_expression", "lazy = (save(p) for p in [1])", lambda ns: list(ns["lazy"])),
    Lazy("map", "lazy = map(save, [1])", lambda ns: list(ns["lazy"])),
    Lazy("filter", "lazy = filter(save, [1])", lambda ns: list(ns["lazy"])),
    Lazy("iter_callable_sentinel", "lazy = iter(save, None)", lambda ns: next(ns["lazy"])),
    Lazy("itertools_starmap", "import itertools\nlazy = itertools.starmap(save, [(1,)])",
         lambda ns: list(ns["lazy"])),
    Lazy("from_itertools_import_takewhile",
         "from itertools import takewhile\nlazy = takewhile(save, [1])",
         lambda ns: list(ns["lazy"])),
    Lazy("itertools_dropwhile", "import itertools\nlazy = itertools.dropwhile(save, [1])",
         lambda ns: list(ns["lazy"])),
    Lazy("itertools_filterfalse", "import itertools\nlazy = itertools.filterfalse(save, [1])",
         lambda ns: list(ns["lazy"])),
    Lazy("itertools_groupby_key", "import itertools\nlazy = itertools.groupby([1], key=save)",
         lambda ns: list(ns["lazy"])),
    Lazy("itertools_accumulate_func",
         "import itertools\nlazy = itertools.accumulate([1, 2], save)",
         lambda ns: list(ns["lazy"])),
    Lazy("heapq_merge_key", "import heapq\nlazy = heapq.merge([1], [2], key=save)",
         lambda ns: list(ns["lazy"])),
    Lazy("defaultdict_factory", "import collections\nlazy = collections.defaultdict(save)",
         lambda ns: ns["lazy"]["missing"]),
    Lazy("defaultdict_factory_set_later",
         "from collections import defaultdict\nlazy = defaultdict(int)\n"
         "lazy.default_factory = save", lambda ns: ns["lazy"]["missing"]),
    Lazy("property", "class C:\n    p = property(save)\nlazy = C()", lambda ns: ns["lazy"].p),
    Lazy("property_setter",
         "class C:\n    p = property(lambda self: 1)\n    p = p.setter(save)\nlazy = C()",
         lambda ns: setattr(ns["lazy"], "p", 1)),
    Lazy("staticmethod", "class C:\n    s = staticmethod(save)\nlazy = C",
         lambda ns: ns["lazy"].s()),
    Lazy("classmethod", "class C:\n    c = classmethod(save)\nlazy = C",
         lambda ns: ns["lazy"].c()),
    Lazy("json_decoder_object_hook", "import json\nlazy = json.JSONDecoder(object_hook=save)",
         lambda ns: ns["lazy"].decode('{"a": 1}')),
    Lazy("difflib_differ_linejunk", "import difflib\nlazy = difflib.Differ(save)",
         lambda ns: list(ns["lazy"].compare(["a\n"], ["b\n"]))),
    Lazy("re_scanner_action", "import re\nlazy = re.Scanner([('a', save)])",
         lambda ns: ns["lazy"].scan("a")),
    Lazy("property_setter_read_off_the_class",
         "class C:\n    p = property(lambda self: 1)\n    p = property.setter(p, save)\n"
         "lazy = C()", lambda ns: setattr(ns["lazy"], "p", 1)),
    # the code's own subclasses of these get a base whose constructor wraps the same way
    Lazy("subclass_of_json_decoder",
         "import json\nclass D(json.JSONDecoder):\n    pass\nlazy = D(object_hook=save)",
         lambda ns: ns["lazy"].decode('{"a": 1}')),
    Lazy("subclass_of_property",
         "class P(property):\n    pass\nclass C:\n    p = P(save)\nlazy = C()",
         lambda ns: ns["lazy"].p),
    Lazy("subclass_of_map", "class M(map):\n    pass\nlazy = M(save, [1])",
         lambda ns: list(ns["lazy"])),
    Lazy("subclass_of_defaultdict",
         "from collections import defaultdict\nclass D(defaultdict):\n    pass\nlazy = D(save)",
         lambda ns: ns["lazy"]["missing"]),
]


@pytest.mark.parametrize("case", LAZY, ids=[case.name for case in LAZY])
def test_lazy_work_left_with_the_host_does_not_run_outside(case: Lazy, sandbox: Sandbox,
                                                           tmp_path: Path) -> None:
    """The host's ``save`` writes a file: called by the host's later use of what restricted
    code left, it would run with no sandbox. Restricted code's version refuses there."""
    target = tmp_path / "outside" / "written.txt"
    target.parent.mkdir()

    def save(*args: Any, **kwargs: Any) -> int:
        target.write_text("written by a host callable after the request\n")
        return 1

    control = plain(case.source, {"save": save})
    case.consume(control)
    assert target.exists(), "control: the host's use calls save"
    target.unlink()

    namespace = sandbox.exec(case.source, {"save": save})
    with pytest.raises(OutsideSandboxRefused):
        case.consume(namespace)
    assert not target.exists()
    assert not list(target.parent.iterdir())


def test_lazy_objects_keep_working_inside_the_sandbox(sandbox: Sandbox) -> None:
    """Generator expressions, ``map``/``filter``/``sorted``, ``defaultdict`` (now writable
    like a dict), ``isinstance`` against the wrapped constructors, a property: as before."""
    namespace = sandbox.exec(
        "import collections, itertools, heapq, json\n"
        "from collections import defaultdict\n"
        "words = ['b', 'a', 'c', 'a']\n"
        "total = sum(len(w) for w in words)\n"
        "joined = ''.join(w.upper() for w in words if w != 'c')\n"
        "gen = (w for w in words)\n"
        "first = next(gen)\n"
        "later = (w for w in words)\n"
        "mapped = list(map(str.upper, words))\n"
        "kept = sorted(filter(lambda w: w != 'a', words), key=lambda w: w)\n"
        "counts = defaultdict(int)\n"
        "for w in words:\n"
        "    counts[w] = counts[w] + 1\n"
        "groups = collections.defaultdict(set)\n"
        "groups['x'].add(1)\n"
        "same_type = (isinstance(counts, collections.defaultdict), isinstance(map(str, []), map),"
        " isinstance({}, collections.defaultdict))\n"
        "grouped = [(k, len(list(g)))\n"
        "           for k, g in itertools.groupby(sorted(words), key=lambda w: w)]\n"
        "merged = list(heapq.merge([1, 3], [2], key=lambda x: x))\n"
        "starred = list(itertools.starmap(pow, [(2, 3)]))\n"
        "decoder = json.JSONDecoder(object_hook=lambda d: sorted(d))\n"
        "decoded = decoder.decode('{\"b\": 1, \"a\": 2}')\n"
        "class Box:\n"
        "    def __init__(self):\n"
        "        self.value = 2\n"
        "    def double(self):\n"
        "        return 2 * self.value\n"
        "    doubled = property(double)\n"
        "    @staticmethod\n"
        "    def answer():\n"
        "        return 42\n"
        "box = (Box().doubled, Box.answer())\n"
        "safe_left = map(str, [1, 2])\n"
        "class Encoder(json.JSONEncoder):\n"
        "    def default(self, o):\n"
        "        return sorted(o)\n"
        "encoded = json.dumps({'s': {2, 1}}, cls=Encoder)\n"
        "hidden = [hasattr(map, 'original'), hasattr(property.setter, 'original')]\n")
    assert namespace["total"] == 4 and namespace["joined"] == "BAA"
    assert namespace["first"] == "b"
    assert namespace["mapped"] == ["B", "A", "C", "A"] and namespace["kept"] == ["b", "c"]
    assert dict(namespace["counts"]) == {"b": 1, "a": 2, "c": 1}
    assert dict(namespace["groups"]) == {"x": {1}}
    assert namespace["same_type"] == (True, True, False)
    assert namespace["grouped"] == [("a", 2), ("b", 1), ("c", 1)]
    assert namespace["merged"] == [1, 2, 3] and namespace["starred"] == [8]
    assert namespace["decoded"] == ["a", "b"]
    assert namespace["box"] == (4, 42)
    assert namespace["encoded"] == '{"s": [1, 2]}'
    assert namespace["hidden"] == [False, False]
    # a pure built-in kept by a lazy object needs no sandbox; a genexp does
    assert list(namespace["safe_left"]) == ["1", "2"]
    assert sandbox.call(next, namespace["later"]) == "b"  # resumed inside a sandbox
    with pytest.raises(OutsideSandboxRefused):
        next(namespace["gen"])


# --- 2. process-wide setters --------------------------------------------------------------


def _next_random() -> float:
    """The host's next ``random.random()``, without consuming it."""
    state = random.getstate()
    try:
        return random.random()
    finally:
        random.setstate(state)


def _decimal_state() -> tuple[Any, ...]:
    context = decimal.getcontext()
    try:
        divided: Any = decimal.Decimal(1) / 3
    except decimal.DecimalException as error:
        divided = type(error).__name__
    return (divided, sorted(str(k) for k, v in context.traps.items() if v),
            sorted(str(k) for k, v in decimal.DefaultContext.traps.items() if v))


@pytest.fixture
def restore_host_state() -> Iterator[Callable[[], None]]:
    """Puts back what the plain-Python controls change (after the control, and at the end)."""
    saved = (random.getstate(), decimal.getcontext(), decimal.getcontext().copy(),
             dict(decimal.DefaultContext.traps), zoneinfo.TZPATH, calendar.firstweekday(),
             csv.field_size_limit(), csv.get_dialect("excel"))

    def restore() -> None:
        random.setstate(saved[0])
        decimal.setcontext(saved[1])
        saved[1].traps.update(saved[2].traps)
        decimal.DefaultContext.traps.update(saved[3])
        zoneinfo.reset_tzpath(saved[4])
        calendar.setfirstweekday(saved[5])
        csv.field_size_limit(saved[6])
        csv.register_dialect("excel", saved[7])
        if "gae_test" in csv.list_dialects():
            csv.unregister_dialect("gae_test")
    yield restore
    restore()


@dataclass
class Shared:
    name: str
    source: str
    probe: Callable[[], Any]
    names: dict[str, Any] = field(default_factory=dict)


SHARED = [
    Shared("random_seed", "import random\nrandom.seed(1234)", _next_random),
    Shared("random_setstate", "import random\nrandom.setstate(random.Random(1234).getstate())",
           _next_random),
    Shared("decimal_setcontext",
           "import decimal\ndecimal.setcontext(decimal.Context(traps=[decimal.Inexact]))",
           _decimal_state),
    Shared("decimal_getcontext_traps",
           "import decimal\ndecimal.getcontext().traps.update({decimal.Inexact: True})",
           _decimal_state),
    Shared("decimal_default_context_traps",
           "import decimal\ndecimal.DefaultContext.traps.update({decimal.Inexact: True})",
           _decimal_state),
    Shared("decimal_clear_traps", "import decimal\ndecimal.getcontext().clear_traps()",
           _decimal_state),
    Shared("zoneinfo_reset_tzpath", "import zoneinfo\nzoneinfo.reset_tzpath(['/nonexistent'])",
           lambda: zoneinfo.TZPATH),
    Shared("calendar_setfirstweekday", "import calendar\ncalendar.setfirstweekday(6)",
           calendar.firstweekday),
    Shared("calendar_module_calendar", "import calendar\ncalendar.c.setfirstweekday(6)",
           calendar.firstweekday),
    Shared("calendar_unbound_setfirstweekday",
           "import calendar\ncalendar.TextCalendar.setfirstweekday(calendar.c, 6)",
           calendar.firstweekday),
    Shared("decimal_unbound_clear_traps",
           "import decimal\ndecimal.Context.clear_traps(decimal.DefaultContext)",
           _decimal_state),
    Shared("csv_field_size_limit", "import csv\ncsv.field_size_limit(10)",
           lambda: csv.field_size_limit()),
    Shared("csv_register_dialect",
           "import csv\ncsv.register_dialect('excel', delimiter=';')\n"
           "csv.register_dialect('gae_test', delimiter=';')",
           lambda: (csv.get_dialect("excel").delimiter, "gae_test" in csv.list_dialects())),
    Shared("from_csv_import_unregister_dialect",
           "from csv import unregister_dialect\nunregister_dialect('excel')",
           lambda: "excel" in csv.list_dialects()),
]
_ABC_SOURCES = {
    "mapping_register": "import collections.abc\nclass Fake:\n    pass\n"
                        "collections.abc.Mapping.register(Fake)",
    "register_as_decorator": "from collections.abc import Mapping\n"
                             "@Mapping.register\nclass Fake:\n    pass\n",
    "register_with_own_subclass": "import collections.abc\nclass Fake:\n    pass\n"
                                  "class Mine(collections.abc.Mapping):\n    pass\n"
                                  "Mine.register(Fake)",
    "numbers_register": "import numbers\nclass Fake:\n    pass\nnumbers.Integral.register(Fake)",
}


@pytest.mark.parametrize("case", SHARED, ids=[case.name for case in SHARED])
def test_process_wide_setters_are_refused(case: Shared, sandbox: Sandbox,
                                          restore_host_state: Callable[[], None]) -> None:
    before = case.probe()
    plain(case.source, {})
    assert case.probe() != before, "control: plain Python changes the host's state"
    restore_host_state()
    assert case.probe() == before

    with pytest.raises((AttributeError, TypeError)) as refused:
        sandbox.exec(case.source)
    assert case.probe() == before
    if "does not hand out" in str(refused.value):
        assert "Policy.allowed_modules does not change this" in str(refused.value)


@pytest.mark.parametrize("name", sorted(_ABC_SOURCES))
def test_abc_register_is_refused(name: str, sandbox: Sandbox) -> None:
    """``register`` of an abstract class would put the code's class in the host's own
    ``isinstance(x, Mapping)`` checks, through a subclass too."""
    source = _ABC_SOURCES[name]
    abstract = numbers.Integral if "numbers" in name else collections.abc.Mapping
    control = plain(source, {})
    assert isinstance(control["Fake"](), abstract)

    namespace: dict[str, Any] = {}
    with pytest.raises(AttributeError, match="register of an abstract class"):
        sandbox.exec(source, namespace)
    if "Fake" in namespace:
        assert not isinstance(namespace["Fake"](), abstract)


def test_other_process_wide_functions_are_refused(sandbox: Sandbox) -> None:
    """The rest of the table: no visible effect to check, refused by name."""
    for source in ("import time\ntime.tzset()", "import re\nre.purge()",
                   "import zoneinfo\nzoneinfo.ZoneInfo.clear_cache()",
                   "import calendar\ncalendar.LocaleTextCalendar()",
                   "import csv\ncsv.field_size_limit()"):
        with pytest.raises(AttributeError, match="state the whole process shares"):
            sandbox.exec(source)


def test_urllib_offers_only_parse(sandbox: Sandbox) -> None:
    """``urllib`` is on the list for ``urllib.parse``, not its other submodules
    (``urllib.request.install_opener`` is process-wide)."""
    with pytest.raises(ImportRefused):
        sandbox.exec("import urllib.request")
    assert sandbox.exec("import urllib.parse\nx = urllib.parse.quote('a b')")["x"] == "a%20b"


# --- 3. host containers -------------------------------------------------------------------


HOST_ROW = [1]
HOST = types.SimpleNamespace(table={"k": HOST_ROW}, rows=[HOST_ROW])


@pytest.fixture
def restore_containers() -> Iterator[Callable[[], None]]:
    """Puts back the tables the plain-Python controls change (in place, as they are shared)."""
    saved = (dict(html.entities.html5), list(urllib.parse.uses_relative),
             list(urllib.parse.uses_netloc), set(hashlib.algorithms_available),
             list(keyword.kwlist), list(calendar.HTMLCalendar.cssclasses))

    def restore() -> None:
        html.entities.html5.clear()
        html.entities.html5.update(saved[0])
        urllib.parse.uses_relative[:] = saved[1]
        urllib.parse.uses_netloc[:] = saved[2]
        hashlib.algorithms_available.clear()
        hashlib.algorithms_available.update(saved[3])
        keyword.kwlist[:] = saved[4]
        calendar.HTMLCalendar.cssclasses[:] = saved[5]
        HOST_ROW[:] = [1]
        HOST.table.clear()
        HOST.table["k"] = HOST_ROW
    yield restore
    restore()


def _host_probe() -> tuple[Any, ...]:
    """The host's real state: its own calls, and the tables' contents."""
    return (html.unescape("&lt;b&gt;"), urllib.parse.urljoin("https://bank.example/a/b", "c"),
            sorted(hashlib.algorithms_available), list(keyword.kwlist),
            list(calendar.HTMLCalendar.cssclasses), dict(HOST.table), list(HOST_ROW))


CONTAINER_SOURCES = {
    "html5_update": "import html.entities\n"
                    "html.entities.html5.update({'lt;': '<script>'})",
    "html5_item_write": "import html.entities\nhtml.entities.html5['lt;'] = '<script>'",
    "from_import_html5": "from html.entities import html5\nhtml5['lt;'] = '<script>'",
    "uses_relative_clear": "import urllib.parse\nurllib.parse.uses_relative.clear()\n"
                           "urllib.parse.uses_netloc.clear()",
    "algorithms_clear": "import hashlib\nhashlib.algorithms_available.clear()",
    "kwlist_append": "import keyword\nkeyword.kwlist.append('app')",
    "host_class_list": "import calendar\ncalendar.HTMLCalendar.cssclasses.append('app')",
    "host_class_list_through_own_subclass":
        "import calendar\nclass Mine(calendar.HTMLCalendar):\n    pass\n"
        "Mine().cssclasses.append('app')",
    "item_of_a_host_dict": "host.table['k'].append(2)",
    "item_write_of_a_host_dict": "host.table['k'] = [2]",
    "loop_over_a_host_list_of_lists": "for row in host.rows:\n    row.append(2)",
}


@pytest.mark.parametrize("name", sorted(CONTAINER_SOURCES))
def test_host_containers_are_read_only(name: str, sandbox: Sandbox,
                                       restore_containers: Callable[[], None]) -> None:
    source = CONTAINER_SOURCES[name]
    before = _host_probe()
    plain(source, {"host": HOST})
    assert _host_probe() != before, "control: plain Python changes the host's state"
    restore_containers()
    assert _host_probe() == before

    with pytest.raises((AttributeError, TypeError)):
        sandbox.exec(source, {"host": HOST})
    assert _host_probe() == before
    assert html.unescape("&lt;b&gt;") == "<b>"
    assert urllib.parse.urljoin("https://bank.example/a/b", "c") == "https://bank.example/a/c"


def test_reading_shared_containers_and_own_writes_still_work(sandbox: Sandbox) -> None:
    """Module constants read as before (a view: a mappingproxy, a tuple, a frozenset);
    the code's own dicts, lists, classes and instances stay writable."""
    namespace = sandbox.exec(
        "import html.entities, keyword, hashlib, urllib.parse, string\n"
        "amp = html.entities.html5['amp;']\n"
        "n = len(html.entities.name2codepoint)\n"
        "kw = 'if' in keyword.kwlist and len(keyword.kwlist) > 10\n"
        "sha = 'sha256' in hashlib.algorithms_guaranteed\n"
        "joined = urllib.parse.urljoin('https://x.example/a/b', 'c')\n"
        "mine = list(keyword.kwlist)\n"
        "mine.append('app')\n"
        "table = dict(html.entities.html5)\n"
        "table['lt;'] = 'x'\n"
        "letters = string.ascii_letters\n"
        "own = {'a': [1]}\n"
        "own['a'].append(2)\n"
        "own['b'] = []\n"
        "class Registry:\n"
        "    items = []\n"
        "    def __init__(self):\n"
        "        self.seen = {}\n"
        "    def add(self, x):\n"
        "        self.items.append(x)\n"
        "        self.seen[x] = True\n"
        "r = Registry()\n"
        "r.add(1)\n"
        "Registry.items.append(2)\n"
        "r.seen['y'] = 2\n"
        "result = (list(Registry.items), dict(r.seen))\n")
    assert namespace["amp"] == "&" and namespace["n"] > 200
    assert namespace["kw"] and namespace["sha"]
    assert namespace["joined"] == "https://x.example/a/c"
    assert namespace["mine"][-1] == "app" and "app" not in keyword.kwlist
    assert namespace["table"]["lt;"] == "x" and html.entities.html5["lt;"] == "<"
    assert namespace["own"] == {"a": [1, 2], "b": []}
    assert namespace["result"] == ([1, 2], {1: True, "y": 2})


def test_restricted_modules_keep_writing_each_others_tables(app_on_path: Path,
                                                            policy: Policy) -> None:
    """A module compiled by restricted mode is the code's own: its globals stay writable
    from its sibling modules (``registry.ITEMS.append``); an unrestricted app module's are
    read-only views."""
    plugins = app_on_path / "plugins_shared"
    plugins.mkdir()
    (plugins / "__init__.py").write_text("")
    (plugins / "registry.py").write_text("ITEMS = []\nTABLE = {}\n")
    (plugins / "user.py").write_text(
        "from plugins_shared import registry\n"
        "from plugins_shared.registry import TABLE\n"
        "registry.ITEMS.append(1)\n"
        "TABLE['k'] = 2\n")
    (app_on_path / "host_tables.py").write_text("ITEMS = []\n")
    sandbox = Sandbox(policy.replace(restricted_modules=("plugins_shared.*",)))
    with sandbox:
        import plugins_shared.user  # type: ignore[import-not-found]  # noqa: F401
        from plugins_shared import registry  # type: ignore[import-not-found]

    assert registry.ITEMS == [1] and registry.TABLE == {"k": 2}
    with pytest.raises(AttributeError):
        sandbox.exec("import host_tables\nhost_tables.ITEMS.append(1)")
    import host_tables  # type: ignore[import-not-found]

    assert host_tables.ITEMS == []


# --- round 5: unbound setters, metaclasses --------------------------------------------------


def test_unbound_setters_still_change_the_codes_own_objects(sandbox: Sandbox) -> None:
    namespace = sandbox.exec(
        "import calendar, decimal\n"
        "mine = calendar.TextCalendar()\n"
        "calendar.TextCalendar.setfirstweekday(mine, 6)\n"
        "day = mine.firstweekday\n"
        "ctx = decimal.Context()\n"
        "decimal.Context.clear_traps(ctx)\n"
        "traps = sum(1 for v in ctx.traps.values() if v)\n")
    assert namespace["day"] == 6
    assert namespace["traps"] == 0


def test_abc_register_through_the_metaclass_is_refused(sandbox: Sandbox) -> None:
    source = ("import numbers, collections.abc\nclass Fake:\n    pass\n"
              "numbers.ABCMeta.register(collections.abc.Mapping, Fake)\n")
    control = plain(source, {})
    assert isinstance(control["Fake"](), collections.abc.Mapping)

    namespace: dict[str, Any] = {}
    with pytest.raises(AttributeError, match="metaclasses"):
        sandbox.exec(source, namespace)
    if "Fake" in namespace:
        assert not isinstance(namespace["Fake"](), collections.abc.Mapping)


def test_view_comparison_through_a_metaclass_built_class_is_refused(sandbox: Sandbox) -> None:
    source = ("import numbers, html.entities\n"
              "def eq(self, other):\n"
              "    other['amp;'] = 'PWNED'\n"
              "    return True\n"
              "P = numbers.ABCMeta('P', (), {'__eq__': eq})\n"
              "html.entities.html5 == P()\n")
    real = dict(html.entities.html5)
    try:
        plain(source, {})
        assert html.unescape("a &amp; b") == "a PWNED b", "control: the real dict is written"
    finally:
        html.entities.html5.clear()
        html.entities.html5.update(real)
        html.unescape.__globals__["_charref"] = html.unescape.__globals__["_charref"]
    assert html.unescape("a &amp; b") == "a & b"

    with pytest.raises(AttributeError, match="metaclasses"):
        sandbox.exec(source)
    assert html.unescape("a &amp; b") == "a & b"


#: A generator restricted code leaves with the host, and what the host does with it after the
#: request: its ``finally`` or ``except`` would run the host's ``save`` with no sandbox.
GENERATORS = {
    "closed_by_the_host": ("def gen():\n    try:\n        yield 1\n    finally:\n"
                           "        save()\nlazy = gen()\nnext(lazy)\n",
                           lambda lazy: lazy.close()),
    "thrown_into_by_the_host": ("def gen():\n    try:\n        yield 1\n    except BaseException:\n"
                                "        save()\n        yield 2\nlazy = gen()\nnext(lazy)\n",
                                lambda lazy: lazy.throw(ValueError("host"))),
    # (the sandboxed run's own check raised inside the code's try, and it carried on)
    "resumed_check_caught": ("def gen():\n    while True:\n        try:\n            yield 1\n"
                             "        except Exception:\n            save()\n            return\n"
                             "lazy = gen()\nnext(lazy)\n", lambda lazy: next(lazy)),
    "collected_by_the_host": ("def gen():\n    try:\n        yield 1\n    finally:\n"
                              "        save()\nlazy = gen()\nnext(lazy)\n",
                              lambda lazy: None),
    "lambda_generator": ("gen = lambda: ((yield 1), save())\nlazy = gen()\nnext(lazy)\n",
                         lambda lazy: next(lazy)),
}


CONTROL_USES = {"resumed_check_caught": lambda lazy: lazy.throw(RuntimeError("at the yield"))}


@pytest.mark.parametrize("case", sorted(GENERATORS))
def test_generators_left_with_the_host_run_nothing_outside(case: str, sandbox: Sandbox,
                                                           tmp_path: Path) -> None:
    """A generator of restricted code is resumed, thrown into and closed only inside a
    sandbox: outside, the host's call is refused before the generator runs, and closing it
    (or collecting it) runs its ``finally`` in a scope of the request's, where the host
    callable it calls is still sandboxed code's call."""
    import gc

    source, use = GENERATORS[case]
    calls: list[Any] = []

    def save() -> None:
        from gae_sandbox.sandbox import active_scope

        calls.append(active_scope())

    control = plain(source, {"save": save})
    try:  # (an error raised where the generator waits: what the host's throw does)
        (CONTROL_USES.get(case) or use)(control["lazy"])
    except (StopIteration, ValueError):
        pass
    del control["lazy"]
    gc.collect()
    assert calls == [None], "control: the host's use runs the code's save as host code"
    calls.clear()

    namespace = sandbox.exec(source, {"save": save})
    lazy = namespace.pop("lazy")
    try:
        use(lazy)
    except (OutsideSandboxRefused, StopIteration):
        pass
    del lazy
    namespace.clear()
    gc.collect()
    assert None not in calls  # never called as host code (in the request's scope, or not)


def test_generators_keep_working_inside_the_sandbox(sandbox: Sandbox) -> None:
    namespace = sandbox.exec(
        "def numbers(n):\n    for i in range(n):\n        yield i\n"
        "def relay():\n    yield from numbers(3)\n"
        "def echo():\n    got = yield 'ready'\n    yield got * 2\n"
        "log = []\n"
        "def managed():\n    log.append('in')\n    try:\n"
        "        yield 'value'\n    finally:\n        log.append('out')\n"
        "m = managed()\nlog.append(next(m))\nm.close()\n"
        "e = echo()\nfirst = next(e)\nsecond = e.send(21)\n"
        "total = sum(numbers(4))\nrelayed = list(relay())\n"
        "lam = list((lambda: (yield 7))())\n"
        "g = numbers(5)\nnext(g)\ng.close()\n")
    assert namespace["log"] == ["in", "value", "out"]
    assert (namespace["first"], namespace["second"]) == ("ready", 42)
    assert namespace["total"] == 6 and namespace["relayed"] == [0, 1, 2]
    assert namespace["lam"] == [7]
