"""Where readers are: the download path and the Colab/pip path, run for real, offline.

Why this file exists: from a checkout nothing is downloaded, so the other tests never run the
code a Colab reader runs. Here torchvision's own MNIST download code fetches the files from a
stand-in mirror, an HTTP server on 127.0.0.1 (never any other address) that serves the shipped
``data/*.gz``; and the Colab set-up cell installs the package with pip from a local git clone
into a fresh virtual environment outside the checkout, then Part 1 runs there.

Checksums: torchvision checks the MD5 of each downloaded ``.gz`` against ``MNIST.resources``.
The real mirrors serve the original files, which have exactly those MD5s; the shipped files
were recompressed (data/README.md), so torchvision refuses them as they are (tested below). The
stand-in mirror therefore comes with its own list: ``resources`` with the served files' MD5s,
what a real mirror's files give. torchvision's check still runs, against what was served.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
from pathlib import Path

import pytest
from torchvision import datasets

from mnist_dissected.data import load_mnist

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "data"
TORCHVISION_RESOURCES = list(datasets.MNIST.resources)  # (name, MD5 of the original .gz)
NAMES = [name for name, _ in TORCHVISION_RESOURCES]  # the four .gz files, in download order
LOCALHOST = "127.0.0.1"
PROXY_VARS = ["http_proxy", "https_proxy", "all_proxy", "no_proxy"]


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- the stand-in mirror


class Mirror(http.server.ThreadingHTTPServer):
    """Serves ``files`` (name -> bytes) at ``/<name>``; ``faults`` (name -> how) breaks some:
    ``"404"``, ``"truncate"`` (announces the full length, sends half, hangs up)."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__((LOCALHOST, 0), _MirrorHandler)
        self.files = files
        self.faults: dict[str, str] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.server_address[1]}/"


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self):  # the name http.server calls
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        fault = self.server.faults.get(name)
        if name not in self.server.files or fault == "404":
            self.send_error(404)
            return
        body = self.server.files[name]
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # torchvision opens each URL once unread
            self.wfile.write(body[: len(body) // 2] if fault == "truncate" else body)
        self.close_connection = True

    def log_message(self, format, *args):  # quiet
        pass


@contextlib.contextmanager
def serving(files: dict[str, bytes]):
    mirror = Mirror(files)
    thread = threading.Thread(target=mirror.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        mirror.shutdown()
        mirror.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shipped() -> dict[str, bytes]:
    return {name: (SHIPPED / name).read_bytes() for name in NAMES}


@pytest.fixture
def mirror(shipped, monkeypatch):
    """The stand-in mirror, torchvision pointed at it (and only at it), with its MD5 list."""
    for var in PROXY_VARS:  # straight to 127.0.0.1, never through a proxy
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("no_proxy", LOCALHOST)
    with serving(dict(shipped)) as server:
        monkeypatch.setattr(datasets.MNIST, "mirrors", [server.url])
        monkeypatch.setattr(
            datasets.MNIST, "resources", [(name, md5_of(body)) for name, body in shipped.items()]
        )
        yield server


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DISSECTED_DATA", raising=False)
    root = tmp_path / "data"
    root.mkdir()
    return root


def left_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_failed_cleanly(err: pytest.ExceptionInfo, root: Path, *expected: str) -> None:
    """An ``MNISTNotFoundError`` that names the files and the cause, and an untouched folder."""
    assert type(err.value).__name__ == "MNISTNotFoundError"
    message = str(err.value)
    assert "MNIST files not found" in message and str(root) in message
    assert "The download failed too" in message
    for text in expected:
        assert text in message, f"{text!r} not in the message:\n{message}"
    assert root.is_dir() and left_in(root) == [], "nothing half-written is left behind"


# --------------------------------------------------------------------------- the download path


def test_download_from_a_mirror_into_an_empty_folder(mirror, empty_root):
    train = load_mnist(root=empty_root, download=True)
    assert sorted(set(mirror.requests)) == sorted(NAMES), "torchvision fetched all four files"
    asked = len(mirror.requests)
    test = load_mnist(train=False, root=empty_root, download=True)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert int(train.targets[0]) == 5
    assert len(mirror.requests) == asked, "downloaded once, then found"
    raw = empty_root / "MNIST" / "raw"
    for name in NAMES:
        assert (raw / name).read_bytes() == (SHIPPED / name).read_bytes()
        assert (raw / name.removesuffix(".gz")).is_file()
    assert not [p for p in left_in(empty_root) if p.endswith(".tmp")]


def test_mirror_down(mirror, empty_root, monkeypatch):
    url = f"http://{LOCALHOST}:{closed_port()}/"
    monkeypatch.setattr(datasets.MNIST, "mirrors", [url])
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=empty_root, download=True)
    assert_failed_cleanly(err, empty_root, "train-images-idx3-ubyte.gz", url, "Connection refused")


@pytest.mark.parametrize("name", [NAMES[0], NAMES[-1]], ids=["first-file", "last-file"])
def test_file_missing_on_the_mirror(mirror, empty_root, name):
    """404 for one file; when it is the last, the three downloaded before it go too."""
    mirror.faults[name] = "404"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=empty_root, download=True)
    assert_failed_cleanly(err, empty_root, f"while downloading {name}", "404")


@pytest.mark.parametrize("name", [NAMES[0], NAMES[-1]], ids=["first-file", "last-file"])
def test_truncated_download(mirror, empty_root, name):
    """The connection drops halfway: urllib returns the short body without an error, and
    torchvision's MD5 check is what notices."""
    mirror.faults[name] = "truncate"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=empty_root, download=True)
    assert mirror.requests.count(name) >= 1
    assert_failed_cleanly(
        err, empty_root, f"while downloading {name}", "File not found or corrupted"
    )


