"""Named corpora: the bundled tiny Shakespeare, downloads served from 127.0.0.1 (resumed,
checked, unpacked), offline and corrupt downloads, ``--data NAME`` resolution, ``fastweights data``."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from fastweights.cli import main
from fastweights.cli.errors import UsageError
from fastweights.data import corpora
from fastweights.data.corpora import SOURCES, Source, bundled_path, fetch, resolve
from fastweights.data.download import check_file

SHARED_WIKITEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2"


class Server:
    """Files served over HTTP on 127.0.0.1 with ``Range`` support; ``cut_after`` bytes of a
    response the connection is dropped (an interrupted download)."""

    def __init__(self, files: Dict[str, bytes]) -> None:
        self.files, self.cut_after, self.ranges = files, None, []  # type: ignore[var-annotated]
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                n = len(body) if server.cut_after is None else min(len(body), start + server.cut_after)
                self.wfile.write(body[start:n])

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha1(data: bytes) -> str:
    return "sha1:" + hashlib.sha1(data).hexdigest()


SPLITS = {
    f"wiki.{s}.tokens": f" = Title {s} = \n the {s} words are here . \n".encode() * 200
    for s in ("train", "valid", "test")
}


def make_zip(folder: str, files: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(f"{folder}/{name}", data)
    return buf.getvalue()


@pytest.fixture
def wiki(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A WikiText-like source ``tiny-wiki`` (a zip of three splits) served locally."""
    server = Server({"tiny-wiki.zip": make_zip("tiny-wiki", SPLITS)})
    source = Source(
        "tiny-wiki",
        "test corpus",
        (server.url("tiny-wiki.zip"),),
        {name: sha1(data) for name, data in SPLITS.items()},
        archive="tiny-wiki",
    )
    monkeypatch.setitem(SOURCES, "tiny-wiki", source)
    yield server
    server.close()


def test_tiny_shakespeare_ships_with_the_package_and_matches_its_checksum() -> None:
    path = bundled_path("tinyshakespeare")
    check_file(path, SOURCES["tinyshakespeare"].files["input.txt"])
    assert path.read_text(encoding="utf-8").startswith("First Citizen:")
    assert resolve("tinyshakespeare", Path("/nonexistent")) == path


@pytest.mark.skipif(not SHARED_WIKITEXT.is_dir(), reason="needs a local WikiText-2 copy")
@pytest.mark.parametrize("split", ["valid", "test"])
def test_published_wikitext2_checksums_match_the_real_files(split: str) -> None:
    name = f"wiki.{split}.tokens"
    check_file(SHARED_WIKITEXT / name, SOURCES["wikitext-2"].files[name])


def test_fetch_downloads_checks_and_unpacks_then_resolve_finds_it(wiki: Server, tmp_path: Path) -> None:
    path = fetch("tiny-wiki", tmp_path, progress=False)
    assert path == tmp_path / "tiny-wiki" == resolve("tiny-wiki", tmp_path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == SPLITS  # the archive is gone
    assert fetch("tiny-wiki", tmp_path, progress=False) == path and len(wiki.ranges) == 1  # present: no download


def test_an_interrupted_download_resumes_where_it_stopped(wiki: Server, tmp_path: Path) -> None:
    wiki.cut_after = 1000
    with pytest.raises(UsageError, match="bytes received are kept .* resumes"):
        fetch("tiny-wiki", tmp_path, progress=False)
    part = tmp_path / "tiny-wiki" / "tiny-wiki.zip.part"
    assert part.stat().st_size == 1000
    wiki.cut_after = None
    fetch("tiny-wiki", tmp_path, progress=False)
    assert wiki.ranges == [None, "bytes=1000-"]
    assert (tmp_path / "tiny-wiki" / "wiki.test.tokens").read_bytes() == SPLITS["wiki.test.tokens"]
    assert not part.exists()


def test_a_corrupt_download_is_refused_and_deleted(wiki: Server, tmp_path: Path) -> None:
    wiki.files["tiny-wiki.zip"] = make_zip("tiny-wiki", {**SPLITS, "wiki.valid.tokens": b"tampered"})
    with pytest.raises(ValueError, match="wiki.valid.tokens: sha1 .* does not match"):
        fetch("tiny-wiki", tmp_path, progress=False)
    assert not (tmp_path / "tiny-wiki" / "wiki.valid.tokens").exists()
    wiki.files["tiny-wiki.zip"] = b"<html>proxy error</html>"
    with pytest.raises(ValueError, match="not a zip archive"):
        fetch("tiny-wiki", tmp_path, progress=False)
    assert list((tmp_path / "tiny-wiki").iterdir()) == []


def test_a_single_file_source_and_a_mirror_after_a_dead_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = b"To be, or not to be\n" * 50
    server = Server({"play.txt": text})
    try:
        source = Source("play", "test", (server.url("missing.txt"), server.url("play.txt")), {"input.txt": sha1(text)})
        monkeypatch.setitem(SOURCES, "play", source)
        assert fetch("play", tmp_path, progress=False).read_bytes() == text
    finally:
        server.close()


def test_offline_is_one_clear_error(wiki: Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wiki.close()  # nothing listens there any more
    assert main(["data", "tiny-wiki", "--dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastweights data: error: cannot download") and "Are you offline?" in err and "\n" not in err


def test_resolve_names_paths_and_missing_downloads(tmp_path: Path) -> None:
    assert resolve(tmp_path / "mine.txt") == tmp_path / "mine.txt"
    with pytest.raises(
        UsageError, match=r"--data wikitext-2: the corpus is not downloaded yet; run `fastweights data wikitext-2`"
    ):
        resolve("wikitext-2", tmp_path)


def test_data_command_lists_and_refuses_unknown_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "--list", "--dir", str(tmp_path)]) == 0
    out: List[str] = capsys.readouterr().out.splitlines()
    assert any(line.startswith("tinyshakespeare") for line in out) and any("not downloaded" in line for line in out)
    assert main(["data", "penn-treebank"]) == 2
    assert "unknown corpus 'penn-treebank'" in capsys.readouterr().err


def test_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASTWEIGHTS_DATA", str(tmp_path))
    assert corpora.data_dir() == tmp_path
