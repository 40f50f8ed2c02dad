"""app.yaml: loading, validation that names the file and the line, the policy it describes,
and what that policy does inside a sandbox (skip_files, static handlers, env_variables).

Loader tests write the app.yaml into ``tmp_path``. Sandbox tests build an app folder there,
put it on ``sys.path`` and forget its modules afterwards. Alias bombs are judged by the work
the loader does (nodes composed, objects constructed), not by a clock or a memory limit.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import py_compile
import sys
import textwrap
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    FileReadRefused,
    ImportRefused,
    Policy,
    Sandbox,
    SystemCallRefused,
    appyaml,
    policy_from_app_yaml,
)
from gae_sandbox.appyaml import (
    DEFAULT_SKIP_FILES,
    AppConfig,
    AppYamlError,
    Handler,
    load_app_yaml,
)

# --- helpers --------------------------------------------------------------------------------


def write(folder: Path, text: str, name: str = "app.yaml") -> Path:
    """Write ``text`` (dedented) as ``folder/name`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``path`` that contains ``needle`` (``nth=-1``:
    the last one)."""
    found = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(found) >= abs(nth), f"{needle!r} not in {path}"
    return found[nth - 1 if nth > 0 else nth]


def load_error(path: Path | str) -> AppYamlError:
    """The AppYamlError loading ``path`` raises (no other exception type is accepted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AppYamlError) as caught:
            load_app_yaml(path)
    assert isinstance(caught.value, ValueError)
    return caught.value


MINIMAL = """\
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /.*
  script: main.app
"""


def forget_modules(prefix: str, root: Path) -> None:
    for name in list(sys.modules):
        module = sys.modules.get(name)
        filename = str(getattr(module, "__file__", "") or "")
        if name.startswith(prefix) or filename.startswith(str(root)):
            del sys.modules[name]


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An app folder on ``sys.path``; its modules (``ayt_*``) are forgotten afterwards."""
    root = tmp_path / "app"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    forget_modules("ayt_", root)
    yield root
    forget_modules("ayt_", root)


def refused_read(path: Path) -> FileReadRefused:
    """Open ``path`` (inside a sandbox) and return the refusal."""
    with pytest.raises(FileReadRefused) as caught:
        with open(path, "rb"):
            pass
    return caught.value


def read(path: Path) -> str:
    with open(path) as file:
        return file.read()


# --- a realistic python27 app.yaml ----------------------------------------------------------

REALISTIC = """\
application: guestbook
version: 1
runtime: python27
api_version: 1
threadsafe: yes

handlers:
- url: /favicon\\.ico
  static_files: static/favicon.ico
  upload: static/favicon\\.ico
- url: /static
  static_dir: static
- url: /templates
  static_dir: templates
  application_readable: true
- url: /images/(.*\\.(gif|png|jpg))$
  static_files: images/\\1
  upload: images/.*\\.(gif|png|jpg)$
  mime_type: image/png
  http_headers:
    X-Frame-Options: DENY
    Max-Age: 60
- url: /admin/.*
  script: admin.app
  login: admin
  secure: always
- url: /.*
  script: guestbook.main.application

libraries:
- name: webapp2
  version: "2.5.2"
- name: numpy
  version: "1.6.1"
- name: PIL
  version: latest

skip_files:
- ^(.*/)?#.*#$
- ^(.*/)?.*~$
- ^(.*/)?.*\\.py[co]$
- ^(.*/)?\\..*$
- ^ayt_private/.*$
- ^ayt_local_settings\\.py$

env_variables:
  APP_MODE: production
  AYT_PORT: 8080
"""


@pytest.fixture
def realistic(tmp_path: Path) -> Path:
    """The realistic app folder: app.yaml plus the files its handlers name."""
    root = tmp_path / "app"
    write(root, REALISTIC)
    for name in ("static/favicon.ico", "static/css/site.css", "templates/index.html",
                 "images/logo.png", "images/photo.jpg", "images/readme.txt", "main.py",
                 "ayt_private/keys.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}\n")
    return root


def test_realistic_app_yaml_gives_the_expected_config(realistic: Path) -> None:
    path = realistic / "app.yaml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_app_yaml(path)
    assert [str(w.message) for w in caught] == []  # every key is a known one

    assert isinstance(config, AppConfig)
    assert config.path == os.path.abspath(path)
    assert config.app_root == os.path.abspath(realistic)
    assert config.runtime == "python27"
    assert config.api_version == "1"
    assert config.threadsafe is True  # YAML 1.1: yes is a boolean
    assert config.extra["application"] == "guestbook"

    handlers = config.handlers
    assert all(isinstance(h, Handler) for h in handlers)
    assert [h.url for h in handlers] == [
        r"/favicon\.ico", "/static", "/templates", r"/images/(.*\.(gif|png|jpg))$",
        "/admin/.*", "/.*",
    ]
    assert [h.line for h in handlers] == [
        line_of(path, "- url: /favicon"), line_of(path, "- url: /static"),
        line_of(path, "- url: /templates"), line_of(path, "- url: /images"),
        line_of(path, "- url: /admin"), line_of(path, "- url: /.*"),
    ]
    favicon, static, templates, images, admin, main = handlers
    assert (favicon.static_files, favicon.upload) == ("static/favicon.ico", r"static/favicon\.ico")
    assert favicon.script is None and favicon.static_dir is None
    assert (static.static_dir, static.application_readable) == ("static", False)
    assert (templates.static_dir, templates.application_readable) == ("templates", True)
    assert images.static_files == r"images/\1"
    assert images.upload == r"images/.*\.(gif|png|jpg)$"
    assert images.mime_type == "image/png"
    assert images.http_headers == (("X-Frame-Options", "DENY"), ("Max-Age", "60"))
    assert admin.script == "admin.app"
    assert main.script == "guestbook.main.application"
    assert config.scripts() == ["admin.app", "guestbook.main.application"]
    assert static.pattern.match("/static/css/site.css").group(1) == "css/site.css"
    assert main.pattern.match("/anything") is not None

    assert config.libraries == (("webapp2", "2.5.2"), ("numpy", "1.6.1"), ("PIL", "latest"))
    assert config.skip_files == (
        r"^(.*/)?#.*#$", r"^(.*/)?.*~$", r"^(.*/)?.*\.py[co]$", r"^(.*/)?\..*$",
        r"^ayt_private/.*$", r"^ayt_local_settings\.py$",
    )
    assert config.env_variables == (("APP_MODE", "production"), ("AYT_PORT", "8080"))


def test_env_variables_scalars_become_text_as_the_sdk_made_them(tmp_path: Path) -> None:
    """YAML 1.1 reads `DEBUG: yes` as a boolean and `RATE: 1.50` as a number; the SDK's
    validator turned each into text with str(), and apps read os.environ["DEBUG"] == "True"."""
    (tmp_path / "app.yaml").write_text(
        MINIMAL + "env_variables:\n  DEBUG: yes\n  SEND: false\n  RATE: 1.50\n  N: 8\n")
    config = load_app_yaml(tmp_path / "app.yaml")
    assert config.env_variables == (("DEBUG", "True"), ("SEND", "False"), ("RATE", "1.5"),
                                    ("N", "8"))


def test_realistic_app_yaml_gives_the_expected_policy(realistic: Path) -> None:
    policy = policy_from_app_yaml(realistic / "app.yaml")
    root = os.path.realpath(realistic)
    assert policy.app_root == root
    assert policy.deadline == 60.0  # the python27 preset
    assert policy.allowed_c_extensions == ("numpy", "PIL", "_imaging*")
    assert policy.skip_files == load_app_yaml(realistic).skip_files
    assert set(policy.unreadable_paths) == {
        f"{root}/static/favicon.ico", f"{root}/static", f"{root}/images/logo.png",
        f"{root}/images/photo.jpg",
    }
    assert len(policy.unreadable_paths) == 4  # no duplicates; templates is readable
    assert policy.env_variables == (("APP_MODE", "production"), ("AYT_PORT", "8080"))
    assert policy.hidden_by(f"{root}/static/css/site.css") == "unreadable_paths"
    assert policy.hidden_by(f"{root}/images/readme.txt") is None
    assert policy.hidden_by(f"{root}/templates/index.html") is None
    assert policy.hidden_by(f"{root}/ayt_private/keys.txt") == "skip_files"
    assert policy.hidden_by(f"{root}/main.py") is None


def test_a_folder_and_its_app_yaml_give_the_same_result(realistic: Path) -> None:
    assert load_app_yaml(realistic) == load_app_yaml(realistic / "app.yaml")
    assert load_app_yaml(str(realistic)) == load_app_yaml(realistic)
    assert policy_from_app_yaml(realistic) == policy_from_app_yaml(realistic / "app.yaml")
    assert policy_from_app_yaml(str(realistic)) == load_app_yaml(realistic).policy()


def test_a_folder_with_app_yml_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "app", MINIMAL, name="app.yml")
    config = load_app_yaml(tmp_path / "app")
    assert config.path == str(path)
    assert config.scripts() == ["main.app"]


def test_policy_changes_override_the_app_yaml(realistic: Path) -> None:
    config = load_app_yaml(realistic)
    policy = config.policy(deadline=5, skip_files=(), env_variables={"AYT_X": "y"},
                           allowed_c_extensions=("lxml",))
    assert policy.deadline == 5.0
    assert policy.skip_files == ()
    assert policy.env_variables == (("AYT_X", "y"),)
    assert policy.allowed_c_extensions == ("lxml",)
    assert policy.unreadable_paths == config.policy().unreadable_paths  # not overridden
    assert policy_from_app_yaml(realistic, deadline=None, mode="report").deadline is None
    assert policy_from_app_yaml(realistic, mode="report").mode == "report"
    with pytest.raises(TypeError):
        config.policy(no_such_field=1)


@pytest.mark.parametrize("text, expected", [
    ("threadsafe: yes", True), ("threadsafe: no", False), ("threadsafe: on", True),
    ("threadsafe: off", False), ("threadsafe: True", True), ("", False),
])
def test_threadsafe_is_a_yaml_1_1_boolean(tmp_path: Path, text: str, expected: bool) -> None:
    path = write(tmp_path, f"runtime: python27\n{text}\nhandlers:\n- url: /\n  script: m.app\n")
    assert load_app_yaml(path).threadsafe is expected


def test_the_default_skip_files_apply_when_app_yaml_has_none(tmp_path: Path) -> None:
    config = load_app_yaml(write(tmp_path, MINIMAL))
    assert config.skip_files == DEFAULT_SKIP_FILES
    policy = config.policy()
    root = policy.app_root
    for hidden in (".git/config", ".env", "sub/.hidden", "main.pyc", "pkg/mod.pyo",
                   "notes.txt~", "#draft#", "lib/RCS/file,v"):
        assert policy.hidden_by(f"{root}/{hidden}") == "skip_files", hidden
    for visible in ("main.py", "notes.txt", "static/style.css", "draft#"):
        assert policy.hidden_by(f"{root}/{visible}") is None, visible


def test_libraries_enable_their_c_extensions(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + textwrap.dedent("""\
        libraries:
        - name: numpy
          version: "1.6.1"
        - name: PIL
          version: "1.1.7"
        - name: numpy
          version: latest
        - name: lxml
          version: 2.3
        """))
    config = load_app_yaml(path)
    assert config.libraries == (("numpy", "1.6.1"), ("PIL", "1.1.7"), ("numpy", "latest"),
                                ("lxml", "2.3"))
    assert config.policy().allowed_c_extensions == ("numpy", "PIL", "_imaging*", "lxml")


def test_a_library_without_version_is_latest(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "libraries:\n- name: numpy\n")
    assert load_app_yaml(path).libraries == (("numpy", "latest"),)


# --- warnings -------------------------------------------------------------------------------


def test_unknown_top_level_key_warns_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "automatic_scalin:\n  max_instances: 2\n")
    with pytest.warns(UserWarning) as caught:
        config = load_app_yaml(path)
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:{line_of(path, 'automatic_scalin')}:" in m and "'automatic_scalin'" in m
               for m in messages), messages
    assert config.scripts() == ["main.app"]  # ignored, not fatal


def test_unknown_handler_key_warns_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        runtime: python27
        handlers:
        - url: /a
          script: a.app
        - url: /.*
          script: main.app
          logn: admin
        """)
    with pytest.warns(UserWarning) as caught:
        load_app_yaml(path)
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:{line_of(path, 'logn:')}:" in m and "'logn'" in m
               for m in messages), messages


def test_unknown_library_warns_and_allows_its_c_extensions(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "libraries:\n- name: webapp2\n- name: ayt_fastlib\n"
                 "  version: '1.0'\n")
    with pytest.warns(UserWarning) as caught:
        config = load_app_yaml(path)
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:{line_of(path, 'ayt_fastlib')}:" in m and "'ayt_fastlib'" in m
               for m in messages), messages
    assert not any("webapp2" in m for m in messages)
    assert config.policy().allowed_c_extensions == ("ayt_fastlib",)


def test_known_keys_do_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        application: x
        version: v1
        service: default
        runtime: python27
        api_version: 1
        threadsafe: false
        instance_class: F2
        automatic_scaling:
          max_instances: 2
        inbound_services:
        - warmup
        builtins:
        - deferred: on
        handlers:
        - url: /.*
          script: main.app
          login: required
          secure: always
          auth_fail_action: redirect
        """)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_app_yaml(path)
    assert [str(w.message) for w in caught] == []


# --- errors name the file and the line ------------------------------------------------------

# (name, app.yaml text, the text on the line the error names, a fragment of the message)
LINE_ERRORS = [
    ("bad_indentation",
     "runtime: python27\nhandlers:\n- url: /.*\n  script: main.app\n bad: indent\n",
     " bad: indent", "invalid YAML"),
    ("nested_bad_indentation",
     "runtime: python27\nhandlers:\n  - url: /.*\n    script: main.app\n   login: admin\n",
     "   login: admin", "invalid YAML"),
    ("unclosed_bracket",
     "runtime: python27\nlibraries: [{name: numpy, version: latest}\nhandlers:\n"
     "- url: /.*\n  script: main.app\n",
     "handlers:", "invalid YAML"),
    ("tab", "runtime: python27\nhandlers:\n\t- url: /.*\n", "\t- url", "invalid YAML"),
    ("handlers_not_a_list", "runtime: python27\napi_version: 1\nhandlers: main.app\n",
     "handlers: main.app", "handlers must be a list"),
    ("handler_a_list",
     "runtime: python27\nhandlers:\n- url: /.*\n  script: main.app\n- [a, b]\n",
     "- [a, b]", "each handler must be a mapping"),
    ("threadsafe_maybe",
     "runtime: python27\nthreadsafe: maybe\nhandlers:\n- url: /\n  script: m.app\n",
     "threadsafe: maybe", "threadsafe must be true or false"),
    ("script_not_dotted",
     "runtime: python27\nhandlers:\n- url: /a\n  script: a.app\n- url: /.*\n  script: main\n",
     "script: main", "WSGI"),
    ("script_path",
     "runtime: python27\nhandlers:\n- url: /.*\n  script: app/main.app\n",
     "script: app/main.app", "WSGI"),
    ("script_empty", "runtime: python27\nhandlers:\n- url: /\n  script: ''\n",
     "script: ''", "non-empty string"),
    ("url_not_a_regex", "runtime: python27\nhandlers:\n- url: /(oops\n  script: main.app\n",
     "url: /(oops", "not a regular expression"),
    ("url_missing", "runtime: python27\nhandlers:\n- script: main.app\n",
     "- script: main.app", "url:"),
    ("url_not_a_string", "runtime: python27\nhandlers:\n- url: 5\n  script: main.app\n",
     "- url: 5", "url:"),
    ("script_and_static_dir",
     "runtime: python27\nhandlers:\n- url: /a\n  script: a.app\n- url: /s\n"
     "  script: main.app\n  static_dir: static\n",
     "- url: /s", "exactly one of script:, static_dir:, static_files:"),
    ("no_script_nor_static", "runtime: python27\nhandlers:\n- url: /s\n  login: admin\n",
     "- url: /s", "exactly one of"),
    ("upload_not_a_regex",
     "runtime: python27\nhandlers:\n- url: /s/(.*)\n  static_files: s/\\1\n  upload: s/(.*\n",
     "upload: s/(.*", "not a regular expression"),
    ("application_readable_quoted",
     "runtime: python27\nhandlers:\n- url: /s\n  static_dir: s\n  application_readable: 'yes'\n",
     "application_readable", "application_readable must be true or false"),
    ("http_headers_list_value",
     "runtime: python27\nhandlers:\n- url: /s\n  static_dir: s\n  http_headers: {X: [1]}\n",
     "http_headers", "http_headers"),
    ("library_without_name",
     MINIMAL + "libraries:\n- name: numpy\n- version: latest\n",
     "- version: latest", "library needs name:"),
    ("library_bad_version",
     MINIMAL + "libraries:\n- name: numpy\n  version: [1]\n",
     "- name: numpy", "version"),
    ("libraries_not_a_list", MINIMAL + "libraries: numpy\n", "libraries: numpy",
     "libraries must be a list"),
    ("api_version_a_list",
     "runtime: python27\napi_version: [1]\nhandlers:\n- url: /\n  script: m.app\n",
     "api_version", "api_version"),
    ("runtime_go", "runtime: go122\nhandlers: []\n", "runtime: go122", "'go122'"),
    ("python3_script_not_auto", "runtime: python312\nhandlers:\n- url: /\n  script: main.app\n",
     "script: main.app", "only 'script: auto'"),
    ("python27_script_auto", "runtime: python27\nhandlers:\n- url: /\n  script: auto\n",
     "script: auto", "python3 runtimes"),
    ("python3_entrypoint_unknown", "runtime: python312\nentrypoint: ./start-server\n",
     "entrypoint:", "cannot tell which WSGI app"),
    ("runtime_binary", "runtime: !!binary cHl0aG9uMjc=\n", "runtime:", "not supported"),
    ("static_dir_parent", "runtime: python27\nhandlers:\n- url: /s\n  static_dir: ../x\n",
     "static_dir: ../x", "leaves the app folder"),
    ("static_dir_parent_inside",
     "runtime: python27\nhandlers:\n- url: /s\n  static_dir: static/../../x\n",
     "static_dir:", "leaves the app folder"),
    ("static_dir_absolute", "runtime: python27\nhandlers:\n- url: /s\n  static_dir: /etc\n",
     "static_dir: /etc", "relative to the app folder"),
    ("static_files_parent",
     "runtime: python27\nhandlers:\n- url: /s/(.*)\n  static_files: ../\\1\n  upload: x\n",
     "static_files:", "leaves the app folder"),
    ("static_files_absolute",
     "runtime: python27\nhandlers:\n- url: /s\n  static_files: /etc/passwd\n  upload: x\n",
     "static_files:", "relative to the app folder"),
    ("python_object_apply",
     'runtime: python27\nhandlers: !!python/object/apply:os.system ["touch marker"]\n',
     "handlers:", "could not determine a constructor"),
    ("python_name", "runtime: !!python/name:os.system\n", "runtime:",
     "could not determine a constructor"),
    ("custom_tag", "runtime: python27\nhandlers: !include other.yaml\n", "handlers:",
     "could not determine a constructor"),
    ("two_documents", MINIMAL + "---\n" + MINIMAL, "---", "invalid YAML"),
    ("unhashable_key", "? [a]\n: b\n" + MINIMAL, "? [a]", "invalid YAML"),
    ("recursive_alias",
     "runtime: python27\nx: &a [*a]\nhandlers:\n- url: /\n  script: m.app\n",
     "x: &a", "invalid YAML"),
    ("merge_of_a_scalar",
     "runtime: python27\nx:\n  <<: 5\nhandlers:\n- url: /\n  script: m.app\n",
     "<<: 5", "invalid YAML"),
    ("undefined_alias", "runtime: *nowhere\n", "runtime:", "invalid YAML"),
]


@pytest.mark.parametrize("text, needle, fragment",
                         [case[1:] for case in LINE_ERRORS], ids=[c[0] for c in LINE_ERRORS])
def test_errors_name_the_file_and_the_line(tmp_path: Path, text: str, needle: str,
                                           fragment: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    message = str(error)
    assert message.startswith(f"{path}:{line_of(path, needle)}: "), message
    assert fragment in message
    assert "Traceback" not in message


# Errors about scalars (which carry no position) or about a section: the line is the entry's
# or its section's.
SECTION_ERRORS = [
    ("handler_a_string",
     "runtime: python27\nhandlers:\n- url: /.*\n  script: main.app\n- main.app\n",
     "handlers:", "- main.app", "each handler must be a mapping"),
    ("handler_empty",
     "runtime: python27\nhandlers:\n- url: /.*\n  script: main.app\n-\n",
     "handlers:", "-", "each handler must be a mapping"),
    ("env_value_a_list", MINIMAL + "env_variables:\n  A: ok\n  B: [1, 2]\n",
     "env_variables:", "B: [1, 2]", "env_variables B must be a string"),
    ("env_value_a_mapping", MINIMAL + "env_variables:\n  A: ok\n  B: {c: d}\n",
     "env_variables:", "B: {c: d}", "env_variables B must be a string"),
    ("env_value_null", MINIMAL + "env_variables:\n  A: ok\n  B:\n",
     "env_variables:", "  B:", "env_variables B must be a string"),
    ("env_value_nul", MINIMAL + 'env_variables:\n  A: "a\\0b"\n',
     "env_variables:", "A:", "NUL"),
    ("env_name_with_equals", MINIMAL + "env_variables:\n  A=B: c\n",
     "env_variables:", "A=B", "env_variables name"),
    ("env_name_a_number", MINIMAL + "env_variables:\n  1: c\n",
     "env_variables:", "1: c", "env_variables name"),
    ("env_not_a_mapping", MINIMAL + "env_variables: [A, B]\n",
     "env_variables:", "env_variables:", "env_variables must map"),
    ("skip_files_bad_regex", MINIMAL + "skip_files:\n- ^ok$\n- ^(bad$\n",
     "skip_files:", "^(bad$", "skip_files entry '^(bad$' is not a regular expression"),
    ("skip_files_single_bad_regex", MINIMAL + "skip_files: '[z-a]'\n",
     "skip_files:", "skip_files:", "skip_files entry"),
    ("skip_files_a_number", MINIMAL + "skip_files: 5\n",
     "skip_files:", "skip_files:", "skip_files must be"),
    ("skip_files_numbers", MINIMAL + "skip_files:\n- 5\n",
     "skip_files:", "- 5", "skip_files must be"),
]


@pytest.mark.parametrize("text, section, entry, fragment",
                         [case[1:] for case in SECTION_ERRORS],
                         ids=[c[0] for c in SECTION_ERRORS])
def test_section_errors_name_the_file_and_a_line(tmp_path: Path, text: str, section: str,
                                                 entry: str, fragment: str) -> None:
    path = write(tmp_path, text)
    message = str(load_error(path))
    lines = {line_of(path, section), line_of(path, entry, nth=-1)}
    assert any(message.startswith(f"{path}:{line}: ") for line in lines), (message, lines)
    assert fragment in message


@pytest.mark.parametrize("text", [
    pytest.param("- runtime\n- python27\n", id="a_list"),
    pytest.param("python27\n", id="a_scalar"),
    pytest.param("", id="empty"),
    pytest.param("# only a comment\n\n", id="only_comments"),
    pytest.param("---\n...\n", id="empty_document"),
    pytest.param("!!set {runtime, handlers}\n", id="a_set"),
])
def test_a_document_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = str(load_error(path))
    assert message.startswith(f"{path}:")
    assert "must be a mapping" in message


def test_missing_runtime_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "handlers:\n- url: /.*\n  script: main.app\n")
    message = str(load_error(path))
    assert message.startswith(f"{path}:")
    assert "runtime" in message and "python27" in message


def test_missing_handlers_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "runtime: python27\n")
    message = str(load_error(path))
    assert message.startswith(f"{path}:") and "handlers" in message


def test_static_dir_symlink_out_of_the_app_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "app"
    path = write(root, "runtime: python27\nhandlers:\n- url: /s\n  static_dir: assets\n")
    (root / "assets").symlink_to(outside)
    message = str(load_error(path))
    assert message.startswith(f"{path}:{line_of(path, 'static_dir')}: ")
    assert "leaves the app folder" in message


STATIC_APP = """\
runtime: python27
handlers:
- url: /static
  static_dir: static
- url: /favicon\\.ico
  static_files: static/favicon.ico
  upload: static/favicon\\.ico
- url: /.*
  script: main.app
"""


@pytest.mark.parametrize("link", ["app", "parent"])
def test_an_app_folder_reached_through_a_symlink_keeps_its_static_handlers(
        tmp_path: Path, link: str) -> None:
    """A release link (/srv/app -> releases/42) or a symlinked component (macOS's /tmp):
    the handlers are inside the app, served, and hidden from the app as without the link."""
    from gae_sandbox.devserver import DevServerApp

    real = tmp_path / "real" / "app"
    write(real, STATIC_APP)
    (real / "static").mkdir()
    (real / "static" / "favicon.ico").write_bytes(b"icon")
    (real / "static" / "style.css").write_text("body {}")
    if link == "app":
        (tmp_path / "linked").symlink_to(real)
        root = tmp_path / "linked"
    else:
        (tmp_path / "via").symlink_to(tmp_path / "real")
        root = tmp_path / "via" / "app"
    config = load_app_yaml(root)
    assert [h.static_dir or h.static_files for h in config.handlers[:2]] == [
        "static", "static/favicon.ico"]
    assert config.unreadable_paths() == ("static", "static/favicon.ico")
    app = DevServerApp(config)
    assert get(app, "/favicon.ico")[::2] == ("200 OK", b"icon")
    assert get(app, "/static/style.css")[::2] == ("200 OK", b"body {}")
    assert get(app, "/static/../app.yaml")[0] == "404 Not Found"
    with Sandbox(config.policy()):
        assert refused_read(root / "static" / "style.css").setting == "unreadable_paths"


@pytest.mark.parametrize("entry", ["static_dir: ../outside", "static_dir: assets",
                                   "static_files: ../outside/x.txt\n  upload: x"])
def test_a_symlinked_app_folder_still_refuses_paths_out_of_it(tmp_path: Path,
                                                             entry: str) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.txt").write_text("x")
    real = tmp_path / "real"
    path = write(real, f"runtime: python27\nhandlers:\n- url: /s\n  {entry}\n")
    (real / "assets").symlink_to(tmp_path / "outside")
    (tmp_path / "linked").symlink_to(real)
    message = str(load_error(tmp_path / "linked"))
    assert "leaves the app folder" in message and str(tmp_path / "outside") in message
    assert message.startswith(f"{tmp_path / 'linked' / 'app.yaml'}:{line_of(path, 'static_')}:")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_bytes(b"runtime: python27\n# caf\xe9\nhandlers: []\n")
    message = str(load_error(path))
    assert message.startswith(f"{path}: ") and "UTF-8" in message


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_bytes(MINIMAL.encode() + b"#" * (1 << 20) + b"\n")
    started = time.monotonic()
    message = str(load_error(path))
    assert time.monotonic() - started < 5
    assert message.startswith(f"{path}: ") and "larger than" in message


def test_a_file_just_under_the_limit_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    padding = (1 << 20) - len(MINIMAL) - 2
    path.write_bytes(MINIMAL.encode() + b"#" + b"x" * padding + b"\n")
    assert path.stat().st_size == 1 << 20
    assert load_app_yaml(path).scripts() == ["main.app"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "app.yaml"
    message = str(load_error(path))
    assert message.startswith(f"{path}: ") and "cannot read" in message


def test_folder_without_app_yaml(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("")
    (tmp_path / "app" / "app.yaml").mkdir()  # a folder named app.yaml is not the file
    message = str(load_error(tmp_path / "app"))
    assert str(tmp_path / "app") in message and "no app.yaml" in message
    with pytest.raises(AppYamlError):
        policy_from_app_yaml(tmp_path / "app")


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    try:
        message = str(load_error(path))
    finally:
        path.chmod(0o644)
    assert message.startswith(f"{path}: ") and "cannot read" in message


@pytest.mark.parametrize("tag", [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/new:os.system ["touch {marker}"]',
    "!!python/object/apply:subprocess.call [[touch, {marker}]]",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_python_tags_are_not_executed(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "marker"
    tag = tag.format(marker=marker)
    for text in (f"runtime: python27\nhandlers: {tag}\n",
                 f"runtime: python27\nhandlers:\n- url: /\n  script: m.app\nx: {tag}\n",
                 f"{tag}\n"):
        path = write(tmp_path, text)
        message = str(load_error(path))
        assert "could not determine a constructor" in message and "python/" in message
        assert message.startswith(f"{path}:")
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    pytest.param("runtime: " + "[" * 10_000 + "]" * 10_000 + "\n", id="deep_flow_nesting"),
    pytest.param("runtime: python27\nhandlers:\n" + "- " * 2000 + "x\n",
                 id="deep_block_nesting"),
    pytest.param("runtime: " + "{a: " * 5000 + "b" + "}" * 5000 + "\n", id="deep_mappings"),
    pytest.param("runtime: python27\nhandlers: [{url: /, static_files: \"a\\0b\", "
                 "upload: a}]\n", id="nul_in_static_files"),
    pytest.param("runtime: python27\nhandlers: [{url: /, script: m.app, http_headers: [1]}]\n",
                 id="headers_a_list"),
    pytest.param("runtime: python27\nhandlers: [{url: /, script: [m, app]}]\n",
                 id="script_a_list"),
    pytest.param("runtime: python27\nhandlers: [{url: /, static_dir: {a: b}}]\n",
                 id="static_dir_a_mapping"),
    pytest.param("runtime: python27\nhandlers: !!omap [{url: /}]\n", id="omap"),
    pytest.param("runtime: 2001-12-14\n", id="timestamp_runtime"),
    pytest.param("runtime: [python27]\n", id="runtime_a_list"),
    pytest.param("runtime: {python27: 1}\n", id="runtime_a_mapping"),
    pytest.param("runtime: python27\nhandlers: {url: /}\n", id="handlers_a_mapping"),
    pytest.param("runtime: python27\nhandlers:\n- url: [/]\n  script: m.app\n",
                 id="url_a_list"),
    pytest.param("runtime: python27\nhandlers:\n- url: /\n  script: m.app\n"
                 "  application_readable: [1]\n", id="readable_a_list"),
    pytest.param("\ufeffruntime: python99\n", id="bom"),
    pytest.param("runtime: python27\n\x00\n", id="nul_byte"),
    pytest.param("runtime: python27\n\x85\x07\n", id="control_characters"),
    pytest.param("%YAML 9.9\n---\nruntime: python27\n", id="bad_yaml_directive"),
    pytest.param("runtime: python27\n" + "a" * 2000 + ": [\n", id="long_key"),
    pytest.param("&a runtime: *a\n", id="alias_key"),
])
def test_odd_documents_fail_with_app_yaml_error_only(tmp_path: Path, text: str) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    started = time.monotonic()
    message = str(load_error(path))
    assert time.monotonic() - started < 5
    assert message.startswith(str(path))
    assert len(message) < 10_000


# --- alias bombs ----------------------------------------------------------------------------


def laughs(levels: int) -> tuple[str, str]:
    """YAML defining a "billion laughs" list: 9 ** (levels + 1) leaves; and its last anchor."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n", f"*l{levels}"


BOMB_PLACES = {
    "unknown_key": "{bomb_yaml}runtime: python27\nhandlers:\n- url: /\n  script: m.app\n",
    "threadsafe": "{bomb_yaml}runtime: python27\nthreadsafe: {ref}\nhandlers:\n"
                  "- url: /\n  script: m.app\n",
    "runtime": "{bomb_yaml}runtime: {ref}\n",
    "env_value": "{bomb_yaml}runtime: python27\nhandlers:\n- url: /\n  script: m.app\n"
                 "env_variables:\n  A: {ref}\n",
    "script": "{bomb_yaml}runtime: python27\nhandlers:\n- url: /\n  script: {ref}\n",
    "skip_files": "{bomb_yaml}runtime: python27\nhandlers:\n- url: /\n  script: m.app\n"
                  "skip_files: {ref}\n",
    "handlers": "{bomb_yaml}runtime: python27\nhandlers: {ref}\n",
    "library_version": "{bomb_yaml}runtime: python27\nhandlers:\n- url: /\n  script: m.app\n"
                       "libraries:\n- name: numpy\n  version: {ref}\n",
}
BOMB_CASES = [pytest.param(place, id=place) for place in BOMB_PLACES]


@pytest.mark.parametrize("place", BOMB_CASES)
def test_a_small_alias_bomb_stays_small(tmp_path: Path, place: str) -> None:
    """9**6 leaves: harmless to expand once, so safe in process; the result (a config or an
    error message) must not be the expansion."""
    bomb_yaml, ref = laughs(5)
    path = write(tmp_path, BOMB_PLACES[place].format(bomb_yaml=bomb_yaml, ref=ref))
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = load_app_yaml(path)
        except AppYamlError as error:
            assert len(str(error)) < 10_000, f"a message of {len(str(error))} characters"
        else:
            assert place == "unknown_key"
            assert config.scripts() == ["m.app"]
    assert time.monotonic() - started < 5


class LoaderWork:
    """Counts the YAML nodes the loader composes and the objects it constructs: the work a
    load does, measured instead of timed (and without a child's memory limit)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.composed = 0
        self.constructed = 0
        compose, construct = appyaml._LineLoader.compose_node, appyaml._LineLoader.construct_object

        def counting_compose(loader: Any, parent: Any, index: Any) -> Any:
            self.composed += 1
            return compose(loader, parent, index)

        def counting_construct(loader: Any, node: Any, deep: bool = False) -> Any:
            self.constructed += 1
            return construct(loader, node, deep=deep)

        monkeypatch.setattr(appyaml._LineLoader, "compose_node", counting_compose)
        monkeypatch.setattr(appyaml._LineLoader, "construct_object", counting_construct)


@pytest.mark.parametrize("place", BOMB_CASES)
def test_billion_laughs_is_refused_at_its_first_anchor(tmp_path: Path, place: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bomb_yaml, ref = laughs(8)  # 9 levels: 9**9 leaves if the aliases were expanded
    path = write(tmp_path, BOMB_PLACES[place].format(bomb_yaml=bomb_yaml, ref=ref))
    assert path.stat().st_size < 1500
    work = LoaderWork(monkeypatch)
    message = str(load_error(path))
    assert message.startswith(f"{path}:1: invalid YAML: anchor &l0: "), message
    assert "anchors and aliases are not supported in app.yaml" in message
    assert len(message) < len(str(path)) + 200
    assert work.composed <= 3  # the document's mapping, the key l0, the anchored value
    assert work.constructed == 0


@pytest.mark.parametrize("text, needle, what", [
    ("base: &base {A: b}\nruntime: python27\nhandlers:\n- url: /\n  script: m.app\n"
     "env_variables:\n  <<: *base\n", "base: &base", "anchor &base"),
    ("runtime: python27\nhandlers:\n- url: /\n  script: *main\n", "script: *main",
     "alias *main"),
    ("runtime: python27\nhandlers:\n- &h {url: /, script: m.app}\n", "- &h", "anchor &h"),
])
def test_anchors_and_aliases_are_refused_with_their_line(tmp_path: Path, text: str,
                                                         needle: str, what: str) -> None:
    path = write(tmp_path, text)
    message = str(load_error(path))
    assert message.startswith(f"{path}:{line_of(path, needle)}: invalid YAML: {what}: ")
    assert message.endswith("write the value out")


class Tripwire:
    """A leaf whose repr fails at once: a ``_show`` that renders whole values reaches a leaf
    (and fails the test immediately instead of rendering 9**9 of them)."""

    reached = 0

    def __repr__(self) -> str:
        Tripwire.reached += 1
        raise AssertionError("the whole value was rendered")


def bomb_value(levels: int, leaf: object = "lol") -> appyaml._LineList:
    """The value a loader that expands aliases builds for ``laughs(levels)``: 9 ** (levels + 1)
    leaves reached through 9 * (levels + 1) shared lists."""
    value = appyaml._LineList([leaf] * 9)
    for _ in range(levels):
        value = appyaml._LineList([value] * 9)
    return value


def test_show_is_bounded_for_any_value(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    repr1 = appyaml._SHOW.repr1

    def counting(value: Any, level: int) -> str:
        nonlocal calls
        calls += 1
        return repr1(value, level)

    monkeypatch.setattr(appyaml._SHOW, "repr1", counting)
    Tripwire.reached = 0
    bomb = bomb_value(8, Tripwire())
    mapping = appyaml._LineDict()
    mapping.update({f"key{i}" * 50: bomb for i in range(1000)})
    values = [bomb, mapping, 2 ** 1_000_000, -(16 ** 100_000), b"\xff" * 1_000_000,
              "x" * 1_000_000, {frozenset(range(1000)): [bomb_value(3)] * 1000},
              [set(range(10_000))] * 10]
    for value in values:
        before = calls
        text = appyaml._show(value)
        assert 0 < len(text) <= 160, (len(text), text[:80])
        assert calls - before < 100, f"{calls - before} repr1 calls for {text[:60]}"
    assert Tripwire.reached == 0
    assert appyaml._show(bomb).startswith("[[[")  # a list, shown as one
    assert appyaml._show(mapping).startswith("{'key0key0")
    assert appyaml._show(2 ** 1_000_000) == "<an integer of 1000001 bits>"


@pytest.mark.parametrize("text, needle, fragment", [
    pytest.param("runtime: python27\nhandlers: []\nx: " + "1" * 5000 + "\n", "x: 1",
                 "a number of 5000 characters", id="long_decimal"),
    pytest.param("runtime: 0b" + "1" * 100_000 + "\n", "runtime:",
                 "a number of 100002 characters", id="long_binary"),
    pytest.param("runtime: 1" + ":59" * 100_000 + "\n", "runtime:",
                 "a number of 300001 characters", id="long_sexagesimal"),
    pytest.param("runtime: 2001-13-14\n", "runtime:", "month must be in 1..12",
                 id="impossible_date"),
    pytest.param("runtime: python27\nx: !!float abc\n", "x: !!float", "could not convert",
                 id="float_tag_on_text"),
    pytest.param("runtime: python27\nx: !!set {2001-02-30}\n", "x: !!set",
                 "day is out of range", id="impossible_date_in_a_set"),
])
def test_values_python_cannot_convert_are_yaml_errors(tmp_path: Path, text: str, needle: str,
                                                       fragment: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, text)
    work = LoaderWork(monkeypatch)
    message = str(load_error(path))
    assert message.startswith(f"{path}:{line_of(path, needle)}: invalid YAML: "), message[:200]
    assert fragment in message and len(message) < len(str(path)) + 200
    assert work.constructed < 10  # the scalars before it, not a tree


# --- Policy fields used by app.yaml ---------------------------------------------------------


def test_env_variables_accept_a_mapping_or_pairs(tmp_path: Path) -> None:
    from_dict = Policy.python27(tmp_path, env_variables={"B": "2", "A": "1"})
    from_pairs = Policy.python27(tmp_path, env_variables=[("A", "1"), ("B", "2")])
    from_tuple = Policy.python27(tmp_path, env_variables=(("B", "2"), ("A", "1")))
    assert from_dict.env_variables == (("A", "1"), ("B", "2"))
    assert from_dict == from_pairs == from_tuple
    assert Policy.python27(tmp_path, env_variables={"A": ""}).env_variables == (("A", ""),)
    assert Policy.python27(tmp_path).env_variables == ()
    replaced = from_dict.replace(env_variables={"C": "3"})
    assert replaced.env_variables == (("C", "3"),)


@pytest.mark.parametrize("value, error", [
    ({"": "x"}, ValueError),
    ({"A=B": "x"}, ValueError),
    ({"A\0": "x"}, ValueError),
    ({1: "x"}, ValueError),
    ([(b"A", "x")], ValueError),
    ({"A": 1}, TypeError),
    ({"A": None}, TypeError),
    ({"A": b"x"}, TypeError),
    ({"A": "a\0b"}, TypeError),
    ([("A", "x", "y")], TypeError),
    (["AB"], TypeError),
    ("A=1", TypeError),
    (b"A=1", TypeError),
    (5, TypeError),
    (None, TypeError),
])
def test_env_variables_are_validated(tmp_path: Path, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        Policy.python27(tmp_path, env_variables=value)
    assert "env_variables" in str(caught.value)


@pytest.mark.parametrize("pattern", ["^(unclosed", "[z-a]", "*x", "(?P<a>x)(?P<a>y)"])
def test_skip_files_must_be_regular_expressions(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ValueError, match="skip_files") as caught:
        Policy.python27(tmp_path, skip_files=("^ok$", pattern))
    assert repr(pattern) in str(caught.value)


def test_skip_files_and_unreadable_paths_are_stored(tmp_path: Path) -> None:
    (tmp_path / "static").mkdir()
    policy = Policy.python27(tmp_path, skip_files=[r"^x$"],
                             unreadable_paths=["static", Path("static/../data.bin")])
    root = os.path.realpath(tmp_path)
    assert policy.skip_files == (r"^x$",)
    assert policy.unreadable_paths == (f"{root}/static", f"{root}/data.bin")


@pytest.mark.parametrize("entry", ["../x", "/etc", "static/../../x", ".."])
def test_unreadable_paths_must_be_inside_app_root(tmp_path: Path, entry: str) -> None:
    root = tmp_path / "app"
    (root / "static").mkdir(parents=True)
    with pytest.raises(ValueError, match="unreadable_paths") as caught:
        Policy.python27(root, unreadable_paths=(entry,))
    assert repr(entry) in str(caught.value)


def test_unreadable_paths_symlink_out_of_the_app_root(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="unreadable_paths"):
        Policy.python27(root, unreadable_paths=("link",))


def test_hidden_by(tmp_path: Path) -> None:
    root_path = tmp_path / "app"
    root_path.mkdir()
    policy = Policy.python27(root_path, skip_files=(r"^(.*/)?.*\.bak$", r"^private/.*$"),
                             unreadable_paths=("static", "img/logo.png"))
    root = policy.app_root
    assert policy.hidden_by(f"{root}/static") == "unreadable_paths"
    assert policy.hidden_by(f"{root}/static/a/b.css") == "unreadable_paths"
    assert policy.hidden_by(f"{root}/img/logo.png") == "unreadable_paths"
    assert policy.hidden_by(f"{root}/img/logo.png.txt") is None
    assert policy.hidden_by(f"{root}/staticfiles/x") is None  # a prefix, not the folder
    assert policy.hidden_by(f"{root}/x.bak") == "skip_files"
    assert policy.hidden_by(f"{root}/deep/down/x.bak") == "skip_files"
    assert policy.hidden_by(f"{root}/private/key") == "skip_files"
    assert policy.hidden_by(f"{root}/sub/private/key") is None  # anchored at the app root
    assert policy.hidden_by(f"{root}/main.py") is None
    assert policy.hidden_by(root) is None
    assert policy.hidden_by(f"{root}2/x.bak") is None  # a sibling folder, not the app
    assert policy.hidden_by("/elsewhere/static/x.bak") is None
    plain = Policy.python27(root_path)
    assert plain.hidden_by(f"{root}/x.bak") is None and plain.skip_pattern is None


# --- in a sandbox: skip_files and static handlers -------------------------------------------

EFFECTS_APP_YAML = """\
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /static
  static_dir: static
- url: /templates
  static_dir: templates
  application_readable: true
- url: /img/(.*\\.png)
  static_files: img/\\1
  upload: img/.*\\.png
- url: /.*
  script: ayt_main.app
skip_files:
- ^(.*/)?.*\\.bak$
- ^ayt_private/.*$
- ^ayt_local_settings\\.py$
"""


@pytest.fixture
def effects_app(app_dir: Path) -> Path:
    write(app_dir, EFFECTS_APP_YAML)
    files = {
        "ayt_main.py": "VALUE = 'main'\n",
        "ayt_local_settings.py": "SECRET = 'local'\n",
        "ayt_private/__init__.py": "SECRET = 'private'\n",
        "ayt_private/keys.txt": "key\n",
        "ayt_public/__init__.py": "",
        "ayt_public/util.py": "VALUE = 'util'\n",
        "notes.txt": "notes\n",
        "notes.txt.bak": "old notes\n",
        "sub/old.bak": "old\n",
        "static/site.css": "body {}\n",
        "static/js/app.js": "go()\n",
        "templates/index.html": "<html>\n",
        "img/logo.png": "png\n",
        "img/icons/small.png": "png\n",
        "img/readme.txt": "readme\n",
        "img/logo.jpg": "jpg\n",
    }
    for name, content in files.items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(content)
    return app_dir


def test_skip_files_are_not_readable(effects_app: Path) -> None:
    assert read(effects_app / "notes.txt.bak") == "old notes\n"  # the host reads it
    with Sandbox(policy_from_app_yaml(effects_app)):
        assert read(effects_app / "notes.txt") == "notes\n"
        assert read(effects_app / "ayt_main.py") == "VALUE = 'main'\n"
        for hidden in ("notes.txt.bak", "sub/old.bak", "ayt_private/keys.txt",
                       "ayt_local_settings.py"):
            refusal = refused_read(effects_app / hidden)
            assert refusal.setting == "skip_files"
            assert "skip_files" in str(refusal) and hidden in str(refusal)
            assert not os.path.exists(effects_app / hidden)
        with pytest.raises(FileReadRefused, match="skip_files"):
            os.stat(effects_app / "sub" / "old.bak")
    assert read(effects_app / "sub" / "old.bak") == "old\n"  # still there for the host


def test_skip_files_are_not_importable(effects_app: Path) -> None:
    assert importlib.util.find_spec("ayt_local_settings") is not None  # findable by the host
    with Sandbox(policy_from_app_yaml(effects_app)):
        assert importlib.import_module("ayt_main").VALUE == "main"
        assert importlib.import_module("ayt_public.util").VALUE == "util"
        with pytest.raises(ImportRefused, match="skip_files") as caught:
            importlib.import_module("ayt_local_settings")
        assert caught.value.setting == "skip_files"
        with pytest.raises(ImportRefused, match="skip_files"):
            import ayt_private  # noqa: F401
        with pytest.raises(ImportError):
            from ayt_private import SECRET  # noqa: F401
    assert "ayt_local_settings" not in sys.modules  # refused before it ran
    assert "ayt_private" not in sys.modules
    assert "ayt_main" in sys.modules


def test_a_skipped_module_the_host_imported_is_still_refused(effects_app: Path) -> None:
    host_module = importlib.import_module("ayt_local_settings")
    assert host_module.SECRET == "local"
    with Sandbox(policy_from_app_yaml(effects_app)):
        with pytest.raises(ImportRefused, match="skip_files"):
            importlib.import_module("ayt_local_settings")
        with pytest.raises(ImportRefused, match="skip_files"):
            import ayt_local_settings  # noqa: F401
    assert sys.modules["ayt_local_settings"] is host_module


def test_default_skip_files_in_a_sandbox(app_dir: Path) -> None:
    write(app_dir, "runtime: python27\nhandlers:\n- url: /.*\n  script: ayt_main.app\n")
    files = ("ayt_main.py", "data.txt", ".env", ".git/config", "data.txt~", "#draft#",
             "lib/RCS/file,v", "sub/.hidden")
    for name in files:
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(f"{name}\n")
    (app_dir / "ayt_compiled.py").write_text("VALUE = 'compiled'\n")
    py_compile.compile(str(app_dir / "ayt_compiled.py"), cfile=str(app_dir / "ayt_compiled.pyc"),
                       doraise=True)
    (app_dir / "ayt_compiled.py").unlink()
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("ayt_compiled")
    assert spec is not None and spec.origin.endswith("ayt_compiled.pyc")  # importable by the host

    with Sandbox(policy_from_app_yaml(app_dir)):
        assert read(app_dir / "data.txt") == "data.txt\n"
        assert read(app_dir / "ayt_main.py") == "ayt_main.py\n"
        for name in files[2:]:
            assert refused_read(app_dir / name).setting == "skip_files", name
        assert refused_read(app_dir / "ayt_compiled.pyc").setting == "skip_files"
        with pytest.raises(ImportRefused, match="skip_files"):
            importlib.import_module("ayt_compiled")
    assert "ayt_compiled" not in sys.modules


def test_static_dir_is_not_readable_unless_application_readable(effects_app: Path) -> None:
    with Sandbox(policy_from_app_yaml(effects_app)):
        assert read(effects_app / "templates" / "index.html") == "<html>\n"
        for hidden in ("static/site.css", "static/js/app.js"):
            refusal = refused_read(effects_app / hidden)
            assert refusal.setting == "unreadable_paths"
            assert "application_readable" in str(refusal)
        with pytest.raises(FileReadRefused):
            os.listdir(effects_app / "static")
        assert not os.path.isdir(effects_app / "static")
        assert sorted(os.listdir(effects_app / "templates")) == ["index.html"]


def test_static_files_upload_hides_the_matching_files_only(effects_app: Path) -> None:
    with Sandbox(policy_from_app_yaml(effects_app)):
        for hidden in ("img/logo.png", "img/icons/small.png"):
            assert refused_read(effects_app / hidden).setting == "unreadable_paths", hidden
        assert read(effects_app / "img" / "readme.txt") == "readme\n"
        assert read(effects_app / "img" / "logo.jpg") == "jpg\n"
        # listings leave out what the app does not see (the runtime never deployed it)
        assert sorted(os.listdir(effects_app / "img")) == ["icons", "logo.jpg", "readme.txt"]
        with os.scandir(effects_app / "img") as entries:
            assert sorted(e.name for e in entries) == ["icons", "logo.jpg", "readme.txt"]
    assert "logo.png" in os.listdir(effects_app / "img")  # the host sees everything


def test_application_readable_static_files(app_dir: Path) -> None:
    write(app_dir, """\
        runtime: python27
        handlers:
        - url: /data/(.*)
          static_files: data/\\1
          upload: data/.*\\.json
          application_readable: true
        - url: /img/(.*)
          static_files: img/\\1
          upload: img/.*
        - url: /.*
          script: ayt_main.app
        """)
    for name in ("data/a.json", "img/b.png"):
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text("{}\n")
    with Sandbox(policy_from_app_yaml(app_dir)):
        assert read(app_dir / "data" / "a.json") == "{}\n"
        assert refused_read(app_dir / "img" / "b.png").setting == "unreadable_paths"


def test_the_sandbox_without_app_yaml_settings_reads_everything(effects_app: Path) -> None:
    """Control: the same files are readable under a policy without the app.yaml's settings."""
    policy = policy_from_app_yaml(effects_app, skip_files=(), unreadable_paths=())
    with Sandbox(policy):
        for name in ("notes.txt.bak", "static/site.css", "img/logo.png",
                     "ayt_private/keys.txt"):
            assert read(effects_app / name)
        assert importlib.import_module("ayt_local_settings").SECRET == "local"


# --- in a sandbox: env_variables ------------------------------------------------------------

ENV_APP_YAML = MINIMAL + """\
env_variables:
  AYT_MODE: production
  AYT_PORT: 8080
  AYT_SHARED: from-app-yaml
"""


@pytest.fixture
def env_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "envapp"
    write(root, ENV_APP_YAML)
    for name in ("AYT_MODE", "AYT_PORT", "AYT_NEW", "AYT_ONLY_1", "AYT_ONLY_2", "AYT_WHO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AYT_SHARED", "from-host")
    monkeypatch.setenv("AYT_HOST_ONLY", "host")
    return root


def libc_getenv(name: str) -> str | None:
    """The process environment as C code (and child processes) see it."""
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    value = getenv(name.encode())
    return None if value is None else value.decode()


def environment_view() -> dict[str, Any]:
    """Everything the running code can learn about the AYT_* variables."""
    return {
        "getitem": {k: os.environ[k] for k in ("AYT_MODE", "AYT_PORT", "AYT_SHARED")
                    if k in os.environ},
        "getenv": {k: os.getenv(k) for k in ("AYT_MODE", "AYT_PORT", "AYT_SHARED")},
        "get": os.environ.get("AYT_MODE", "absent"),
        "contains": "AYT_MODE" in os.environ,
        "iterated": sorted(k for k in os.environ if k.startswith("AYT_")),
        "items": sorted((k, v) for k, v in os.environ.items() if k.startswith("AYT_")),
        "copy": {k: v for k, v in os.environ.copy().items() if k.startswith("AYT_")},
        "len": len(os.environ),
        "count_shared": list(os.environ).count("AYT_SHARED"),
    }


HOST_VIEW = {
    "getitem": {"AYT_SHARED": "from-host"},
    "getenv": {"AYT_MODE": None, "AYT_PORT": None, "AYT_SHARED": "from-host"},
    "get": "absent",
    "contains": False,
    "iterated": ["AYT_HOST_ONLY", "AYT_SHARED"],
    "items": [("AYT_HOST_ONLY", "host"), ("AYT_SHARED", "from-host")],
    "copy": {"AYT_HOST_ONLY": "host", "AYT_SHARED": "from-host"},
    "count_shared": 1,
}
APP_VIEW = {
    "getitem": {"AYT_MODE": "production", "AYT_PORT": "8080", "AYT_SHARED": "from-app-yaml"},
    "getenv": {"AYT_MODE": "production", "AYT_PORT": "8080", "AYT_SHARED": "from-app-yaml"},
    "get": "production",
    "contains": True,
    "iterated": ["AYT_HOST_ONLY", "AYT_MODE", "AYT_PORT", "AYT_SHARED"],
    "items": [("AYT_HOST_ONLY", "host"), ("AYT_MODE", "production"), ("AYT_PORT", "8080"),
              ("AYT_SHARED", "from-app-yaml")],
    "copy": {"AYT_HOST_ONLY": "host", "AYT_MODE": "production", "AYT_PORT": "8080",
             "AYT_SHARED": "from-app-yaml"},
    "count_shared": 1,
}


def without_len(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k != "len"}


def test_env_variables_are_seen_inside_the_sandbox_only(env_app: Path) -> None:
    before = environment_view()
    assert without_len(before) == HOST_VIEW
    host_len = before["len"]
    with Sandbox(policy_from_app_yaml(env_app)):
        inside = environment_view()
    after = environment_view()
    assert without_len(inside) == APP_VIEW
    assert inside["len"] == host_len + 2  # AYT_MODE and AYT_PORT; AYT_SHARED replaced
    assert inside["len"] == len(list(os.environ)) + 2
    assert after == before
    assert libc_getenv("AYT_MODE") is None
    assert libc_getenv("AYT_SHARED") == "from-host"


def test_a_host_thread_does_not_see_env_variables_while_the_sandbox_runs(env_app: Path) -> None:
    inside, looked = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def host_thread() -> None:
        if inside.wait(5):
            seen.update(environment_view())
        looked.set()

    thread = threading.Thread(target=host_thread)
    thread.start()  # started by the host, before the sandbox
    try:
        with Sandbox(policy_from_app_yaml(env_app)):
            assert os.environ["AYT_MODE"] == "production"
            inside.set()
            assert looked.wait(5)
            assert os.environ["AYT_MODE"] == "production"  # still ours after the host looked
    finally:
        inside.set()
        thread.join(5)
    assert without_len(seen) == HOST_VIEW


def test_threads_of_the_request_see_its_env_variables(env_app: Path) -> None:
    seen: list[str | None] = []
    with Sandbox(policy_from_app_yaml(env_app)):
        worker = threading.Thread(target=lambda: seen.append(os.getenv("AYT_MODE")))
        worker.start()
        worker.join(5)
    assert seen == ["production"]


def test_two_concurrent_sandboxes_see_their_own_env_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AYT_WHO", "AYT_ONLY_1", "AYT_ONLY_2"):
        monkeypatch.delenv(name, raising=False)
    policies = []
    for n in (1, 2):
        root = tmp_path / f"app{n}"
        write(root, MINIMAL + f"env_variables:\n  AYT_WHO: app{n}\n  AYT_ONLY_{n}: 'yes'\n")
        policies.append(policy_from_app_yaml(root))
    barrier = threading.Barrier(2, timeout=5)
    seen: dict[int, list[tuple[Any, ...]]] = {1: [], 2: []}
    errors: list[BaseException] = []

    def request(n: int) -> None:
        try:
            with Sandbox(policies[n - 1]):
                for _ in range(3):
                    barrier.wait()  # both sandboxes are active now
                    seen[n].append((os.environ.get("AYT_WHO"), os.getenv("AYT_ONLY_1"),
                                    os.getenv("AYT_ONLY_2"),
                                    sorted(k for k in os.environ if k.startswith("AYT_"))))
                barrier.wait()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=request, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert seen[1] == [("app1", "yes", None, ["AYT_ONLY_1", "AYT_WHO"])] * 3
    assert seen[2] == [("app2", None, "yes", ["AYT_ONLY_2", "AYT_WHO"])] * 3
    assert "AYT_WHO" not in os.environ


def test_changing_the_environment_inside_never_reaches_the_process(env_app: Path) -> None:
    policy = policy_from_app_yaml(env_app)
    with Sandbox(policy):
        os.putenv("AYT_PUT", "x")  # the request's view only (numpy calls putenv at import)
        assert os.environ["AYT_PUT"] == "x"
        os.unsetenv("AYT_SHARED")
        assert "AYT_SHARED" not in os.environ
        try:  # the runtime's os.environ was the request's own: a change stays in it
            os.environ["AYT_NEW"] = "x"
            os.environ["AYT_MODE"] = "changed"
            del os.environ["AYT_HOST_ONLY"]
        except SystemCallRefused:
            pass
        changed = (os.environ.get("AYT_NEW"), os.environ.get("AYT_MODE"),
                   "AYT_HOST_ONLY" in os.environ)
        assert changed in {("x", "changed", False), (None, "production", True)}
    assert "AYT_NEW" not in os.environ and libc_getenv("AYT_NEW") is None
    assert "AYT_PUT" not in os.environ and libc_getenv("AYT_PUT") is None
    assert os.environ["AYT_HOST_ONLY"] == "host" and libc_getenv("AYT_HOST_ONLY") == "host"
    assert os.environ["AYT_SHARED"] == "from-host" and libc_getenv("AYT_SHARED") == "from-host"
    assert "AYT_MODE" not in os.environ
    with Sandbox(policy):  # the next request starts from the app.yaml again
        assert os.environ["AYT_MODE"] == "production"
        assert "AYT_NEW" not in os.environ
        assert os.environ["AYT_HOST_ONLY"] == "host"


def test_env_variables_with_a_nested_sandbox(env_app: Path, tmp_path: Path) -> None:
    inner_root = tmp_path / "inner"
    write(inner_root, MINIMAL + "env_variables:\n  AYT_MODE: inner\n  AYT_NEW: inner-only\n")
    outer, inner = policy_from_app_yaml(env_app), policy_from_app_yaml(inner_root)
    with Sandbox(outer):
        with Sandbox(inner):
            assert os.environ["AYT_MODE"] == "inner"
            assert os.environ["AYT_NEW"] == "inner-only"
            assert os.environ["AYT_PORT"] == "8080"  # the outer layer's still applies
        assert os.environ["AYT_MODE"] == "production"
        assert "AYT_NEW" not in os.environ


# --- bugs -----------------------------------------------------------------------------------


def test_script_that_is_a_py_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "runtime: python27\nthreadsafe: true\nhandlers:\n- url: /a\n"
                 "  script: a.app\n- url: /.*\n  script: main.py\n")
    message = str(load_error(path))
    assert message.startswith(f"{path}:{line_of(path, 'script: main.py')}: ")
    assert "WSGI" in message


def test_skip_files_matching_a_folder_hide_its_contents(app_dir: Path) -> None:
    write(app_dir, MINIMAL + "skip_files:\n- ^ayt_vendor$\n")
    (app_dir / "ayt_vendor").mkdir()
    (app_dir / "ayt_vendor" / "__init__.py").write_text("")
    (app_dir / "ayt_vendor" / "data.txt").write_text("vendored\n")
    with Sandbox(policy_from_app_yaml(app_dir)):
        assert refused_read(app_dir / "ayt_vendor" / "data.txt").setting == "skip_files"
        with pytest.raises(ImportRefused):
            importlib.import_module("ayt_vendor")


def test_static_file_symlink_out_of_the_app_does_not_crash(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "vendor.js").write_text("vendor()\n")
    root = tmp_path / "app"
    write(root, MINIMAL.replace("handlers:\n", "handlers:\n- url: /js/(.*)\n"
                                "  static_files: js/\\1\n  upload: js/.*\\.js\n"))
    (root / "js").mkdir()
    (root / "js" / "app.js").write_text("app()\n")
    (root / "js" / "vendor.js").symlink_to(tmp_path / "shared" / "vendor.js")
    try:
        policy = policy_from_app_yaml(root)
    except AppYamlError:
        return  # a clear app.yaml error is acceptable
    assert policy.hidden_by(os.path.realpath(root / "js" / "app.js")) == "unreadable_paths"


def test_a_path_with_a_nul_byte(tmp_path: Path) -> None:
    load_error(f"{tmp_path}/app\0.yaml")


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        runtime: python27
        handlers:
        - url: /static
          static_dir: static
        - url: /.*
          script: main.app
        handlers:
        - url: /.*
          script: main.app
        """)
    message = str(load_error(path))
    assert message.startswith(f"{path}:{line_of(path, 'handlers:', nth=2)}: ")
    assert "handlers" in message


# --- includes: -------------------------------------------------------------------------------


def test_includes_merge_as_the_sdk_does(tmp_path: Path) -> None:
    """Included handlers go before app.yaml's (``position: tail`` after), included
    ``skip_files`` are added, included ``env_variables`` win; a folder means its
    include.yaml, nested includes are followed, and each file is read once."""
    write(tmp_path, """\
        runtime: python27
        api_version: 1
        threadsafe: true
        includes:
        - admin.yaml
        - lib/mapreduce
        - admin.yaml
        env_variables:
          MODE: main
          KEEP: yes-main
        handlers:
        - url: /.*
          script: main.app
        """)
    write(tmp_path, """\
        handlers:
        - url: /admin/.*
          script: admin.app
        - url: /fallback/.*
          script: fallback.app
          position: tail
        skip_files:
        - ^secrets/.*$
        env_variables:
          MODE: included
        includes:
        - nested.yaml
        """, "admin.yaml")
    write(tmp_path, """\
        handlers:
        - url: /nested
          script: nested.app
        includes:
        - admin.yaml
        """, "nested.yaml")
    write(tmp_path / "lib" / "mapreduce", """\
        handlers:
        - url: /mapreduce/.*
          script: mapreduce.main.app
        """, "include.yaml")

    config = load_app_yaml(tmp_path)

    assert [h.url for h in config.handlers] == [
        "/admin/.*", "/nested", "/mapreduce/.*", "/.*", "/fallback/.*"]
    assert "^secrets/.*$" in config.skip_files
    assert set(DEFAULT_SKIP_FILES) <= set(config.skip_files)
    assert dict(config.env_variables) == {"MODE": "included", "KEEP": "yes-main"}
    policy = config.policy()
    assert "^secrets/.*$" in policy.skip_files


def test_handlers_may_all_come_from_includes(tmp_path: Path) -> None:
    write(tmp_path, "runtime: python27\napi_version: 1\nthreadsafe: true\n"
                    "includes:\n- routes.yaml\n")
    write(tmp_path, "handlers:\n- url: /.*\n  script: main.app\n", "routes.yaml")
    assert [h.script for h in load_app_yaml(tmp_path).handlers] == ["main.app"]

    write(tmp_path, "skip_files:\n- ^x$\n", "routes.yaml")
    assert "no handlers" in str(load_error(tmp_path))


@pytest.mark.parametrize(("entry", "fragment"), [
    ("../outside.yaml", "leaves the app folder"),
    ("/etc/passwd", "must be a path relative to the app folder"),
    ("missing.yaml", "no such file"),
    ("link.yaml", "leaves the app folder"),
])
def test_include_paths_stay_in_the_app_folder(tmp_path: Path, entry: str,
                                              fragment: str) -> None:
    app = tmp_path / "app"
    write(tmp_path, "handlers:\n- url: /.*\n  script: evil.app\n", "outside.yaml")
    path = write(app, MINIMAL + f"includes:\n- {entry}\n")
    (app / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    error = load_error(path)
    assert fragment in str(error) and entry in str(error)
    assert f"app.yaml:{line_of(path, 'includes:')}" in str(error)


@pytest.mark.parametrize(("included", "fragment"), [
    ("- just\n- a list\n", "must be a mapping"),
    ("handlers:\n- url: /x\n  script: a.app\n  position: middle\n", "position must be head"),
    ("handlers: [\n", "invalid YAML"),
    ("env_variables:\n  A: [1]\n", "env_variables A must be a string"),
])
def test_a_broken_included_file_names_itself(tmp_path: Path, included: str,
                                            fragment: str) -> None:
    path = write(tmp_path, MINIMAL + "includes:\n- part.yaml\n")
    write(tmp_path, included, "part.yaml")
    error = str(load_error(path))
    assert fragment in error and "part.yaml" in error


def test_includes_must_be_a_list_of_paths(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "includes: part.yaml\n")
    assert "includes must be a list" in str(load_error(path))


def test_an_include_loop_ends(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "includes:\n- a.yaml\n")
    write(tmp_path, "includes:\n- b.yaml\nhandlers:\n- url: /a\n  script: a.app\n", "a.yaml")
    write(tmp_path, "includes:\n- a.yaml\n- app.yaml\n", "b.yaml")
    assert [h.url for h in load_app_yaml(path).handlers] == ["/a", "/.*"]


def test_a_handler_from_an_include_is_served(tmp_path: Path) -> None:
    from gae_sandbox.devserver import DevServerApp

    write(tmp_path, MINIMAL + "includes:\n- static.yaml\n")
    write(tmp_path, "handlers:\n- url: /assets\n  static_dir: assets\n", "static.yaml")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "site.css").write_text("body {}")
    app = DevServerApp(load_app_yaml(tmp_path))
    statuses: list[str] = []
    body = b"".join(app({"PATH_INFO": "/assets/site.css", "REQUEST_METHOD": "GET",
                         "QUERY_STRING": "", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                         "wsgi.url_scheme": "http"},
                        lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"] and body == b"body {}"


# --- entrypoint: the WSGI app, as gunicorn names it -----------------------------------------


@pytest.mark.parametrize(("reference", "parsed"), [
    ("main:app", ("main", "app", (), {})),
    ("mysite.wsgi:application", ("mysite.wsgi", "application", (), {})),
    ("main:create_app()", ("main", "create_app", (), {})),
    ("main:create_app('prod', debug=False, n=[1, 2])",
     ("main", "create_app", ("prod",), {"debug": False, "n": [1, 2]})),
    ("guestbook.main.app", ("guestbook.main", "app", (), {})),
])
def test_wsgi_references_read_as_gunicorn_reads_them(reference: str, parsed: tuple) -> None:
    assert appyaml.parse_wsgi_reference(reference) == parsed


@pytest.mark.parametrize("reference", [
    "main:create_app(__import__('os'))", "main:app.attr", "main:", ":app", "1main:app",
    "main:create_app(**{'a': 1})", "main:" + "(" * 5000,
])
def test_a_wsgi_reference_that_is_not_a_name_or_a_literal_call_is_refused(
        reference: str) -> None:
    with pytest.raises(ValueError, match="main|module name"):
        appyaml.parse_wsgi_reference(reference)


def test_an_app_factory_with_arguments_is_served(tmp_path: Path) -> None:
    from gae_sandbox.devserver import DevServerApp

    write(tmp_path, "runtime: python312\n"
                    "entrypoint: gunicorn -b :$PORT \"factory_app:create_app('blue')\"\n")
    (tmp_path / "factory_app.py").write_text(textwrap.dedent("""\
        def create_app(colour):
            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [colour.encode()]
            return app
        """))
    sys.path.insert(0, str(tmp_path))
    try:
        app = DevServerApp(load_app_yaml(tmp_path))
        body = b"".join(app({"PATH_INFO": "/", "REQUEST_METHOD": "GET", "QUERY_STRING": "",
                             "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                             "wsgi.url_scheme": "http"},
                            lambda status, headers, exc_info=None: None))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("factory_app", None)
    assert body == b"blue"


def test_an_entrypoint_calling_with_code_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "runtime: python312\n"
                           "entrypoint: gunicorn \"main:create_app(__import__('os'))\"\n")
    error = str(load_error(path))
    assert "must be literals" in error and "app.yaml:2" in error


@pytest.mark.parametrize("entrypoint", [
    "gunicorn -b :$PORT -w 2 -k uvicorn.workers.UvicornWorker main:app",
    "gunicorn main:app --worker-class=uvicorn_worker.UvicornWorker",
    "gunicorn -kuvicorn.workers.UvicornH11Worker main:app",
    "python -m gunicorn --worker-class uvicorn.workers.UvicornWorker main:app",
    "uvicorn main:app --host 0.0.0.0 --port $PORT",
    "hypercorn main:app",
])
def test_an_asgi_entrypoint_is_refused_at_load(tmp_path: Path, entrypoint: str) -> None:
    """The development server calls app(environ, start_response): an ASGI app would fail on
    every request with a TypeError, so it is refused when app.yaml is read."""
    path = write(tmp_path, f"runtime: python312\nentrypoint: {entrypoint}\n")
    error = str(load_error(path))
    assert error.startswith(f"{path}:2: entrypoint ") and "serves ASGI apps" in error
    assert "runs WSGI apps only" in error and "Change entrypoint:" in error


@pytest.mark.parametrize("entrypoint", ["gunicorn -k gthread --threads 8 main:app",
                                        "gunicorn -k gevent main:app",
                                        "gunicorn --worker-class=sync main:app"])
def test_a_wsgi_worker_class_is_accepted(tmp_path: Path, entrypoint: str) -> None:
    write(tmp_path, f"runtime: python312\nentrypoint: {entrypoint}\n")
    assert load_app_yaml(tmp_path).wsgi_app == "main:app"


# --- login: the development server's sign-in -------------------------------------------------

LOGIN_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("user=%s admin=%s header=%s" % (
        environ.get("USER_EMAIL", ""), environ.get("USER_IS_ADMIN", ""),
        environ.get("HTTP_X_APPENGINE_USER_EMAIL", "-"))).encode()]
"""


@pytest.fixture
def login_app(tmp_path: Path) -> Iterator[Any]:
    from gae_sandbox.devserver import DevServerApp

    write(tmp_path, """\
        runtime: python27
        api_version: 1
        threadsafe: true
        handlers:
        - url: /admin/.*
          script: login_main.app
          login: admin
        - url: /api/.*
          script: login_main.app
          login: required
          auth_fail_action: unauthorized
        - url: /me
          script: login_main.app
          login: required
        - url: /.*
          script: login_main.app
        """)
    (tmp_path / "login_main.py").write_text(LOGIN_APP)
    app = DevServerApp(load_app_yaml(tmp_path))
    sys.path.insert(0, str(tmp_path))
    yield app
    sys.path.remove(str(tmp_path))
    sys.modules.pop("login_main", None)


def get(app: Any, path: str, query: str = "", cookie: str = "",
        **headers: str) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]],
                       exc_info: object = None) -> None:
        seen["status"], seen["headers"] = status, dict(response_headers)

    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET",
               "SERVER_NAME": "localhost", "SERVER_PORT": "8080", "wsgi.url_scheme": "http",
               "HTTP_COOKIE": cookie, **headers}
    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def sign_in(app: Any, email: str, admin: bool) -> str:
    status, headers, _ = get(app, "/_ah/login", f"email={email}&admin={admin}&action=Login"
                                                "&continue=/me")
    assert status == "302 Found" and headers["Location"] == "/me"
    return headers["Set-Cookie"].split(";", 1)[0]


def test_login_required_redirects_to_the_sign_in_page(login_app: Any) -> None:
    status, headers, _ = get(login_app, "/me", "a=1")
    assert status == "302 Found"
    assert headers["Location"] == "/_ah/login?continue=%2Fme%3Fa%3D1"
    status, _, body = get(login_app, "/_ah/login", "continue=/me")
    assert status == "200 OK" and b"Sign in" in body and b'value="/me"' in body


def test_signed_in_users_reach_the_app_with_the_users_api_variables(login_app: Any) -> None:
    cookie = sign_in(login_app, "ann@example.com", admin=False)
    assert get(login_app, "/me", cookie=cookie)[2] == \
        b"user=ann@example.com admin=0 header=ann@example.com"
    status, _, body = get(login_app, "/admin/panel", cookie=cookie)
    assert status == "401 Unauthorized" and b"ann@example.com is not authorized" in body

    admin = sign_in(login_app, "root@example.com", admin=True)
    assert get(login_app, "/admin/panel", cookie=admin)[2] == \
        b"user=root@example.com admin=1 header=root@example.com"


def test_unauthorized_action_and_forged_headers(login_app: Any) -> None:
    status, _, _ = get(login_app, "/api/x")
    assert status == "401 Unauthorized"
    # a client cannot name itself: App Engine's front end drops these headers
    status, _, body = get(login_app, "/open", HTTP_X_APPENGINE_USER_EMAIL="evil@example.com")
    assert status == "200 OK" and body == b"user= admin=0 header=-"
    status, _, _ = get(login_app, "/admin/x", cookie='dev_appserver_login="x:True"')
    assert status == "302 Found"  # a malformed cookie is nobody


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/",
                                    "/ok\r\nSet-Cookie: x=1", "javascript:alert(1)",
                                    "/caf\u00e9\u2603", "/\\evil.example"])
def test_sign_in_never_redirects_off_the_site(login_app: Any, target: str) -> None:
    query = urllib.parse.urlencode({"email": "a@b.co", "action": "Login", "continue": target})
    status, headers, _ = get(login_app, "/_ah/login", query)
    location = headers["Location"]
    assert status == "302 Found" and location.startswith("/") and not location.startswith("//")
    assert location.isascii() and "\r" not in location and "\n" not in location


def test_sign_out_clears_the_cookie(login_app: Any) -> None:
    status, headers, _ = get(login_app, "/_ah/login", "action=Logout&continue=/")
    assert status == "302 Found" and "Max-Age=0" in headers["Set-Cookie"]


@pytest.mark.parametrize(("key", "value"), [("login", "sometimes"),
                                            ("auth_fail_action", "shrug")])
def test_bad_login_settings_name_the_line(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, MINIMAL + f"  {key}: {value}\n")
    error = str(load_error(path))
    assert f"handler {key} must be" in error and f"app.yaml:{line_of(path, key)}" in error


def test_python27_apps_see_the_sdk_servers_variables_in_os_environ(tmp_path: Path) -> None:
    from gae_sandbox.devserver import DevServerApp

    write(tmp_path, "application: guestbook\nversion: two\n" + MINIMAL.replace(
        "main.app", "environ_main.app"))
    (tmp_path / "environ_main.py").write_text(textwrap.dedent("""\
        import os

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            names = ("APPLICATION_ID", "CURRENT_VERSION_ID", "DEFAULT_VERSION_HOSTNAME",
                     "PATH_INFO", "USER_EMAIL")
            return [" ".join(os.environ.get(n, "-") for n in names).encode()]
        """))
    sys.path.insert(0, str(tmp_path))
    try:
        app = DevServerApp(load_app_yaml(tmp_path))
        status, _, body = get(app, "/page", HTTP_HOST="localhost:8080")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("environ_main", None)
    assert status == "200 OK"
    assert body == b"dev~guestbook two.1 localhost:8080 /page "
    assert "APPLICATION_ID" not in os.environ


# --- appengine_config.py and the SDK server's variables (python27) ---------------------------

CONFIG_APP = """\
import os, sys
import config_vendored

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [config_vendored.VALUE.encode()]
"""

APPENGINE_CONFIG = """\
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
try:
    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "x.txt"), "w")
    WRITE = "written"
except Exception as error:
    WRITE = type(error).__name__

def webapp_add_wsgi_middleware(app):
    def wrapped(environ, start_response):
        def respond(status, headers, exc_info=None):
            return start_response(status, headers + [("X-Config", WRITE)], exc_info)
        return app(environ, respond)
    return wrapped
"""


@pytest.fixture
def config_app(tmp_path: Path) -> Iterator[Path]:
    write(tmp_path, MINIMAL.replace("main.app", "config_main.app"))
    (tmp_path / "config_main.py").write_text(CONFIG_APP)
    (tmp_path / "lib" / "config_vendored").mkdir(parents=True)
    (tmp_path / "lib" / "config_vendored" / "__init__.py").write_text("VALUE = 'vendored'\n")
    yield tmp_path
    for entry in (str(tmp_path), str(tmp_path / "lib")):
        while entry in sys.path:
            sys.path.remove(entry)
    for name in ("config_main", "config_vendored", "appengine_config"):
        sys.modules.pop(name, None)


def test_appengine_config_runs_before_the_scripts_in_the_sandbox(config_app: Path) -> None:
    """The python27 runtime imported appengine_config.py first (vendored lib/ on sys.path)
    and wrapped each script's app with its webapp_add_wsgi_middleware."""
    from gae_sandbox.devserver import DevServerApp

    (config_app / "appengine_config.py").write_text(APPENGINE_CONFIG)
    app = DevServerApp(load_app_yaml(config_app))
    status, headers, body = get(app, "/")
    assert (status, body) == ("200 OK", b"vendored")
    assert headers["X-Config"] == "FileWriteRefused"  # imported inside the sandbox
    assert not (config_app / "x.txt").exists()
    assert get(app, "/again")[1]["X-Config"] == "FileWriteRefused"  # wrapped once, kept


def test_without_appengine_config_a_vendored_import_fails(config_app: Path) -> None:
    from gae_sandbox.devserver import DevServerApp

    assert get(DevServerApp(load_app_yaml(config_app)), "/")[0] == "500 Internal Server Error"


def test_appengine_config_using_the_sdks_vendor_names_the_fix(
        config_app: Path, caplog: pytest.LogCaptureFixture) -> None:
    from gae_sandbox.devserver import DevServerApp

    (config_app / "appengine_config.py").write_text(
        "from google.appengine.ext import vendor\nvendor.add('lib')\n")
    app = DevServerApp(load_app_yaml(config_app))
    with caplog.at_level("ERROR", logger="gae_sandbox"):
        assert get(app, "/")[0] == "500 Internal Server Error"
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "appengine_config.py: No module named 'google" in message
    assert "does not provide the App Engine SDK's google.appengine" in message
    assert "sys.path.insert(0, os.path.join(" in message and "README" in message


def test_python27_apps_see_the_development_servers_cgi_variables(tmp_path: Path) -> None:
    """As the SDK's dev_appserver: SERVER_SOFTWARE starts with Development (apps test it),
    one INSTANCE_ID per server, one REQUEST_LOG_ID per request, the service, HTTPS; the
    server's own SERVER_SOFTWARE stays what SandboxMiddleware reads (gunicorn's recycling)."""
    from gae_sandbox.devserver import DevServerApp

    write(tmp_path, "service: worker\n" + MINIMAL.replace("main.app", "cgi_main.app"))
    (tmp_path / "cgi_main.py").write_text(textwrap.dedent("""\
        import json, os

        NAMES = ("SERVER_SOFTWARE", "SERVER_NAME", "INSTANCE_ID", "REQUEST_LOG_ID",
                 "CURRENT_MODULE_ID", "CURRENT_VERSION_ID", "HTTPS")

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps([{n: os.environ.get(n) for n in NAMES},
                                environ["SERVER_SOFTWARE"]]).encode()]
        """))
    sys.path.insert(0, str(tmp_path))
    try:
        app = DevServerApp(load_app_yaml(tmp_path))
        first, wsgi = json_of(get(app, "/", SERVER_SOFTWARE="gunicorn/23.0.0",
                                  SERVER_NAME="waitress.invalid", HTTP_HOST="myapp.test:8080"))
        assert app.scripts._server_software == "gunicorn/23.0.0"
        second, _ = json_of(get(app, "/", **{"wsgi.url_scheme": "https"}))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cgi_main", None)
    assert wsgi == first["SERVER_SOFTWARE"] == "Development/2.0"
    assert first["SERVER_NAME"] == "myapp.test" and second["SERVER_NAME"] == "localhost"
    assert first["CURRENT_MODULE_ID"] == "worker" and first["CURRENT_VERSION_ID"] == "1.1"
    assert (first["HTTPS"], second["HTTPS"]) == ("off", "on")
    assert first["INSTANCE_ID"] == second["INSTANCE_ID"] == app.instance_id
    assert len({first["REQUEST_LOG_ID"], second["REQUEST_LOG_ID"]}) == 2
    assert "INSTANCE_ID" not in os.environ


def json_of(response: tuple[str, dict[str, str], bytes]) -> Any:
    import json

    assert response[0] == "200 OK", response
    return json.loads(response[2])


def test_python3_apps_see_the_runtimes_variables(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gae_sandbox.devserver import DevServerApp

    write(tmp_path, "runtime: python312\nservice: api\nentrypoint: gunicorn -b :$PORT "
                    "env3_main:app\n")
    (tmp_path / "env3_main.py").write_text(textwrap.dedent("""\
        import json, os

        NAMES = ("PORT", "GOOGLE_CLOUD_PROJECT", "GAE_APPLICATION", "GAE_SERVICE",
                 "GAE_VERSION", "GAE_INSTANCE", "GAE_RUNTIME", "GAE_ENV")
        AT_IMPORT = {n: os.environ.get(n) for n in NAMES}

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps([AT_IMPORT, {n: os.environ.get(n) for n in NAMES}]).encode()]
        """))
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    sys.path.insert(0, str(tmp_path))
    try:
        app = DevServerApp(load_app_yaml(tmp_path))
        at_import, now = json_of(get(app, "/"))
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-real-project")  # the process's wins
        named = json_of(get(DevServerApp(load_app_yaml(tmp_path)), "/"))[1]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("env3_main", None)
    assert at_import == now == {
        "PORT": "8080", "GOOGLE_CLOUD_PROJECT": "local", "GAE_APPLICATION": "dev~local",
        "GAE_SERVICE": "api", "GAE_VERSION": "dev", "GAE_INSTANCE": app.instance_id,
        "GAE_RUNTIME": "python312", "GAE_ENV": "standard"}
    assert named["GOOGLE_CLOUD_PROJECT"] == "my-real-project"
    assert "GAE_INSTANCE" not in os.environ and "PORT" not in os.environ


def test_an_appengine_config_in_skip_files_is_not_imported(
        config_app: Path, caplog: pytest.LogCaptureFixture) -> None:
    """skip_files leaves it out of the deployment: the runtime never saw it (the app fails
    on its vendored import, not on a refused appengine_config)."""
    from gae_sandbox.devserver import DevServerApp

    (config_app / "appengine_config.py").write_text(APPENGINE_CONFIG)
    write(config_app, MINIMAL.replace("main.app", "config_main.app")
          + "skip_files:\n- ^appengine_config\\.py$\n")
    with caplog.at_level("ERROR", logger="gae_sandbox"):
        status, headers, _ = get(DevServerApp(load_app_yaml(config_app)), "/")
    assert status == "500 Internal Server Error" and "X-Config" not in headers
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "No module named 'config_vendored'" in message and "appengine_config" not in message


EXPIRING_APP = """\
runtime: python27
default_expiration: "4d 5h"
handlers:
- url: /short
  static_dir: static
  expiration: 30m
- url: /own
  static_dir: static
  http_headers:
    Cache-Control: no-store
- url: /static
  static_dir: static
- url: /.*
  script: main.app
"""


def appyaml_failure(message: str, line: int = 0) -> AppYamlError:
    return AppYamlError(f"app.yaml:{line}: {message}")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("4d 5h", 4 * 86400 + 5 * 3600), ("1d 12h 30m 10s", 131410), ("90", 90),
    ("10S", 10), (0, 0)])
def test_expiration_values(text: object, seconds: int) -> None:
    from gae_sandbox.appyaml import parse_expiration

    assert parse_expiration(text, appyaml_failure, 3, "expiration") == seconds


@pytest.mark.parametrize("bad", ["soon", "5x", "-1d", "''", "1d,2h", "true", "[1]"])
def test_a_bad_expiration_names_its_line(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path / "app", EXPIRING_APP.replace("expiration: 30m", f"expiration: {bad}"))
    message = str(load_error(path))
    assert message.startswith(f"{path}:{line_of(path, '  expiration: ')}: expiration must be")


def test_a_bad_default_expiration_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "app", EXPIRING_APP.replace('"4d 5h"', "forever"))
    message = str(load_error(path))
    assert message.startswith(f"{path}:2: default_expiration must be")


def test_static_files_carry_their_expiration_and_answer_revalidation(tmp_path: Path) -> None:
    from gae_sandbox.devserver import DevServerApp

    root = tmp_path / "app"
    write(root, EXPIRING_APP)
    (root / "static").mkdir()
    (root / "static" / "style.css").write_text("body {}")
    app = DevServerApp(load_app_yaml(root))
    status, headers, body = get(app, "/short/style.css")
    assert (status, body) == ("200 OK", b"body {}")
    assert headers["Cache-Control"] == "public, max-age=1800"
    assert "GMT" in headers["Expires"] and "GMT" in headers["Last-Modified"]
    status, headers, _ = get(app, "/static/style.css")
    assert headers["Cache-Control"] == f"public, max-age={4 * 86400 + 5 * 3600}"
    status, headers, _ = get(app, "/own/style.css")
    assert headers["Cache-Control"] == "no-store"  # app.yaml's own header wins
    etag = headers["ETag"]
    status, headers, body = get(app, "/own/style.css", HTTP_IF_NONE_MATCH=f'"x", W/{etag}')
    assert (status, body) == ("304 Not Modified", b"")
    assert headers["ETag"] == etag and "Content-Length" not in headers
    (root / "static" / "style.css").write_text("body { color: red }")
    os.utime(root / "static" / "style.css", ns=(1, 1))  # a changed file: a new tag
    status, headers, body = get(app, "/own/style.css", HTTP_IF_NONE_MATCH=etag)
    assert (status, body) == ("200 OK", b"body { color: red }")
    assert headers["ETag"] != etag


def test_without_expiration_no_cache_headers(tmp_path: Path) -> None:
    from gae_sandbox.devserver import DevServerApp

    root = tmp_path / "app"
    write(root, EXPIRING_APP.replace('default_expiration: "4d 5h"\n', ""))
    (root / "static").mkdir()
    (root / "static" / "style.css").write_text("body {}")
    app = DevServerApp(load_app_yaml(root))
    status, headers, _ = get(app, "/static/style.css")
    assert status == "200 OK" and "ETag" in headers
    assert "Cache-Control" not in headers and "Expires" not in headers
    assert get(app, "/short/style.css")[1]["Cache-Control"] == "public, max-age=1800"


def test_non_ascii_urls_match_handlers_and_files(tmp_path: Path) -> None:
    """A WSGI server gives PATH_INFO as latin-1-decoded bytes (PEP 3333): the handler
    patterns and the file names are matched against the UTF-8 text."""
    from gae_sandbox.devserver import DevServerApp

    root = tmp_path / "app"
    write(root, "runtime: python27\nhandlers:\n- url: /static\n  static_dir: static\n"
                "- url: /café\n  login: required\n  script: main.app\n"
                "- url: /.*\n  script: main.app\n")
    (root / "static").mkdir()
    (root / "static" / "café.txt").write_text("crème")
    app = DevServerApp(load_app_yaml(root))
    wire = "/static/café.txt".encode().decode("latin-1")  # as a server hands it over
    assert get(app, wire)[::2] == ("200 OK", "crème".encode())
    status, headers, _ = get(app, "/café".encode().decode("latin-1"))
    assert status == "302 Found"  # the login: required handler, not the catch-all
    assert headers["Location"] == "/_ah/login?continue=%2Fcaf%25C3%25A9"


def test_static_handlers_do_not_serve_what_skip_files_hides(tmp_path: Path) -> None:
    """The SDK uploaded no file skip_files matches, static ones included: the dev server
    answers 404 for them (a .env beside the styles was served), and for a NUL in the path
    (it was a 500 from realpath)."""
    root = tmp_path / "app"
    write(root, MINIMAL.replace("handlers:\n", "skip_files:\n- ^(.*/)?\\..*$\n"
                                "- ^static/private/.*$\nhandlers:\n- url: /static\n"
                                "  static_dir: static\n- url: /files/(.*)\n"
                                "  static_files: static/\\1\n  upload: static/.*\n"))
    from gae_sandbox.devserver import DevServerApp

    (root / "static" / "private").mkdir(parents=True)
    (root / "static" / ".env").write_text("SECRET=1\n")
    (root / "static" / "private" / "key.txt").write_text("SECRET=2\n")
    (root / "static" / "site.css").write_text("body {}\n")
    (root / "main.py").write_text("def app(environ, start_response):\n"
                                  "    start_response('200 OK', [])\n    return [b'app']\n")
    app = DevServerApp(load_app_yaml(root))
    assert get(app, "/static/site.css")[::2] == ("200 OK", b"body {}\n")
    assert get(app, "/files/site.css")[::2] == ("200 OK", b"body {}\n")
    for path in ("/static/.env", "/files/.env", "/static/private/key.txt",
                 "/files/private/key.txt", "/static/a\0b", "/files/a\0b"):
        status, _, body = get(app, path)
        assert status == "404 Not Found" and b"SECRET" not in body, path
    # the control: without that skip_files entry the private file is served
    (root / "app.yaml").write_text((root / "app.yaml").read_text().replace(
        "- ^static/private/.*$\n", ""))
    assert get(DevServerApp(load_app_yaml(root)), "/files/private/key.txt")[::2] == (
        "200 OK", b"SECRET=2\n")


@pytest.mark.parametrize("options", ["--chdir src", "--chdir=src", "--pythonpath src,lib"])
def test_entrypoint_chdir_and_pythonpath_are_where_the_app_is_imported_from(
        tmp_path: Path, options: str) -> None:
    """gunicorn's --chdir and --pythonpath put folders first on sys.path: the app in src/
    was imported as a missing 'main' (every request a 500); one outside the app is an
    error, as it was not deployed."""
    from gae_sandbox.devserver import DevServerApp

    root = tmp_path / "app"
    (root / "src").mkdir(parents=True)
    (root / "lib").mkdir()
    name = f"main_{os.urandom(4).hex()}"  # a module no other test has imported
    write(root, f"runtime: python312\nentrypoint: gunicorn -b :$PORT {options} {name}:app\n")
    module = load_app_yaml(root).wsgi_app.partition(":")[0]
    (root / "src" / f"{module}.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from src']\n")
    config = load_app_yaml(root)
    assert config.module_paths[0] == os.path.realpath(root / "src")
    saved = list(sys.path)
    try:
        assert get(DevServerApp(config), "/")[::2] == ("200 OK", b"from src")
    finally:
        sys.path[:] = saved
    write(root, "runtime: python312\nentrypoint: gunicorn --chdir ../elsewhere main:app\n")
    with pytest.raises(AppYamlError, match="outside the app"):
        load_app_yaml(root)