def test_shipped_files_fail_torchvisions_own_checksums(mirror, empty_root, monkeypatch):
    """A mirror serving the recompressed shipped files, checked against torchvision's real
    list: wrong MD5, refused. (So the shipped files can never stand in for a real mirror.)"""
    monkeypatch.setattr(datasets.MNIST, "resources", TORCHVISION_RESOURCES)
    for name, md5 in TORCHVISION_RESOURCES:
        assert md5_of(mirror.files[name]) != md5
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=empty_root, download=True)
    assert_failed_cleanly(
        err, empty_root, f"while downloading {NAMES[0]}", "File not found or corrupted"
    )


def test_wrong_content_that_passes_md5_is_caught_by_the_packages_own_check(
    mirror, empty_root, shipped, monkeypatch
):
    """A mirror whose list and file agree but hold other data (here: the test labels served as
    the training labels): torchvision accepts it, the package's SHA-256 check refuses it."""
    name = "train-labels-idx1-ubyte.gz"
    wrong = shipped["t10k-labels-idx1-ubyte.gz"]
    mirror.files[name] = wrong
    monkeypatch.setattr(datasets.MNIST, "resources", [(n, md5_of(mirror.files[n])) for n in NAMES])
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=empty_root, download=True)
    assert_failed_cleanly(err, empty_root, "train-labels-idx1-ubyte")


# --------------------------------------------------------------------------- the Colab/pip path

