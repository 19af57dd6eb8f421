"""download_mnist against a local HTTP server on 127.0.0.1 (never the internet): success, corruption, fallback,
skipping valid files, and resuming a partial download."""
import functools
import gzip
import http.server
import importlib
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tinygen import data
from tinygen.data import download as dl

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus byte ranges (for resuming) and a log of requests."""

    def log_message(self, *args):
        pass

    def send_head(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not self.server.ranges or not path.is_file():
            return super().send_head()
        start = int(rng.split("=")[1].split("-")[0])
        body = path.read_bytes()
        if start >= len(body):
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        return io.BytesIO(body[start:])


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on an ephemeral port of 127.0.0.1; mirrors are subfolders of it."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.requests, httpd.ranges = [], False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.root = root
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def mirror(server, name, files=TEST_FILES, source=data.BUNDLED_DIR):
    folder = server.root / name
    folder.mkdir()
    for f in files:
        shutil.copy(source / f, folder / f)
    return server.url + name + "/"


def test_success_and_the_files_load(server, tmp_path):
    url = mirror(server, "a")
    dest = tmp_path / "dest"
    log = io.StringIO()
    got = data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=log)
    assert sorted(p.name for p in got.values()) == sorted(TEST_FILES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(TEST_FILES)  # no .part left over
    for f in TEST_FILES:
        assert (dest / f).read_bytes() == (data.BUNDLED_DIR / f).read_bytes()
    assert "t10k-images-idx3-ubyte.gz" in log.getvalue() and "MB" in log.getvalue()
    m = data.mnist("test", root=dest, verify=True)
    assert not m.bundled and len(m.labels) == 10000


def test_full_download_from_the_shared_copy(server, tmp_path, mnist_dir):
    splits = importlib.import_module("tinygen.data.mnist").SPLITS
    files = [base + ".gz" for s in ("train", "test") for base in splits[s]]
    url = mirror(server, "a", files=files, source=mnist_dir)
    got = data.download_mnist(tmp_path / "dest", mirrors=[url], timeout=5, progress=False)
    assert len(got) == 4
    assert len(data.mnist("train", root=tmp_path / "dest", verify=True).labels) == 60000


def test_corrupted_file_raises_and_leaves_nothing(server, tmp_path):
    url = mirror(server, "a")
    bad = server.root / "a" / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(bad.read_bytes())
    blob[100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match=r"t10k-labels-idx1-ubyte.gz.*\n.*127.0.0.1.*SHA-256"):
        data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=False)
    assert not (dest / "t10k-labels-idx1-ubyte.gz").exists()
    assert not (dest / "t10k-labels-idx1-ubyte.gz.part").exists()
    assert (dest / "t10k-images-idx3-ubyte.gz").exists()  # the good file that came first stays


def test_404_on_first_mirror_falls_back_to_second(server, tmp_path):
    (server.root / "empty").mkdir()
    first = server.url + "empty/"
    second = mirror(server, "b")
    log = io.StringIO()
    data.download_mnist(tmp_path / "dest", mirrors=[first, second], splits=("test",), timeout=5, progress=log)
    assert "404" in log.getvalue()
    paths = [p for p, _ in server.requests]
    assert paths == ["/empty/t10k-images-idx3-ubyte.gz", "/b/t10k-images-idx3-ubyte.gz",
                     "/empty/t10k-labels-idx1-ubyte.gz", "/b/t10k-labels-idx1-ubyte.gz"]
    assert len(data.mnist("test", root=tmp_path / "dest", verify=True).labels) == 10000


def test_corrupt_on_first_mirror_falls_back_to_second(server, tmp_path):
    first = mirror(server, "a")
    (server.root / "a" / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    second = mirror(server, "b")
    data.download_mnist(tmp_path / "dest", mirrors=[first, second], splits=("test",), timeout=5, progress=False)
    assert (tmp_path / "dest" / "t10k-images-idx3-ubyte.gz").read_bytes() == \
        (data.BUNDLED_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()


def test_unreachable_mirror_is_reported(tmp_path, server):
    # A port on 127.0.0.1 that nothing listens on (the server's own port, after closing a second server).
    probe = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    dead = f"http://127.0.0.1:{probe.server_address[1]}/"
    probe.server_close()
    good = mirror(server, "b")
    data.download_mnist(tmp_path / "dest", mirrors=[dead, good], splits=("test",), timeout=5, progress=False)
    with pytest.raises(dl.DownloadError, match="could not download a valid t10k-images-idx3-ubyte.gz"):
        data.download_mnist(tmp_path / "dest2", mirrors=[dead], splits=("test",), timeout=5, progress=False)


def test_valid_files_are_skipped_and_invalid_ones_replaced(server, tmp_path):
    url = mirror(server, "a")
    dest = tmp_path / "dest"
    data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=False)
    server.requests.clear()
    log = io.StringIO()
    data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=log)
    assert server.requests == [] and log.getvalue().count("already present and valid") == 2
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"broken")
    data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=False)
    assert [p for p, _ in server.requests] == ["/a/t10k-labels-idx1-ubyte.gz"]
    data.verify_file(dest / "t10k-labels-idx1-ubyte.gz")


def test_resumes_a_partial_download_with_a_range_request(server, tmp_path):
    url = mirror(server, "a")
    server.ranges = True
    dest = tmp_path / "dest"
    dest.mkdir()
    full = (data.BUNDLED_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()
    (dest / "t10k-images-idx3-ubyte.gz.part").write_bytes(full[:500000])
    data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=False)
    assert ("/a/t10k-images-idx3-ubyte.gz", "bytes=500000-") in server.requests
    assert (dest / "t10k-images-idx3-ubyte.gz").read_bytes() == full
    assert not (dest / "t10k-images-idx3-ubyte.gz.part").exists()


def test_bad_resume_data_is_refetched_whole(server, tmp_path):
    url = mirror(server, "a")
    server.ranges = True
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "t10k-labels-idx1-ubyte.gz.part").write_bytes(b"x" * 100)  # not a prefix of the real file
    data.download_mnist(dest, mirrors=[url], splits=("test",), timeout=5, progress=False)
    assert [r for _, r in server.requests if r] == ["bytes=100-"]
    data.verify_file(dest / "t10k-labels-idx1-ubyte.gz")


def test_a_differently_compressed_mirror_copy_is_accepted(server, tmp_path):
    folder = server.root / "repacked"
    folder.mkdir()
    for f in TEST_FILES:
        raw = gzip.decompress((data.BUNDLED_DIR / f).read_bytes())
        (folder / f).write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    data.download_mnist(tmp_path / "dest", mirrors=[server.url + "repacked/"], splits=("test",), timeout=5,
                        progress=False)
    np.testing.assert_array_equal(data.mnist("test", root=tmp_path / "dest").images, data.mnist("test").images)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown split"):
        data.download_mnist("unused", mirrors=["http://127.0.0.1:1/"], splits=("val",))
    with pytest.raises(ValueError, match="mirrors is empty"):
        data.download_mnist("unused", mirrors=[])


def test_default_mirrors_are_https_public_mirrors():
    assert len(dl.MIRRORS) >= 2 and all(m.startswith("https://") and m.endswith("/mnist/") for m in dl.MIRRORS)
