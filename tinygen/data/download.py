"""Fetch the four MNIST .gz files from public mirrors, verified by SHA-256, with the standard library only.

``download_mnist(dest)`` tries each mirror in order for each file, streams to ``<name>.part`` (resuming a partial
one with an HTTP Range request when the server allows it), checks the hash, then renames into place — so ``dest``
never holds a half-written or unverified ``.gz``. Files already present and valid are skipped.
"""
import os
import sys
import time
from pathlib import Path

from .mnist import SPLITS, ChecksumError, verify_file

# The mirrors torchvision uses (the original host is often unreachable).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class DownloadError(RuntimeError):
    """No mirror delivered a valid copy of a file."""


def _size(nbytes):
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


class _Progress:
    """A status line on a stream (stderr by default), rewritten in place on a terminal and written once at the
    end elsewhere (log files); silent when ``stream`` is None."""

    def __init__(self, stream, name, total, start=0):
        self.stream, self.name, self.total, self.done = stream, name, total, start
        self.live = stream is not None and getattr(stream, "isatty", lambda: False)()
        self._last = 0.0

    def update(self, n):
        self.done += n
        now = time.monotonic()
        if self.live and now - self._last > 0.1:
            self._last = now
            self._write("\r")

    def _write(self, start, end=""):
        if self.total:
            line = f"{self.name}: {_size(self.done)} of {_size(self.total)} ({100 * self.done / self.total:3.0f}%)"
        else:
            line = f"{self.name}: {_size(self.done)}"
        self.stream.write(start + line + end)
        self.stream.flush()

    def close(self, note=""):
        if self.stream is not None:
            self._write("\r" if self.live else "", f" {note}\n" if note else "\n")


def _message(stream, text):
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()


def _fetch(url, part, timeout, stream, name):
    """Stream ``url`` into ``part``, appending to what it already holds when the server honours a Range."""
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tinygen"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        progress = _Progress(stream, name, total, have)
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                block = response.read(1 << 16)
                if not block:
                    break
                f.write(block)
                progress.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        progress.close("(resumed)" if resumed else "")
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")
    return bool(resumed)


def download_mnist(dest, mirrors=None, timeout=30.0, splits=("train", "test"), progress=True):
    """Download MNIST's .gz files into ``dest`` and return {file name: path}.

    mirrors: base URLs tried in order for each file (default ``MIRRORS``); a file missing or corrupt on one
        mirror is fetched from the next.
    timeout: seconds to wait on a connection or a read before giving up on a mirror.
    splits: which splits to fetch ("train", "test").
    progress: True for a status line on stderr, False for silence, or a text stream to write to.

    Raises ``DownloadError`` listing each mirror's failure when no mirror gives a file with a known SHA-256.
    A download with the wrong hash is deleted; one cut off mid-transfer stays as ``<name>.part`` and is
    resumed by the next mirror or the next call. Only verified files ever get their final names.
    """
    stream = sys.stderr if progress is True else (progress or None)
    mirrors = list(MIRRORS if mirrors is None else mirrors)
    if not mirrors:
        raise ValueError("download_mnist: mirrors is empty")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"download_mnist: unknown split(s) {unknown}; expected 'train' and/or 'test'")
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)

    result = {}
    for split in splits:
        for base in SPLITS[split]:
            name = base + ".gz"
            result[name] = _download_one(dest, name, mirrors, timeout, stream)
    return result


def _download_one(dest, name, mirrors, timeout, stream):
    import http.client
    import urllib.error

    target = dest / name
    if target.exists():
        try:
            verify_file(target)
            _message(stream, f"{name}: already present and valid")
            return target
        except ChecksumError as e:
            _message(stream, f"{name}: present but invalid, downloading again ({e})")
    part = dest / (name + ".part")
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        # A resumed .part may come from another mirror's (differently compressed) copy: if it fails the
        # check, fetch the whole file from this mirror once more before moving on.
        for attempt in range(2):
            try:
                resumed = _fetch(url, part, timeout, stream, name)
            except urllib.error.HTTPError as e:
                if part.exists() and attempt == 0:  # the server refused our Range (e.g. 416): start afresh
                    part.unlink()
                    continue
                failures.append(f"{url}: {e}")
                _message(stream, f"{name}: failed from {mirror} ({e})")
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as e:
                # A dropped connection keeps its .part for the next mirror or run to resume; it is verified
                # before use.
                failures.append(f"{url}: {e}")
                _message(stream, f"{name}: failed from {mirror} ({e})")
                break
            try:
                verify_file(part, name=name)
            except ChecksumError as e:
                part.unlink()
                if resumed and attempt == 0:
                    continue
                failures.append(f"{url}: {e}")
                _message(stream, f"{name}: wrong SHA-256 from {mirror}, discarded")
                break
            os.replace(part, target)
            return target
    raise DownloadError(f"could not download a valid {name} into {dest} (tinygen ships a copy of MNIST, used "
                        f"without --data or TINYGEN_DATA, so no download is needed to train); tried:\n  "
                        + "\n  ".join(failures))