REPO_URL = re.search(r'^Repository = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
# pyproject.toml's build backend: offline, pip builds the package with this environment's.
BUILD_REQUIREMENT = re.compile(r'^requires = \["([A-Za-z0-9_.-]+)>=([\d.]+)"\]$', re.M)
# Part 1 by default (about a minute); Part 5 trains its model (ten minutes on 2 cores):
# MNIST_DISSECTED_COLAB_PARTS="1 5" runs both.
COLAB_PARTS = [
    path.stem
    for part in os.environ.get("MNIST_DISSECTED_COLAB_PARTS", "1").split()
    for path in sorted((ROOT / "notebooks").glob(f"{part}_*.ipynb"))
]
# Not linked into the fresh environment: the package itself (it comes from the set-up cell's
# pip install), pip (the fresh environment's own), and .pth start-up hooks.
NOT_LINKED = re.compile(r"^(mnist_dissected|__editable__|pip\b)|\.pth$")

STANDIN_COLAB = '"""Stand-in for Colab\'s module: the set-up cell asks if it is loaded."""\n'
KERNEL_STARTUP = textwrap.dedent("""\
    # Colab imports google.colab when its kernel starts; the test's stand-in is on PYTHONPATH.
    import google.colab  # noqa: F401

    # The stand-in mirror on 127.0.0.1, with the MD5s of the files it serves (the shipped
    # files are recompressed; a real mirror's match torchvision's own list).
    import json
    import os
    from urllib.parse import urlsplit

    from torchvision import datasets

    _mirror = os.environ["MNIST_DISSECTED_TEST_MIRROR"]
    assert urlsplit(_mirror).hostname == "127.0.0.1", _mirror
    datasets.MNIST.mirrors = [_mirror]
    datasets.MNIST.resources = json.loads(os.environ["MNIST_DISSECTED_TEST_MD5"])
""")
# Run by the fresh environment's Python: execute the notebook (a copy, in a folder that is not
# a checkout, like Colab's /content), then one more cell that reports where things came from.
RUN_NOTEBOOK = textwrap.dedent("""\
    import json, sys
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    path = Path(sys.argv[1])
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys, mnist_dissected\\n"
        "from mnist_dissected.data import load_mnist\\n"
        "print(json.dumps({'executable': sys.executable, 'package': mnist_dissected.__file__,"
        " 'data': str(load_mnist(train=False).root), 'colab': 'google.colab' in sys.modules}))"))
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    print(nb.cells[-1].outputs[-1]["text"])
""")


def git(*args: str, cwd: Path) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def snapshot_of_the_working_tree(dest: Path) -> Path:
    """A git repository holding what the checkout holds now (tracked and new files, not the
    ignored ones), committed: what GitHub would hold after a push."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "snapshot", cwd=dest)
    return dest


def fresh_environment(venv: Path, deps: Path) -> Path:
    """A new virtual environment outside the checkout, without the package. Its heavy
    dependencies (torch, Jupyter, ...) are this environment's, linked in one by one through
    ``deps`` so nothing is downloaded; the package itself is not among them."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    # Python < 3.12 seeds an old setuptools; this environment's (new enough for the build)
    # is linked in with the rest.
    subprocess.run(
        [python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
        check=True,
        capture_output=True,
    )
    deps.mkdir()
    site_packages = Path(sysconfig.get_paths()["purelib"])
    for entry in site_packages.iterdir():
        if not NOT_LINKED.search(entry.name):
            (deps / entry.name).symlink_to(entry)
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    (Path(fresh_site.stdout.strip()) / "_linked_dependencies.pth").write_text(f"{deps}\n")
    return python


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """The fresh environment, and the local clone that GitHub's URL leads to."""
    backend = BUILD_REQUIREMENT.search((ROOT / "pyproject.toml").read_text())
    name, floor = backend[1], backend[2]
    installed = importlib.metadata.version(name)
    if tuple(map(int, installed.split(".")[:2])) < tuple(map(int, floor.split(".")[:2])):
        pytest.skip(
            f"offline, pip builds the package with this environment's {name}: "
            f"{installed} is older than the build floor {floor} "
            f"(pip install '{name}>={floor}')"
        )
    tmp = tmp_path_factory.mktemp("colab")
    repo = snapshot_of_the_working_tree(tmp / "repo")
    python = fresh_environment(tmp / "venv", tmp / "deps")
    gitconfig = tmp / "gitconfig"
    gitconfig.write_text(f'[url "file://{repo}"]\n\tinsteadOf = {REPO_URL}\n')
    stub = tmp / "stub" / "google" / "colab"  # a namespace package: no google/__init__.py
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(STANDIN_COLAB)
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text(KERNEL_STARTUP)
    return tmp, python, gitconfig


def colab_environment(
    tmp: Path, python: Path, gitconfig: Path, mirror_url: str, md5: list
) -> dict[str, str]:
    """What the kernel (and the pip it starts) sees: no data folder or package from the
    checkout, pip offline, GitHub's URL rewritten by git to the local clone."""
    drop = {
        "MNIST_DISSECTED_DATA",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        *PROXY_VARS,
        *(v.upper() for v in PROXY_VARS),
    }
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PIP_")}
    cache = tmp / f"cache-{len(list(tmp.glob('cache-*')))}"
    cache.mkdir()
    env.update(
        {
            "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(tmp / "stub"),
            "IPYTHONDIR": str(tmp / "ipython"),
            "JUPYTER_DATA_DIR": str(tmp / "jupyter"),
            "XDG_CACHE_HOME": str(cache),
            "GIT_CONFIG_GLOBAL": str(gitconfig),
            "GIT_CONFIG_NOSYSTEM": "1",
            # Offline: no index; the build backend (setuptools) is the environment's, not
            # downloaded into an isolated build environment (PIP_NO_BUILD_ISOLATION=0 turns
            # isolation off: pip reads the variable as the value of "build isolation").
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "no_proxy": LOCALHOST,
            "MNIST_DISSECTED_TEST_MIRROR": mirror_url,
            "MNIST_DISSECTED_TEST_MD5": json.dumps(md5),
        }
    )
    return env


@pytest.mark.slow
@pytest.mark.newest_only
@pytest.mark.parametrize("stem", COLAB_PARTS)
def test_colab_setup_cell_installs_from_git_and_the_notebook_runs(colab_like, mirror, stem):
    tmp, python, gitconfig = colab_like
    content = tmp / f"content-{stem}"  # Colab's /content: no checkout around
    content.mkdir()
    notebook = content / f"{stem}.ipynb"
    shutil.copy(ROOT / "notebooks" / notebook.name, notebook)
    env = colab_environment(
        tmp, python, gitconfig, mirror.url, [list(r) for r in datasets.MNIST.resources]
    )
    result = subprocess.run(
        [python, "-c", RUN_NOTEBOOK, notebook],
        cwd=content,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["colab"], "the set-up cell took its Colab branch"
    assert Path(report["executable"]).parent == python.parent
    package = Path(report["package"])
    assert package.is_relative_to(tmp / "venv"), f"installed by the set-up cell: {package}"
    assert not (package.parent.parent / "data").exists()
    cache = Path(env["XDG_CACHE_HOME"]) / "mnist_dissected"
    assert Path(report["data"]) == cache, "no checkout: the per-user cache"
    assert sorted(set(mirror.requests)) == sorted(NAMES), "downloaded from the mirror"
    direct_url = next(
        (tmp / "venv").glob("lib/python*/site-packages/mnist_dissected-*.dist-info/direct_url.json")
    )
    assert json.loads(direct_url.read_text())["url"] == REPO_URL
